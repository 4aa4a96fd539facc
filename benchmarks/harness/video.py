"""Synthetic footage for the benchmarks: RGB videos, their mp4 files and URLs, and hidden-state
videos with a known similarity structure."""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Synthetic footage a benchmark can ask for (:func:`synthetic_video`).
VIDEO_KINDS = ("scene", "motion", "static", "random")


def synthetic_video(kind: str, frames: int, *, size: int = 384, seed: int = 0,
                    num_scenes: int = 3):
    """RGB uint8 ``[frames, size, size, 3]`` from :mod:`earlytom_vllm.synthetic`: ``scene``
    (static scenes with slowly moving objects and hard cuts: the redundant case EarlyTom is
    built for), ``motion`` (fast pan: little to merge), ``static`` or ``random``."""
    from earlytom_vllm import synthetic

    if kind == "scene":
        return synthetic.scene_video(frames, size, num_scenes=num_scenes, seed=seed)
    if kind == "motion":
        return synthetic.high_motion_video(frames, size, seed=seed)
    if kind == "static":
        return synthetic.static_video(frames, size, seed=seed)
    if kind == "random":
        return synthetic.random_video(frames, size, seed=seed)
    raise ValueError(f"unknown video kind {kind!r} (known: {', '.join(VIDEO_KINDS)})")


def write_mp4(path: Path, frames: Any, fps: int = 4) -> Path:
    """RGB uint8 frames ``[T, H, W, 3]`` -> an mp4 (mp4v) readable by OpenCV and decord."""
    import cv2

    t, h, w, _ = frames.shape
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    for i in range(t):
        writer.write(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    writer.release()
    tmp.replace(path)
    return path


def video_url(path: Path, *, as_file: bool) -> str:
    """An mp4 as a ``file://`` URL (inside a server's media dir) or a ``data:`` URL."""
    if as_file:
        return f"file://{path.resolve()}"
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def synthetic_hidden_states(frames: int, tokens: int, width: int, *,
                            scene_starts: Sequence[float] = (0.0, 0.3, 0.5, 0.8),
                            shared: float = 0.2, scene: float = 0.4, rho: float = 0.75,
                            seed: int = 0, dtype: Any = None):
    """A ``[frames, tokens, width]`` "hidden state" video with scene cuts and motion noise
    (float32 unless ``dtype``).

    Each frame is ``sqrt(shared) P + sqrt(scene) S_k + sqrt(1 - shared - scene) R_t``, with unit
    Gaussian ``P`` (shared by all frames: position embeddings, common content), ``S_k`` (one per
    scene) and ``R_t`` an AR(1) walk inside the scene (coefficient ``rho``, fresh at each cut).
    The expected position-wise cosine similarity is ``shared`` across a cut and
    ``shared + scene + (1 - shared - scene) * rho^k`` for frames k apart in one scene
    (defaults: 0.2 across cuts, 0.9 for neighbours). Scenes start at ``scene_starts`` (fractions
    of the video). Deterministic for a seed.
    """
    import torch

    if frames < 1 or tokens < 1 or width < 1:
        raise ValueError(f"frames, tokens and width must be >= 1, got {frames}, {tokens}, {width}")
    motion = 1.0 - shared - scene
    if shared < 0.0 or scene < 0.0 or motion < 0.0 or not 0.0 <= rho <= 1.0:
        raise ValueError("need shared, scene >= 0, shared + scene <= 1 and 0 <= rho <= 1")
    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(seed)
    starts = sorted({0} | {min(frames - 1, round(f * frames)) for f in scene_starts})
    bounds = [*starts, frames]
    base = torch.randn(tokens, width, generator=gen)  # [N, D]
    out = torch.empty(frames, tokens, width, dtype=dtype)
    innovation = math.sqrt(1.0 - rho * rho)
    for a, b in itertools.pairwise(bounds):  # over scenes
        scene_part = math.sqrt(shared) * base + math.sqrt(scene) * torch.randn(
            tokens, width, generator=gen)
        walk = torch.randn(tokens, width, generator=gen)
        for t in range(a, b):  # over the frames of one scene
            if t > a:
                walk = rho * walk + innovation * torch.randn(tokens, width, generator=gen)
            out[t] = (scene_part + math.sqrt(motion) * walk).to(dtype)
    return out




@dataclass
class VideoFile:
    seed: int
    path: Path
    url: str  # file:// or data:


def video_files(kind: str, seeds: Sequence[int], *, frames: int, size: int, fps: int,
                media_dir: Path, prefix: str, as_file: bool, progress: bool = False
                ) -> list[VideoFile]:
    """A synthetic ``kind`` video per seed, written once as ``media_dir/<prefix>-...mp4`` (kept
    across calls: the name says everything it was made from), with its URL."""
    from tqdm import tqdm

    media_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in tqdm(seeds, desc="videos", disable=not progress, leave=False):
        path = media_dir / f"{prefix}-{kind}-{frames}f-{size}-{fps}fps-{seed}.mp4"
        if not path.is_file():
            write_mp4(path, synthetic_video(kind, frames, size=size, seed=seed), fps=fps)
        out.append(VideoFile(seed=seed, path=path, url=video_url(path, as_file=as_file)))
    return out
