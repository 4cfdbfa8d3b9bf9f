"""`ltxdist-prepare --decode`: cached latents back to mp4 (with audio) for a visual check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from ltxdist.data.media import write_video
from ltxdist.data.sample import CachedSample, decode_sample
from ltxdist.data.shards import ShardIndex, load_index, read_shard
from ltxdist.encoders import AudioVAE, VideoVAE, pick_device, pick_dtype
from ltxdist.models.checkpoint_file import read_checkpoint_info


def decode_shards(
    shard_dir: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    num_samples: int = 4,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Decode the first `num_samples` samples of `shard_dir` to `out/{id}.mp4` (+ `{id}_reference.mp4`)."""
    shard_dir, out = Path(shard_dir), Path(out)
    index = load_index(shard_dir)
    info = read_checkpoint_info(checkpoint)
    if info.model_version != index.model_version:
        raise ValueError(
            f"{shard_dir} was encoded for model version {index.model_version}, but --checkpoint "
            f"{checkpoint} is {info.model_version}: decode with the checkpoint used to prepare"
        )
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    video, audio = VideoVAE(checkpoint, dev, dt), AudioVAE(checkpoint, dev, dt)
    written: list[Path] = []
    bar = tqdm(total=min(num_samples, index.num_samples), desc="decode", unit="sample", disable=not progress)
    for sample in first_samples(shard_dir, index, num_samples):
        fps = float(sample.meta["fps"])
        frames = video.decode(sample.tensors["video_latents"].float())
        sound = None
        if "audio_latents" in sample.tensors:
            sound = audio.decode(sample.tensors["audio_latents"].float())
        written.append(write_video(out / f"{sample.key}.mp4", frames, fps, sound))
        if "reference_video_latents" in sample.tensors:
            ref = video.decode(sample.tensors["reference_video_latents"].float())
            write_video(out / f"{sample.key}_reference.mp4", ref, fps)
        bar.update(1)
    bar.close()
    return written


def first_samples(shard_dir: Path, index: ShardIndex, num_samples: int) -> Iterator[CachedSample]:
    """The first `num_samples` samples in index order, read one record at a time: reading stops once
    they are read (a dataset of hundreds of shards is not read to the end for a look at four)."""
    if num_samples <= 0:
        return
    taken = 0
    for shard in index.shards:
        path = shard_dir / shard["name"]
        for record in read_shard(path):
            yield decode_sample(record, where=str(path))
            taken += 1
            if taken == num_samples:
                return
