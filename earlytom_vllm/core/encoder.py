"""The one encoder loop with Stage I, and the whole compression pipeline of one video.

Adapters (per model family, for vLLM and transformers) describe their vision tower with a few
callables (:class:`VisionTower`): what a frame is, how one layer runs, how features are projected
and pooled, how received attention is pooled the same way. Everything else, including which layer
computes received attention, how many frames each layer sees and how many tokens come out, is
decided here once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core.baselines import evs_select, frame_groups
from earlytom_vllm.core.budget import min_frames_for_budget, video_token_count
from earlytom_vllm.core.selection import select_index
from earlytom_vllm.core.temporal import Groups, MergePlan, stage1

LayerFn = Callable[[int, torch.Tensor], torch.Tensor]
LayerWithReceivedFn = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
MergeFn = Callable[[int, MergePlan], None]


@dataclass
class EncoderRun:
    """What :func:`run_encoder` produced for one video."""

    hidden: torch.Tensor  # [T', N, C] after the last layer
    received: torch.Tensor | None  # [T', N] received attention (mean over heads and queries)
    groups: Groups | None  # refined groups over the T' frames (None without Stage I)
    frames_per_layer: list[int] = field(default_factory=list)  # frames entering each layer
    origins: list[int] = field(default_factory=list)  # [T'] earliest input frame of each output


def run_encoder(
    hidden: torch.Tensor,
    run_layer: LayerFn,
    num_layers: int,
    *,
    run_layer_with_received: LayerWithReceivedFn | None = None,
    received_layer: int | None = None,
    prune_layers: tuple[int, ...] = (),
    tau: float = 0.5,
    max_window: int = 6,
    ema: float = 0.9,
    min_frames: int = 1,
    keep_last_middle: bool = False,
    on_merge: MergeFn | None = None,
) -> EncoderRun:
    """Run ``num_layers`` layers over one video, merging frames after each prune layer.

    Args:
        hidden: ``[T, N, C]`` patch embeddings of one video (one frame per batch row).
        run_layer: ``(i, [F, N, C]) -> [F, N, C]``.
        run_layer_with_received: ``(i, [F, N, C]) -> ([F, N, C], [F, N])``; called once, at
            ``received_layer`` (default: the last prune layer).
        prune_layers: layers after which Stage I segments and merges; after the last one the
            surviving frames are segmented once more (refinement) for Stage II.
        min_frames: Stage I never leaves fewer frames than this.
        on_merge: ``(i, plan)``, called after Stage I at prune layer ``i`` with the merge it
            applied (identity plans included), so that a tower can apply the same merge to
            other states of the same frames (Qwen3-VL's deepstack taps).
    """
    if prune_layers and prune_layers[-1] >= num_layers:
        raise ValueError(
            f"prune_layers {list(prune_layers)} must be below the encoder depth {num_layers}"
        )
    if received_layer is None and prune_layers:
        received_layer = prune_layers[-1]
    if received_layer is not None and run_layer_with_received is None:
        raise ValueError("run_layer_with_received is required to compute received attention")
    prune = set(prune_layers)
    received: torch.Tensor | None = None
    groups: Groups | None = None
    frames: list[int] = []
    origins = list(range(hidden.shape[0]))  # host ints, updated from each merge plan (no sync)
    for i in range(num_layers):
        frames.append(hidden.shape[0])
        if i == received_layer:
            assert run_layer_with_received is not None
            hidden, received = run_layer_with_received(i, hidden)  # [F,N,C], [F,N]
        else:
            hidden = run_layer(i, hidden)
        if i in prune:  # segment, merge, and after the last prune layer refine the groups
            hidden, received, refined, plan = stage1(
                hidden, received, tau=tau, max_window=max_window, ema=ema,
                min_frames=min_frames, keep_last_middle=keep_last_middle,
                refine=i == prune_layers[-1], with_sources=True)
            groups = refined if refined is not None else groups
            origins = [origins[k] for k in plan.first]  # a merged frame keeps its earlier source
            if on_merge is not None:
                on_merge(i, plan)
    return EncoderRun(hidden=hidden, received=received, groups=groups, frames_per_layer=frames,
                      origins=origins)


def _project(tower: VisionTower, hidden: torch.Tensor, per_frame: int) -> torch.Tensor:
    """``tower.project_and_pool``, checked against the tower's declared tokens per frame."""
    pooled = tower.project_and_pool(hidden)  # [T', N, C] -> [T', tokens_per_frame, D]
    if pooled.shape[1] != per_frame:
        raise AssertionError(f"the tower pooled {pooled.shape[1]} tokens per frame, it declares "
                             f"{per_frame}")
    return pooled


class VisionTower(Protocol):
    """What a model family's adapter provides for one model instance and one video.

    A *frame* is the unit Stage I merges (LLaVA-OneVision: a frame; Qwen2.5-VL: a temporal slice
    of 2 frames); ``N`` is its encoder tokens, ``tokens_per_frame`` its tokens after projection and
    pooling (or merging), in raster order.
    """

    num_layers: int
    tokens_per_frame: int

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder layer ``i`` on ``[F, N, C]`` (any number of frames F)."""
        ...

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i`` plus the attention each token receives, ``[F, N]``."""
        ...

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[F, N, C]`` -> ``[F, tokens_per_frame, D]``, exactly as the stock model does."""
        ...

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        """``[F, N]`` -> ``[F, tokens_per_frame]``, pooled like the features."""
        ...

    # Optional: ``follow_merge(i, plan)``. A tower that keeps other states of the frames (taps
    # of earlier layers) defines it; :func:`compress_video` passes it as ``on_merge``.
    # Optional: ``project_rows(hidden [F, N, C], index [K]) -> [K, D]``, exactly
    # ``project_and_pool(hidden).reshape(F * tokens_per_frame, D)[index]`` computed for the kept
    # rows only. A tower whose projection works per output token (the Qwen mergers: one MLP per
    # 2x2 merge unit) defines it, so Stage II's selection runs before the projector and the
    # projector sees ``budget`` rows instead of ``F * tokens_per_frame``.


@dataclass
class VideoCompression:
    """One compressed video (before the newline)."""

    tokens: torch.Tensor  # [budget, D]
    index: torch.Tensor  # [budget] ascending flat indices into T' * tokens_per_frame
    budget: int
    frames_per_layer: list[int]
    frames_out: int  # T'
    groups: Groups | None
    origins: list[int]  # [T'] earliest input frame each output frame holds (for positions)
    encoder_seconds: float = 0.0  # filled only when compress_video gets a clock
    tokens_seconds: float = 0.0  # projector + pooling + selection


def compress_video(embeddings: torch.Tensor, tower: VisionTower, config: EarlyTomConfig,
                   *, clock: Callable[[], float] | None = None) -> VideoCompression:
    """Encode one video ``[T, N, C]`` and keep ``video_token_count(T, config, tokens_per_frame)``
    tokens.

    ``config.method`` picks EarlyTom or a same-budget baseline; when nothing is compressed
    (``enabled=False``, ``method="none"`` or ``retain_ratio=1``) all ``T * tokens_per_frame``
    tokens return. ``clock`` (benchmarks and traces only: e.g. ``time.perf_counter`` after a device
    sync) times the encoder and the token processing (projector, pooling, selection) separately.
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [T, N, C], got {tuple(embeddings.shape)}")
    t = embeddings.shape[0]
    n_layers = tower.num_layers
    per_frame = tower.tokens_per_frame
    method = config.effective_method
    budget = video_token_count(t, config, per_frame)
    t0 = clock() if clock else 0.0

    def with_received(i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tower.layer_with_received(i, h, config.attention_chunk_frames)

    # Stage 1: the encoder (with Stage I inside it for EarlyTom).
    if method == "earlytom":
        run = run_encoder(
            embeddings, tower.layer, n_layers,
            run_layer_with_received=with_received,
            prune_layers=config.prune_layers, tau=config.tau, max_window=config.max_window,
            ema=config.ema, min_frames=min_frames_for_budget(budget, per_frame),
            keep_last_middle=config.keep_last_middle,
            on_merge=getattr(tower, "follow_merge", None),
        )
    elif method == "post_encoder":
        run = run_encoder(embeddings, tower.layer, n_layers, run_layer_with_received=with_received,
                          received_layer=n_layers - 1)
    elif method in ("evs", "none"):
        run = run_encoder(embeddings, tower.layer, n_layers)
    else:  # pragma: no cover - EarlyTomConfig validates method
        raise ValueError(f"method {config.method!r} is not supported")
    t1 = clock() if clock else 0.0

    # Stage 2: projector + pooling and the same-budget selection; a tower that projects per
    # output token (``project_rows``) projects only the selected rows, chosen first.
    project_rows = getattr(tower, "project_rows", None)
    if method in ("earlytom", "post_encoder"):
        assert run.received is not None
        rec = tower.pool_received(run.received)  # [T', N] -> [T', tokens_per_frame]
        if rec.shape[1] != per_frame:
            raise AssertionError(f"the tower pooled {rec.shape[1]} received-attention values "
                                 f"per frame, it declares {per_frame}")
        groups = run.groups if method == "earlytom" else frame_groups(rec.shape[0])
        assert groups is not None
        index = select_index(rec, groups, budget)  # [budget] flat into T' * tokens_per_frame
        if project_rows is not None:
            tokens = project_rows(run.hidden, index)  # [T', N, C] -> [budget, D]
        else:
            pooled = _project(tower, run.hidden, per_frame)  # [T', tokens_per_frame, D]
            tokens = pooled.reshape(-1, pooled.shape[-1]).index_select(0, index)
    else:
        pooled = _project(tower, run.hidden, per_frame)  # [T', N, C] -> [T', tokens_per_frame, D]
        if method == "none":
            tokens = pooled.reshape(-1, pooled.shape[-1])  # [T, n, D] -> [T*n, D]
            index = torch.arange(tokens.shape[0], device=tokens.device)
        else:  # evs: chosen from the projected features themselves
            tokens, index = evs_select(pooled, budget)
    t2 = clock() if clock else 0.0
    if tokens.shape[0] != budget:
        raise AssertionError(f"compressed video has {tokens.shape[0]} rows, budget is {budget}")
    return VideoCompression(tokens, index, budget, run.frames_per_layer, run.hidden.shape[0],
                            run.groups, run.origins, encoder_seconds=t1 - t0,
                            tokens_seconds=t2 - t1)
