"""The one configuration object: frozen, validated, round-trips through a plain dict.

It travels in ``--hf-overrides '{"earlytom": {...}}'`` (server-wide defaults) and in request bodies
(``mm_processor_kwargs={"earlytom": {...}}``), so every field has a JSON-friendly type and every bad
value raises a ``ValueError`` that names the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

METHODS = ("earlytom", "post_encoder", "evs", "none")


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> float:
    if not _is_real(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    lo_ok = v > lo if lo_open else v >= lo
    hi_ok = v < hi if hi_open else v <= hi
    if not (lo_ok and hi_ok):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class EarlyTomConfig:
    """EarlyTom hyper-parameters (see ``method.md`` section 5).

    Defaults are the serving default: prune layers (10, 21, 23), tau 0.5, max_window 6, ema 0.9,
    retain_ratio 0.1.

    Attributes:
        retain_ratio: share of the ``196 * T`` pooled video tokens kept, in (0, 1].
        prune_layers: 0-based encoder layers after which frames merge (strictly increasing).
        tau: segmentation threshold on the smoothed frame similarity, in [0, 1].
        max_window: a segment closes when it would reach this length (holds <= max_window - 1).
        ema: similarity smoothing factor, in (0, 1].
        enabled: False serves the stock model (no compression at all).
        keep_last_middle: False reproduces the released code (the last middle frame of a segment
            is never emitted); True keeps it.
        method: ``earlytom`` (in-encoder), or the same-budget baselines ``post_encoder``
            (attention top-k after the full encoder), ``evs`` (temporal-difference selection after
            the full encoder) and ``none`` (full tokens). Baselines exist for benchmarks.
        max_frames: the largest frame count served; memory profiling uses a video this long.
        attention_chunk_frames: frames per chunk when received attention is computed.
    """

    retain_ratio: float = 0.1
    prune_layers: tuple[int, ...] = (10, 21, 23)
    tau: float = 0.5
    max_window: int = 6
    ema: float = 0.9
    enabled: bool = True
    keep_last_middle: bool = False
    method: str = "earlytom"
    max_frames: int = 32
    attention_chunk_frames: int = 4

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "retain_ratio", _check_real("retain_ratio", self.retain_ratio, 0.0, 1.0,
                                               lo_open=True, hi_open=False))
        set_(self, "tau", _check_real("tau", self.tau, 0.0, 1.0, lo_open=False, hi_open=False))
        set_(self, "ema", _check_real("ema", self.ema, 0.0, 1.0, lo_open=True, hi_open=False))
        set_(self, "max_window", _check_int("max_window", self.max_window, 2))
        set_(self, "max_frames", _check_int("max_frames", self.max_frames, 1))
        set_(self, "attention_chunk_frames",
             _check_int("attention_chunk_frames", self.attention_chunk_frames, 1))
        set_(self, "enabled", _check_bool("enabled", self.enabled))
        set_(self, "keep_last_middle", _check_bool("keep_last_middle", self.keep_last_middle))
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        layers = self.prune_layers
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
            raise ValueError(f"prune_layers must be a list of layer indices, got {layers!r}")
        if len(layers) == 0:
            raise ValueError("prune_layers must name at least one layer")
        checked = tuple(_check_int("prune_layers", v, 0) for v in layers)
        if any(b <= a for a, b in itertools.pairwise(checked)):
            raise ValueError(
                f"prune_layers must be strictly increasing (sorted, no duplicates), got {list(layers)}"
            )
        set_(self, "prune_layers", checked)

    # -- behaviour ----------------------------------------------------------------------------
    @property
    def compresses(self) -> bool:
        """True when videos are compressed at all (False: the stock path is taken)."""
        return self.enabled and self.method != "none" and self.retain_ratio < 1.0

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prune_layers"] = list(self.prune_layers)
        return d

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EarlyTomConfig:
        """Build from a plain dict; unknown keys raise ``ValueError`` naming the key."""
        return cls().merged(data)

    def merged(self, overrides: Mapping[str, Any] | None) -> EarlyTomConfig:
        """A copy with ``overrides`` applied (validated; unknown keys rejected)."""
        if overrides is None:
            return self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"earlytom must be an object of settings, got {overrides!r}")
        names = self.field_names()
        for key in overrides:
            if key not in names:
                raise ValueError(
                    f"earlytom.{key} is not a known setting (known: {', '.join(names)})"
                )
        kwargs = dict(overrides)
        if "prune_layers" in kwargs and isinstance(kwargs["prune_layers"], list):
            kwargs["prune_layers"] = tuple(kwargs["prune_layers"])
        return dataclasses.replace(self, **kwargs)
