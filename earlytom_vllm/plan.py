"""The per-video plan: everything the model needs to compress one video, as one typed value.

A vLLM processor (API-server process) resolves each video's effective configuration (the model
family's defaults, then ``hf_config.earlytom``, then the request's
``mm_processor_kwargs["earlytom"]``), validates it, and ships the plan to the model; the
placeholder count is read back from the same plan. vLLM carries per-item data only as tensors, so
the plan crosses as one int64 row: :meth:`VideoPlan.encode` writes it, :meth:`VideoPlan.decode`
reads it back by field name (:data:`WIRE_FIELDS`), and nothing else touches the row. Decoding is
cached by row, so a video's plan is decoded and validated once per process however many hooks
ask for it. Framework-free: plain Python and the core's counting function.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from earlytom_vllm.config import METHODS, EarlyTomConfig
from earlytom_vllm.core.budget import video_token_count

#: Largest prune layer the row can carry (layers travel as bits of one int64).
MAX_LAYER = 62


def video_rows(num_frames: int, config: EarlyTomConfig, tokens_per_frame: int,
               extra_rows: int) -> int:
    """Placeholder tokens (= embedding rows) of one video of ``num_frames`` encoder frames: the
    core's count plus the rows the model family appends per video (LLaVA-OneVision: a newline)."""
    return video_token_count(num_frames, config, tokens_per_frame) + extra_rows


@dataclass(frozen=True)
class VideoPlan:
    """One video's plan. ``num_frames`` counts encoder frames (Qwen: temporal slices);
    ``tokens_per_frame`` and ``extra_rows`` come from the model family (for the Qwen families
    ``tokens_per_frame`` depends on the video's resolution)."""

    num_frames: int
    tokens_per_frame: int
    extra_rows: int
    config: EarlyTomConfig

    @property
    def rows(self) -> int:
        return video_rows(self.num_frames, self.config, self.tokens_per_frame, self.extra_rows)

    def encode(self) -> list[int]:
        """The int64 row that crosses vLLM's per-item tensors (:data:`WIRE_FIELDS` order)."""
        wire = _to_wire(self)
        return [wire[name] for name in WIRE_FIELDS]

    @staticmethod
    def decode(row: Sequence[int]) -> VideoPlan:
        """The plan of a row written by :meth:`encode` (validated; cached per row)."""
        values = tuple(int(v) for v in row)
        if len(values) != len(WIRE_FIELDS):
            raise ValueError(f"plan row must have {len(WIRE_FIELDS)} integers, got {len(values)}")
        return _decode(values)


# -- the wire format ------------------------------------------------------------------------------

def _f2i(x: float) -> int:
    """A float's IEEE-754 bits as an int64, so it crosses an integer tensor exactly."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _i2f(v: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(v)))[0]


_FLAGS = ("enabled", "keep_last_middle", "trace")
_INTS = ("max_window", "max_frames", "attention_chunk_frames")
_FLOATS = ("retain_ratio", "tau", "ema")
#: The row's fields, in order.
WIRE_FIELDS = ("num_frames", "tokens_per_frame", "extra_rows", "rows", "method", "flags",
               "prune_layers", *_INTS, *_FLOATS)


def _to_wire(plan: VideoPlan) -> dict[str, int]:
    c = plan.config
    if c.prune_layers[-1] > MAX_LAYER:
        raise ValueError(f"prune layer {c.prune_layers[-1]} is beyond the plan's {MAX_LAYER}")
    return {
        "num_frames": plan.num_frames,
        "tokens_per_frame": plan.tokens_per_frame,
        "extra_rows": plan.extra_rows,
        "rows": plan.rows,  # checked on decode: the count both sides obey
        "method": METHODS.index(c.method),
        "flags": sum(int(getattr(c, name)) << bit for bit, name in enumerate(_FLAGS)),
        "prune_layers": sum(1 << layer for layer in c.prune_layers),  # strictly increasing set
        **{name: getattr(c, name) for name in _INTS},
        **{name: _f2i(getattr(c, name)) for name in _FLOATS},
    }


@lru_cache(maxsize=4096)
def _decode(values: tuple[int, ...]) -> VideoPlan:
    w = dict(zip(WIRE_FIELDS, values, strict=True))
    if not 0 <= w["method"] < len(METHODS) or w["prune_layers"] <= 0:
        raise ValueError(f"not a plan row: {values}")
    config = EarlyTomConfig(
        method=METHODS[w["method"]],
        prune_layers=tuple(i for i in range(MAX_LAYER + 1) if w["prune_layers"] >> i & 1),
        **{name: bool(w["flags"] >> bit & 1) for bit, name in enumerate(_FLAGS)},
        **{name: w[name] for name in _INTS},
        **{name: _i2f(w[name]) for name in _FLOATS},
    )
    plan = VideoPlan(w["num_frames"], w["tokens_per_frame"], w["extra_rows"], config)
    if plan.rows != w["rows"]:
        raise ValueError(f"plan rows {w['rows']} disagree with the budget of {values}")
    return plan
