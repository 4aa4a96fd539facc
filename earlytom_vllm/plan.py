"""The per-video plan: everything the model needs to compress one video, as a row of integers.

A vLLM processor (API-server process) resolves each video's effective configuration (the model
family's defaults, then ``hf_config.earlytom``, then the request's
``mm_processor_kwargs["earlytom"]``), validates it, and ships this row to the model as a per-video
integer field; the placeholder count is read back from the same row. The model decodes the same
row, so the processor and the model cannot disagree on the count. Framework-free: plain Python and
the core's counting function (no torch).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from earlytom_vllm.config import MAX_PRUNE_LAYERS, METHODS, EarlyTomConfig
from earlytom_vllm.core.budget import video_token_count


def _f2i(x: float) -> int:
    """A float's IEEE-754 bits as an int64, so it crosses an integer tensor exactly."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _i2f(v: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(v)))[0]


_HEADER = 12
PLAN_WIDTH = _HEADER + MAX_PRUNE_LAYERS
_FLAGS = ("enabled", "keep_last_middle", "trace")


def video_rows(num_frames: int, config: EarlyTomConfig, tokens_per_frame: int,
               extra_rows: int) -> int:
    """Placeholder tokens (= embedding rows) of one video: the kept visual tokens plus the rows
    the model family appends per video (LLaVA-OneVision: one newline; Qwen2.5-VL: none)."""
    return video_token_count(num_frames, config, tokens_per_frame) + extra_rows


@dataclass(frozen=True)
class VideoPlan:
    """One video's plan. ``tokens_per_frame`` and ``extra_rows`` come from the model family (for
    Qwen2.5-VL ``tokens_per_frame`` depends on the video's resolution)."""

    num_frames: int
    tokens_per_frame: int
    extra_rows: int
    config: EarlyTomConfig

    @property
    def rows(self) -> int:
        return video_rows(self.num_frames, self.config, self.tokens_per_frame, self.extra_rows)

    @property
    def kept_tokens(self) -> int:
        """Visual tokens the encoder returns (rows without the family's extra rows)."""
        return self.rows - self.extra_rows

    def encode(self) -> list[int]:
        c = self.config
        layers = list(c.prune_layers) + [-1] * (MAX_PRUNE_LAYERS - len(c.prune_layers))
        flags = sum(int(getattr(c, name)) << bit for bit, name in enumerate(_FLAGS))
        return [
            self.num_frames,
            self.tokens_per_frame,
            self.extra_rows,
            self.rows,
            _f2i(c.retain_ratio),
            flags,
            METHODS.index(c.method),
            c.max_window,
            _f2i(c.tau),
            _f2i(c.ema),
            c.max_frames,
            c.attention_chunk_frames,
            *layers,
        ]

    @classmethod
    def decode(cls, row: Sequence[int]) -> VideoPlan:
        if len(row) != PLAN_WIDTH:
            raise ValueError(f"plan row must have {PLAN_WIDTH} integers, got {len(row)}")
        r = [int(v) for v in row]
        flags = {name: bool(r[5] >> bit & 1) for bit, name in enumerate(_FLAGS)}
        config = EarlyTomConfig(
            retain_ratio=_i2f(r[4]),
            prune_layers=tuple(v for v in r[_HEADER:] if v >= 0),
            tau=_i2f(r[8]),
            max_window=r[7],
            ema=_i2f(r[9]),
            method=METHODS[r[6]],
            max_frames=r[10],
            attention_chunk_frames=r[11],
            **flags,
        )
        plan = cls(r[0], r[1], r[2], config)
        if plan.rows != r[3]:
            raise ValueError(f"plan rows {r[3]} disagree with the budget of {row}")
        return plan
