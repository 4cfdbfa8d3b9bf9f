"""Choices of ltxdist-prepare's options, and how its launcher variables are read (no heavy imports:
`--help` shows them without loading torch)."""

from __future__ import annotations

from collections.abc import Mapping

STRATEGIES = ("standard", "video_to_video", "audio_ref_only_ic")
AUDIO_MODES = ("required", "optional", "off")
# A clip whose audio track ends before its video: "mask" keeps it, recording how much of the padded
# track is sound so the silence is kept out of the loss; "refuse" skips it, naming the file.
SHORT_AUDIO_MODES = ("mask", "refuse")


def env_int(env: Mapping[str, str], key: str) -> int:
    """A launcher's variable (RANK, SLURM_LOCALID, ...) as a whole number; an error naming it otherwise."""
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} in the environment is not a whole number") from None
