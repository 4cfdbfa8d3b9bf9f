"""Choices of ltxdist-prepare's options (no heavy imports: `--help` shows them without loading torch)."""

STRATEGIES = ("standard", "video_to_video", "audio_ref_only_ic")
AUDIO_MODES = ("required", "optional", "off")
