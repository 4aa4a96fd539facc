"""The per-video plan: everything the model needs to compress one video, as a row of integers.

The vLLM processor (API-server process) resolves each video's effective configuration (server-wide
defaults from ``hf_config.earlytom`` merged with the request's ``mm_processor_kwargs["earlytom"]``),
validates it, fixes the placeholder count with :func:`video_token_budget`, and ships this row to
the model as a per-video integer field. The model decodes the same row, so the processor and the
model cannot disagree on the count. Framework-free: plain Python and the core budget function.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from earlytom_vllm.config import METHODS, EarlyTomConfig
from earlytom_vllm.core.budget import TOKENS_PER_FRAME, video_token_budget


def _f2i(x: float) -> int:
    """A float's IEEE-754 bits as an int64, so it crosses an integer tensor exactly."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _i2f(v: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(v)))[0]

MAX_PRUNE_LAYERS = 8
_HEADER = 10
PLAN_WIDTH = _HEADER + MAX_PRUNE_LAYERS
# Per-request keys. Server-level knobs (max_frames, attention_chunk_frames) stay server-wide.
REQUEST_KEYS = ("retain_ratio", "prune_layers", "tau", "max_window", "ema", "enabled",
                "keep_last_middle", "method")


def video_rows(num_frames: int, config: EarlyTomConfig) -> int:
    """Placeholder tokens (= embedding rows) of one video, the newline included."""
    if config.compresses:
        return video_token_budget(num_frames, config.retain_ratio, TOKENS_PER_FRAME) + 1
    return num_frames * TOKENS_PER_FRAME + 1


def request_config(defaults: EarlyTomConfig, overrides: object) -> EarlyTomConfig:
    """The effective configuration of one request; ``ValueError`` naming the field if invalid."""
    if overrides is None:
        return defaults
    if not isinstance(overrides, dict):
        raise ValueError(f"earlytom must be an object of settings, got {overrides!r}")
    for key in overrides:
        if key not in REQUEST_KEYS:
            raise ValueError(
                f"earlytom.{key} cannot be set per request (allowed: {', '.join(REQUEST_KEYS)})"
            )
    try:
        cfg = defaults.merged(overrides)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("earlytom.") else f"earlytom.{msg}") from None
    if len(cfg.prune_layers) > MAX_PRUNE_LAYERS:
        raise ValueError(f"earlytom.prune_layers may name at most {MAX_PRUNE_LAYERS} layers")
    return cfg


@dataclass(frozen=True)
class VideoPlan:
    num_frames: int
    rows: int
    config: EarlyTomConfig

    def encode(self) -> list[int]:
        c = self.config
        layers = list(c.prune_layers) + [-1] * (MAX_PRUNE_LAYERS - len(c.prune_layers))
        return [
            self.num_frames,
            self.rows,
            _f2i(c.retain_ratio),
            int(c.enabled) | (int(c.keep_last_middle) << 1),
            METHODS.index(c.method),
            c.max_window,
            _f2i(c.tau),
            _f2i(c.ema),
            c.max_frames,
            c.attention_chunk_frames,
            *layers,
        ]

    @classmethod
    def build(cls, num_frames: int, config: EarlyTomConfig) -> VideoPlan:
        return cls(num_frames, video_rows(num_frames, config), config)

    @classmethod
    def decode(cls, row: Sequence[int]) -> VideoPlan:
        if len(row) != PLAN_WIDTH:
            raise ValueError(f"plan row must have {PLAN_WIDTH} integers, got {len(row)}")
        r = [int(v) for v in row]
        flags = r[3]
        config = EarlyTomConfig(
            retain_ratio=_i2f(r[2]),
            prune_layers=tuple(v for v in r[_HEADER:] if v >= 0),
            tau=_i2f(r[6]),
            max_window=r[5],
            ema=_i2f(r[7]),
            enabled=bool(flags & 1),
            keep_last_middle=bool(flags & 2),
            method=METHODS[r[4]],
            max_frames=r[8],
            attention_chunk_frames=r[9],
        )
        plan = cls(r[0], r[1], config)
        if plan.rows != video_rows(plan.num_frames, config):
            raise ValueError(f"plan rows {plan.rows} disagree with the budget of {row}")
        return plan
