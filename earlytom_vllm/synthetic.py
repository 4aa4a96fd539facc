"""Deterministic synthetic videos for tests, the demo and benchmarks (numpy only).

- :func:`scene_video`: a "real-looking" redundant video: a textured static background per scene,
  a few objects moving slowly across it, hard cuts between scenes.
- :func:`high_motion_video`: every frame differs (fast camera pan over a large texture plus
  moving objects), so there is little temporal redundancy to exploit.
- :func:`random_video`: independent noise frames (no redundancy at all).
All return ``uint8 [T, H, W, 3]``.
"""

from __future__ import annotations

import numpy as np


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colourful texture: low-frequency noise upsampled, plus a little grain."""
    coarse = rng.random((max(2, h // 32), max(2, w // 32), 3))
    ys = np.linspace(0, coarse.shape[0] - 1, h)
    xs = np.linspace(0, coarse.shape[1] - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, coarse.shape[0] - 2)
    x0 = np.floor(xs).astype(int).clip(0, coarse.shape[1] - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    img = (c00 * (1 - fy) * (1 - fx) + c01 * (1 - fy) * fx + c10 * fy * (1 - fx) + c11 * fy * fx)
    img = img + 0.05 * rng.standard_normal((h, w, 3))
    return (img.clip(0, 1) * 255).astype(np.uint8)


def scene_video(num_frames: int = 32, size: int = 384, num_scenes: int = 3,
                seed: int = 0) -> np.ndarray:
    """A redundant video: ``num_scenes`` static scenes with slowly moving objects, hard cuts."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    num_scenes = min(num_scenes, num_frames)
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, num_frames, num_scenes + 1).round().astype(int)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for s in range(num_scenes):
        bg = _texture(rng, size, size)
        objs = [(rng.integers(0, size - 64, 2), rng.integers(-3, 4, 2), rng.integers(0, 255, 3),
                 int(rng.integers(24, 64))) for _ in range(3)]
        for t in range(bounds[s], bounds[s + 1]):
            frame = bg.copy()
            k = t - bounds[s]
            for pos, vel, colour, r in objs:
                y, x = (pos + k * vel).clip(0, size - r)
                frame[y : y + r, x : x + r] = colour
            frames[t] = frame
    return frames


def high_motion_video(num_frames: int = 32, size: int = 384, seed: int = 0) -> np.ndarray:
    """A video with strong motion in every frame (fast pan, moving objects, no static shot)."""
    rng = np.random.default_rng(seed)
    world = _texture(rng, size * 3, size * 3)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        angle = 2 * np.pi * t / max(num_frames, 1)
        y = int((1 + np.sin(angle)) * size)
        x = int((1 + np.cos(1.7 * angle)) * size)
        frame = world[y : y + size, x : x + size].copy()
        for _ in range(4):
            r = int(rng.integers(20, 80))
            oy, ox = rng.integers(0, size - r, 2)
            frame[oy : oy + r, ox : ox + r] = rng.integers(0, 255, 3)
        frames[t] = frame
    return frames


def random_video(num_frames: int = 8, size: int = 384, seed: int = 0) -> np.ndarray:
    """Independent uniform-noise frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


def static_video(num_frames: int = 8, size: int = 384, seed: int = 0) -> np.ndarray:
    """One textured frame repeated ``num_frames`` times."""
    rng = np.random.default_rng(seed)
    return np.repeat(_texture(rng, size, size)[None], num_frames, axis=0)


def with_metadata(frames: np.ndarray, fps: float = 2.0) -> tuple[np.ndarray, dict]:
    """A video item for models whose vLLM processor needs the sampling metadata (Qwen2.5-VL:
    ``video_needs_metadata``): ``(frames, metadata)``, every frame sampled at ``fps``."""
    n = int(frames.shape[0])
    return frames, {"fps": float(fps), "duration": n / float(fps), "total_num_frames": n,
                    "frames_indices": list(range(n)), "video_backend": "opencv",
                    "do_sample_frames": False}
