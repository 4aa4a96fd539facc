"""What a model family is: the one place that states what differs between families.

The method (budget, Stage I, received attention, Stage II) is the core's and is the same for every
family. A :class:`Family` says only what differs: which checkpoints it serves (``model_type``s and
the vLLM architectures its EarlyTom architectures extend), what a *frame* is (video frames per
encoder frame), tokens per frame from the model's config and the video's grid, rows appended per
video, the default prune layers and the rule that validates them, vLLM's own pruning counterpart,
and the geometry its benchmarks use. How a layer runs with received attention, and how positions
and the prompt layout are produced, live in the family's vLLM adapter (``adapter``), which reads
the rest from here.

Importable without vLLM or transformers: the front end, the supervisor, the checkpoints
and the benchmarks ask this module, and only the engine imports an adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from earlytom_vllm.config import (
    EarlyTomConfig,
    EarlyTomConfigError,
    check_prune_layers,
    request_config,
)
from earlytom_vllm.plan import video_rows

_MISSING = object()


def config_value(config: Any, *path: str, default: Any = _MISSING) -> Any:
    """``config.path[0].path[1]...`` of a checkpoint config given as a ``config.json`` dict or a
    transformers ``PretrainedConfig`` (attributes); ``default`` where a key is absent."""
    node = config
    for key in path:
        if isinstance(node, Mapping):
            node = node.get(key, _MISSING)
        else:
            node = getattr(node, key, _MISSING)
        if node is _MISSING:
            if default is _MISSING:
                raise KeyError(".".join(path))
            return default
    return node


@dataclass(frozen=True)
class BenchmarkSpec:
    """How the benchmarks exercise a family: one prompt with one video of square frames."""

    prompt: str  # the family's chat template rendered for one video, generation prompt included
    video_token: str  # the placeholder the processor expands
    video_size: int  # px: the synthetic videos' side, a size the processor keeps unchanged
    #: fps written into the benchmarks' mp4s. vLLM's loader passes the file's fps on and Qwen's
    #: video processors resample to 2 fps, so those families' videos are written at 2 fps (every
    #: frame kept); LLaVA-OneVision samples by count, any fps works.
    video_fps: int
    ttft_ratios: tuple[float, ...]  # retain ratios of the TTFT benchmark
    throughput_ratios: tuple[float, ...]  # retain ratios of the throughput benchmark
    kv_cache_gib: int  # VLLM_CPU_KVCACHE_SPACE of the throughput benchmark's engines
    #: Extra prune-layer settings the TTFT benchmark also measures (the paper's other settings).
    extra_prune_layers: tuple[tuple[int, ...], ...] = ()
    #: TTFT targets: EarlyTom's TTFT at least this many times lower than each baseline's, at
    #: each of ``ttft_target_ratios`` (one figure for every video, or one per video kind); the
    #: full-token vision share the benchmark checkpoint is sized for.
    ttft_targets: Mapping[str, float | Mapping[str, float]] = field(default_factory=dict)
    ttft_target_ratios: tuple[float, ...] = ()
    vision_share_band: tuple[float, float] = (0.0, 1.0)
    #: Published figures the TTFT benchmark stores beside its own (ms and shares).
    paper_ttft: Mapping[str, Any] = field(default_factory=dict)
    #: Where vLLM's own pruning cannot run the chat template's video layout: (what the template
    #: writes for a video, what the benchmark servers' template writes instead), so that every
    #: arm of a chat benchmark is served on the layout they all run.
    chat_video_rewrite: tuple[str, str] | None = None
    #: The throughput benchmark's ``--quick`` settings where the defaults do not fit the family.
    throughput_quick: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointRecipe:
    """A family's random-weight checkpoints (:mod:`earlytom_vllm.checkpoints` builds them)."""

    name: str  # cache-directory prefix
    #: "module:NAME" of the transformers-side recipe (config, processor, chat template, the tiny
    #: model's sizes); imported only when a checkpoint is built.
    recipe: str
    bench_sizes: Mapping[str, Any]  # the benchmark-sized model, over the recipe's tiny sizes
    #: Bump when the recipe's files for the same arguments change (part of the cache key).
    version: int = 1
    #: Part of the cache key (None: LLaVA-OneVision, whose keys predate the other families).
    cache_tag: str | None = None


@dataclass(frozen=True)
class Family:
    """One model family. Subclasses implement the config-reading methods; data are fields."""

    name: str  # registry key, e.g. "qwen2_5_vl"
    title: str  # for people: "Qwen2.5-VL"
    model_types: tuple[str, ...]  # the checkpoint config's model_type values served
    #: EarlyTom architecture -> the vLLM architecture it extends (what checkpoints name). The
    #: first is the family's default; every class lives in ``adapter``.
    architectures: Mapping[str, str]
    adapter: str  # module of the vLLM adapter (processor + model classes)
    frame_unit: int  # video frames per encoder frame (Qwen: a temporal patch of 2 frames)
    extra_rows: int  # rows appended to each video's kept tokens (LLaVA-OneVision: a newline)
    defaults: EarlyTomConfig  # serving defaults (prune layers above all)
    benchmark: BenchmarkSpec
    checkpoint: CheckpointRecipe
    #: vLLM's own (post-encoder, server-wide) video pruning methods for this family's vLLM
    #: classes (``--video-pruning-method`` with ``--video-pruning-rate``): what the classes'
    #: ``supported_video_pruning_methods`` say (pinned by tests/vllm/test_families.py).
    vllm_pruning: tuple[str, ...] = ()

    # -- what a subclass states ---------------------------------------------------------------
    def encoder_depth(self, config: Any) -> int:
        """Vision-encoder layers the vLLM model runs for this checkpoint config."""
        raise NotImplementedError

    def full_attention_blocks(self, config: Any) -> tuple[int, ...] | None:
        """Blocks whose attention covers a whole frame where others are windowed (None: all)."""
        return None

    def frame_tokens(self, config: Any, grid_hw: tuple[int, int] | None = None) -> int:
        """Tokens one encoder frame contributes to the LLM. ``grid_hw``: the video's patch grid
        (rows, columns) where the count depends on resolution (Qwen); ignored otherwise."""
        raise NotImplementedError

    def patch_grid(self, config: Any, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, columns) of a frame the processor keeps at ``height x width`` px."""
        raise NotImplementedError

    # -- what follows from it (the same for every family) -----------------------------------------
    @property
    def architecture(self) -> str:
        """The family's default EarlyTom architecture."""
        return next(iter(self.architectures))

    @property
    def base_architecture(self) -> str:
        """The vLLM architecture the default EarlyTom architecture extends."""
        return self.architectures[self.architecture]

    def class_path(self, architecture: str) -> str:
        """``module:Class`` vLLM loads for one of this family's EarlyTom architectures."""
        if architecture not in self.architectures:
            raise KeyError(f"{architecture} is not a {self.title} architecture")
        return f"{self.adapter}:{architecture}"

    def units(self, frames: int) -> int:
        """Encoder frames of a ``frames``-frame video (a partial temporal patch is padded)."""
        return math.ceil(frames / self.frame_unit)

    def check(self, config: EarlyTomConfig, model_config: Any) -> EarlyTomConfig:
        """``config`` checked against the model (prune layers exist; the received-attention layer
        is a full-attention block where the encoder mixes kinds). Raises
        :class:`EarlyTomConfigError` on ``prune_layers``."""
        check_prune_layers(config, self.encoder_depth(model_config),
                           full_attention_blocks=self.full_attention_blocks(model_config))
        return config

    def defaults_for(self, model_config: Any) -> EarlyTomConfig:
        """The serving defaults for one checkpoint (``defaults``; a family whose encoder depth
        varies between checkpoints places its prune layers by depth here)."""
        return self.defaults

    def server_defaults(self, model_config: Any, overrides: Any = None) -> EarlyTomConfig:
        """The family's defaults with the server-wide ``overrides`` (``--hf-overrides``'
        ``earlytom`` object; read from ``model_config`` when not given), checked against the
        model. Errors name ``hf_overrides.earlytom.<field>``."""
        if overrides is None:
            overrides = config_value(model_config, "earlytom", default=None)
        try:
            return self.check(self.defaults_for(model_config).merged(overrides), model_config)
        except EarlyTomConfigError as exc:
            raise exc.under("hf_overrides.earlytom") from None

    def request_config(self, defaults: EarlyTomConfig, overrides: Any, model_config: Any
                       ) -> EarlyTomConfig:
        """A request's effective settings: ``defaults`` (:meth:`server_defaults`) with the
        request's ``earlytom`` object applied, checked against the model. The one request
        validation path: the engine's processor and the front end both call it, so they refuse
        the same settings with the same message. Errors name ``earlytom.<field>``."""
        try:
            return self.check(request_config(defaults, overrides), model_config)
        except EarlyTomConfigError as exc:
            raise (exc if exc.field.startswith("earlytom") else exc.under("earlytom")) from None

    def rows(self, units: int, config: EarlyTomConfig, tokens_per_frame: int) -> int:
        """Placeholder tokens (= embedding rows) of one video of ``units`` encoder frames."""
        return video_rows(units, config, tokens_per_frame, self.extra_rows)

    def vllm_pruning_rate(self, units: int, tokens_per_frame: int, count: int,
                          method: str = "evs") -> float:
        """vLLM's ``--video-pruning-rate`` whose ``method`` keeps ``count`` rows of a video of
        ``units`` frames (the same-count peer of EarlyTom). See :func:`vllm_kept`."""
        if method not in self.vllm_pruning:
            raise ValueError(f"vLLM has no {method} video pruning for {self.title} "
                             f"(it has: {', '.join(self.vllm_pruning) or 'none'})")
        return rate_for_count(method, units, tokens_per_frame, count - self.extra_rows)


def evs_kept(total: int, tokens_per_frame: int, rate: float) -> int:
    """Tokens vLLM's EVS keeps of ``total`` at ``--video-pruning-rate rate``: mirrors vLLM 0.32
    ``multimodal/video_prune/evs.py: compute_retained_tokens_count`` (pinned by
    ``tests/vllm/test_families.py``): ``max(tokens_per_frame, int(total * (1 - rate)))``."""
    return max(tokens_per_frame, int(total * (1 - rate)))


def vidcom2_kept(total: int, frames: int, rate: float) -> int:
    """Tokens vLLM's VidCom2 keeps: mirrors vLLM 0.32 ``multimodal/video_prune/vidcom2.py:
    compute_retained_tokens_count`` (pinned by ``tests/vllm/test_families.py``):
    ``max(frames, min(int(total * (1 - rate)), total))``."""
    return max(frames, min(int(total * (1 - rate)), total))


def vllm_kept(method: str, units: int, tokens_per_frame: int, rate: float) -> int:
    """Tokens vLLM's pruning ``method`` (``evs``, ``vidcom2``) keeps of a ``units``-frame video."""
    total = units * tokens_per_frame
    if method == "evs":
        return evs_kept(total, tokens_per_frame, rate)
    if method == "vidcom2":
        return vidcom2_kept(total, units, rate)
    raise ValueError(f"unknown vLLM video pruning method {method!r}")


def rate_for_count(method: str, units: int, tokens_per_frame: int, count: int) -> float:
    """The rate (6 decimals, as it is printed on a command line) whose ``method`` count is
    closest to ``count`` (ties: the count at or above it)."""
    total = units * tokens_per_frame
    if count >= total:
        return 0.0
    q = round(1 - count / total, 6)
    candidates = (round(q + k * 1e-6, 6) for k in range(-3, 4) if 0 <= q + k * 1e-6 < 1)

    def kept(x: float) -> int:
        return vllm_kept(method, units, tokens_per_frame, x)

    return min(candidates, key=lambda x: (abs(kept(x) - count), kept(x) < count))


def layer_index(index: int, num_layers: int) -> int:
    """Layers run to produce hidden state ``index`` (negative: from the end) of a
    ``num_layers``-layer encoder: mirrors vLLM 0.32 ``models/utils.py: get_layer_index``."""
    return num_layers + index + 1 if index < 0 else index


def check_grid(grid_hw: Sequence[int] | None, merge: int, title: str) -> tuple[int, int]:
    if grid_hw is None:
        raise ValueError(f"{title}'s tokens per frame depend on the video's grid")
    h, w = (int(v) for v in grid_hw)
    if h <= 0 or w <= 0 or h % merge or w % merge:
        raise ValueError(f"{title} grid {h}x{w} must be positive multiples of {merge}")
    return h, w
