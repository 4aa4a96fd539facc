"""EarlyTom frame schedules for the FLOPs count: frames left after each prune layer, as given
(``LAYER:FRAMES``) or as the library's Stage I produces them on a synthetic video."""

from __future__ import annotations

from typing import Any

from benchmarks.harness.flops_models import REFERENCE_FRAMES, SIGLIP
from benchmarks.harness.video import synthetic_hidden_states
from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core import merge_frames, segment_frames

#: Frames left after each of a family's default prune layers at :data:`REFERENCE_FRAMES`: the
#: counts implied by the paper's own EarlyTom rows (see benchmarks/flops.py).
REFERENCE_FRAMES_AFTER = (22, 20, 17)
#: The synthetic video the Stage I rule runs on: SigLIP's 729 positions at a narrow width.
SIM_TOKENS = SIGLIP.tokens_per_frame
SIM_WIDTH = 128
SIM_SEED = 0

Schedule = dict[int, int]  # prune layer -> frames left after it


def parse_schedule(text: str) -> Schedule:
    """``"10:22,21:20,23:17"`` -> ``{10: 22, 21: 20, 23: 17}`` (validated loosely here)."""
    out: Schedule = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            layer_s, frames_s = part.split(":")
            layer, frames = int(layer_s), int(frames_s)
        except ValueError:
            raise ValueError(f"schedule entries must be LAYER:FRAMES, got {part!r}") from None
        if layer in out:
            raise ValueError(f"layer {layer} appears twice in the schedule {text!r}")
        out[layer] = frames
    if not out:
        raise ValueError("the schedule names no layer")
    return dict(sorted(out.items()))


def format_schedule(schedule: Schedule) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(schedule.items()))


def scale_schedule(schedule: Schedule, frames: int, reference: int = REFERENCE_FRAMES) -> Schedule:
    """Frame counts stated for ``reference`` frames, scaled to ``frames``."""
    if frames == reference:
        return dict(schedule)
    return {k: max(1, round(v * frames / reference)) for k, v in schedule.items()}


def frames_per_layer(frames: int, schedule: Schedule, num_layers: int,
                     min_frames: int = 1) -> list[int]:
    """Frames entering each encoder layer, then the frames leaving the last (``num_layers + 1``
    entries). After prune layer ``l`` the count is ``clamp(schedule[l], min_frames, previous)``:
    Stage I never adds frames and never goes below ``min_frames``."""
    for layer, kept in schedule.items():
        if not 0 <= layer < num_layers:
            raise ValueError(f"prune layer {layer} is outside 0..{num_layers - 1}")
        if kept < 1:
            raise ValueError(f"frames after layer {layer} must be >= 1, got {kept}")
    counts = []
    current = frames
    for i in range(num_layers):
        counts.append(current)
        if i in schedule:
            current = min(current, max(schedule[i], min_frames))
    counts.append(current)
    return counts


def default_schedule(vision: Any) -> Schedule:
    """A vision description's default schedule (stated for :data:`REFERENCE_FRAMES` encoder
    frames): its family's default prune layers with :data:`REFERENCE_FRAMES_AFTER`."""
    layers = vision.family.defaults.prune_layers
    return dict(zip(layers, REFERENCE_FRAMES_AFTER, strict=True))


_RULE_CACHE: dict[tuple[int, int, EarlyTomConfig], Schedule] = {}


def stage1_rule_schedule(frames: int, min_frames: int = 1,
                         config: EarlyTomConfig | None = None) -> Schedule:
    """Frames left after each prune layer when the library's Stage I runs on
    :func:`synthetic_hidden_states` (the realistic-redundancy assumption in benchmarks/flops.py);
    ``config``: the Stage I settings (default: the library's)."""
    cfg = config or EarlyTomConfig()
    if min_frames > 1:
        free = stage1_rule_schedule(frames, 1, cfg)
        if min(free.values()) >= min_frames:  # the floor never binds: same merges
            return free
    key = (frames, min_frames, cfg)
    if key in _RULE_CACHE:
        return dict(_RULE_CACHE[key])
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    try:
        hidden = synthetic_hidden_states(frames, SIM_TOKENS, SIM_WIDTH, seed=SIM_SEED)
        out: Schedule = {}
        for layer in cfg.prune_layers:
            segments = segment_frames(hidden, cfg.tau, cfg.max_window, cfg.ema)
            hidden, _ = merge_frames(hidden, segments, min_frames=min_frames,
                                     keep_last_middle=cfg.keep_last_middle)
            out[layer] = hidden.shape[0]
    finally:
        torch.set_num_threads(threads)
    _RULE_CACHE[key] = out
    return dict(out)


