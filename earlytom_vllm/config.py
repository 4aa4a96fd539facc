"""The one configuration object: frozen, validated, round-trips through a plain dict.

It travels in ``--hf-overrides '{"earlytom": {...}}'`` (server-wide defaults) and in request bodies
(``mm_processor_kwargs={"earlytom": {...}}``), so every field has a JSON-friendly type and every bad
value raises an :class:`EarlyTomConfigError` (a ``ValueError``) whose ``field`` names it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

METHODS = ("earlytom", "post_encoder", "evs", "none")
#: Settings a request may change. The others (max_frames, attention_chunk_frames, trace) size or
#: instrument the server and stay server-wide (``--hf-overrides``).
REQUEST_KEYS = ("retain_ratio", "prune_layers", "tau", "max_window", "ema", "enabled",
                "keep_last_middle", "method")


class EarlyTomConfigError(ValueError):
    """An invalid setting. ``field`` names it (``retain_ratio``; ``earlytom.retain_ratio`` once
    placed under a prefix); callers map it to an HTTP ``param`` without parsing the message."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}" if field else problem)

    def under(self, prefix: str) -> EarlyTomConfigError:
        """The same error with its field placed under ``prefix`` (e.g. ``hf_overrides.earlytom``)."""
        return EarlyTomConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


_MAX_INT = 2**31 - 1  # far above any real frame count or window; keeps the arithmetic exact


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> float:
    if not _is_real(value):
        raise EarlyTomConfigError(name, f"must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        raise EarlyTomConfigError(name, f"must be in range, got {value!r}") from None
    if math.isnan(v):
        raise EarlyTomConfigError(name, "must not be NaN")
    lo_ok = v > lo if lo_open else v >= lo
    hi_ok = v < hi if hi_open else v <= hi
    if not (lo_ok and hi_ok):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise EarlyTomConfigError(name, f"must be in {left}{lo}, {hi}{right}, got {value!r}")
    return v


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EarlyTomConfigError(name, f"must be an integer, got {value!r}")
    if value < lo:
        raise EarlyTomConfigError(name, f"must be >= {lo}, got {value!r}")
    if value > _MAX_INT:
        raise EarlyTomConfigError(name, f"must be <= {_MAX_INT}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EarlyTomConfigError(name, f"must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class EarlyTomConfig:
    """EarlyTom hyper-parameters (``docs/method.md`` section 5).

    The field defaults are method.md section 5's serving setting; each model family states its
    own defaults (``earlytom_vllm.families``), then the server-wide ``--hf-overrides`` and the
    request override them.

    Attributes:
        retain_ratio: share of a video's ``tokens_per_frame * T`` tokens kept, in (0, 1].
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
        trace: record per-video timings (with device syncs) and kept indices in the model, for
            benchmarks and debugging. Off in serving: the request path then does only serving.
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
    trace: bool = False

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
        for name in ("enabled", "keep_last_middle", "trace"):
            set_(self, name, _check_bool(name, getattr(self, name)))
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise EarlyTomConfigError(
                "method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        layers = self.prune_layers
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
            raise EarlyTomConfigError("prune_layers",
                                      f"must be a list of layer indices, got {layers!r}")
        if len(layers) == 0:
            raise EarlyTomConfigError("prune_layers", "must name at least one layer")
        checked = tuple(_check_int("prune_layers", v, 0) for v in layers)
        if any(b <= a for a, b in itertools.pairwise(checked)):
            raise EarlyTomConfigError(
                "prune_layers",
                f"must be strictly increasing (sorted, no duplicates), got {list(layers)}")
        set_(self, "prune_layers", checked)

    # -- behaviour ----------------------------------------------------------------------------
    @property
    def compresses(self) -> bool:
        """True when videos are compressed at all (False: the stock path is taken)."""
        return self.enabled and self.method != "none" and self.retain_ratio < 1.0

    @property
    def effective_method(self) -> str:
        """The method a video is actually served with: ``none`` whenever nothing is compressed."""
        return self.method if self.compresses else "none"

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
        """Build from a plain dict; unknown keys raise :class:`EarlyTomConfigError`."""
        return cls().merged(data)

    def merged(self, overrides: Mapping[str, Any] | None) -> EarlyTomConfig:
        """A copy with ``overrides`` applied (validated; unknown keys rejected)."""
        if overrides is None:
            return self
        if not isinstance(overrides, Mapping):
            raise EarlyTomConfigError("", f"must be an object of settings, got {overrides!r}")
        names = self.field_names()
        for key in overrides:
            if key not in names:
                raise EarlyTomConfigError(
                    str(key), f"is not a known setting (known: {', '.join(names)})")
        kwargs = dict(overrides)
        if "prune_layers" in kwargs and isinstance(kwargs["prune_layers"], list):
            kwargs["prune_layers"] = tuple(kwargs["prune_layers"])
        return dataclasses.replace(self, **kwargs)


def request_config(defaults: EarlyTomConfig, overrides: object) -> EarlyTomConfig:
    """The effective configuration of one request: ``defaults`` with the request's ``earlytom``
    object applied. The one request-validation path: the vLLM processor and the front end both
    call it, so they accept and refuse the same keys with the same message.

    Raises :class:`EarlyTomConfigError` with ``field`` under ``earlytom`` (``earlytom.tau``).
    """
    if overrides is None:
        return defaults
    try:
        if not isinstance(overrides, Mapping):
            raise EarlyTomConfigError("", f"must be an object of settings, got {overrides!r}")
        for key in overrides:
            if key not in REQUEST_KEYS:
                known = key in EarlyTomConfig.field_names()
                raise EarlyTomConfigError(
                    str(key),
                    ("is a server-wide setting and cannot be set per request"
                     if known else "is not a known setting")
                    + f" (allowed per request: {', '.join(REQUEST_KEYS)})")
        return defaults.merged(overrides)
    except EarlyTomConfigError as exc:
        raise exc.under("earlytom") from None


def check_prune_layers(config: EarlyTomConfig, depth: int, *,
                       full_attention_blocks: Sequence[int] | None = None) -> None:
    """The model-dependent check of ``prune_layers``, in one place for every family.

    Every prune layer must exist in an encoder of ``depth`` layers; where the encoder mixes
    windowed and full attention (Qwen2.5-VL), the last prune layer must be a full-attention block,
    since received attention is read there. Raises :class:`EarlyTomConfigError` on
    ``prune_layers`` (the caller places it under ``earlytom`` or ``hf_overrides.earlytom``).
    """
    layers = list(config.prune_layers)
    if layers[-1] >= depth:
        raise EarlyTomConfigError(
            "prune_layers", f"{layers} must be below the vision encoder depth {depth}")
    if full_attention_blocks is not None and layers[-1] not in full_attention_blocks:
        raise EarlyTomConfigError(
            "prune_layers",
            f"{layers}: the last prune layer must be a full-attention block "
            f"({', '.join(map(str, full_attention_blocks))}), since received attention is read "
            "there")
