"""Choices of ltxdist-prepare's options (no heavy imports: `--help` shows them without loading torch)."""

STRATEGIES = ("standard", "video_to_video", "audio_ref_only_ic")
AUDIO_MODES = ("required", "optional", "off")
# A clip whose audio track ends before its video: "mask" keeps it, recording how much of the padded
# track is sound so the silence is kept out of the loss; "refuse" skips it, naming the file.
SHORT_AUDIO_MODES = ("mask", "refuse")
