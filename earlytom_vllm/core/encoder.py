"""The one encoder loop with Stage I, and the whole compression pipeline of one video.

Adapters (vLLM, transformers) describe their vision tower with a few callables
(:class:`VisionTower`); everything else, including which layer computes received attention and
how many frames each layer sees, is decided here once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core.attention import pool_received
from earlytom_vllm.core.baselines import evs_select, post_encoder_select
from earlytom_vllm.core.budget import (
    TOKENS_PER_FRAME,
    min_frames_for_budget,
    video_token_budget,
)
from earlytom_vllm.core.selection import select_tokens
from earlytom_vllm.core.temporal import Groups, stage1

LayerFn = Callable[[int, torch.Tensor], torch.Tensor]
LayerWithReceivedFn = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EncoderRun:
    """What :func:`run_encoder` produced for one video."""

    hidden: torch.Tensor  # [T', N, C] after the last layer
    received: torch.Tensor | None  # [T', N] received attention (mean over heads and queries)
    groups: Groups | None  # refined groups over the T' frames (None without Stage I)
    frames_per_layer: list[int] = field(default_factory=list)  # frames entering each layer


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
    for i in range(num_layers):
        frames.append(hidden.shape[0])
        if i == received_layer:
            assert run_layer_with_received is not None
            hidden, received = run_layer_with_received(i, hidden)  # [F,N,C], [F,N]
        else:
            hidden = run_layer(i, hidden)
        if i in prune:  # segment, merge, and after the last prune layer refine the groups
            hidden, received, refined = stage1(
                hidden, received, tau=tau, max_window=max_window, ema=ema,
                min_frames=min_frames, keep_last_middle=keep_last_middle,
                refine=i == prune_layers[-1])
            groups = refined if refined is not None else groups
    return EncoderRun(hidden=hidden, received=received, groups=groups, frames_per_layer=frames)


class VisionTower(Protocol):
    """What an adapter provides for one model instance."""

    num_layers: int
    grid: int  # tokens per side before pooling (27)

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor: ...

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[F, grid*grid, C]`` -> ``[F, 196, D]``: projector, then bilinear pooling."""
        ...


@dataclass
class VideoCompression:
    """One compressed video (before the newline)."""

    tokens: torch.Tensor  # [budget, D]
    index: torch.Tensor  # [budget] ascending flat indices into T' * 196
    budget: int
    frames_per_layer: list[int]
    frames_out: int  # T'
    groups: Groups | None
    encoder_seconds: float = 0.0  # filled only when compress_video gets a clock
    tokens_seconds: float = 0.0  # projector + pooling + selection


def compress_video(embeddings: torch.Tensor, tower: VisionTower, config: EarlyTomConfig,
                   *, clock: Callable[[], float] | None = None) -> VideoCompression:
    """Encode one video ``[T, grid*grid, C]`` and keep ``video_token_budget(T, r)`` tokens.

    ``config.method`` picks EarlyTom or a same-budget baseline; when nothing is compressed
    (``enabled=False``, ``method="none"`` or ``retain_ratio=1``) all ``T * 196`` tokens return.
    ``clock`` (e.g. ``time.perf_counter`` after a device sync) times the encoder and the token
    processing (projector, pooling, selection) separately, for benchmarks.
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [T, N, C], got {tuple(embeddings.shape)}")
    t = embeddings.shape[0]
    n_layers = tower.num_layers
    method = config.method if config.compresses else "none"
    budget = video_token_budget(t, config.retain_ratio, TOKENS_PER_FRAME) if config.compresses \
        else t * TOKENS_PER_FRAME
    t0 = clock() if clock else 0.0

    def with_received(i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tower.layer_with_received(i, h, config.attention_chunk_frames)

    # Stage 1: the encoder (with Stage I inside it for EarlyTom).
    if method == "earlytom":
        run = run_encoder(
            embeddings, tower.layer, n_layers,
            run_layer_with_received=with_received,
            prune_layers=config.prune_layers, tau=config.tau, max_window=config.max_window,
            ema=config.ema, min_frames=min_frames_for_budget(budget, TOKENS_PER_FRAME),
            keep_last_middle=config.keep_last_middle,
        )
    elif method == "post_encoder":
        run = run_encoder(embeddings, tower.layer, n_layers, run_layer_with_received=with_received,
                          received_layer=n_layers - 1)
    elif method in ("evs", "none"):
        run = run_encoder(embeddings, tower.layer, n_layers)
    else:  # pragma: no cover - EarlyTomConfig validates method
        raise ValueError(f"method {config.method!r} is not supported")
    t1 = clock() if clock else 0.0

    # Stage 2: projector + pooling, then the same-budget selection.
    pooled = tower.project_and_pool(run.hidden)  # [T', 729, C] -> [T', 196, D]
    if method == "none":
        tokens = pooled.reshape(-1, pooled.shape[-1])  # [T, 196, D] -> [T*196, D]
        index = torch.arange(tokens.shape[0], device=tokens.device)
    elif method == "evs":
        tokens, index = evs_select(pooled, budget)
    else:
        assert run.received is not None
        rec = pool_received(run.received, grid=tower.grid)  # [T', 729] -> [T', 196]
        if method == "earlytom":
            assert run.groups is not None
            tokens, index = select_tokens(pooled, rec, run.groups, budget)
        else:
            tokens, index = post_encoder_select(pooled, rec, budget)
    t2 = clock() if clock else 0.0
    if tokens.shape[0] != budget:
        raise AssertionError(f"compressed video has {tokens.shape[0]} rows, budget is {budget}")
    return VideoCompression(tokens, index, budget, run.frames_per_layer, run.hidden.shape[0],
                            run.groups, encoder_seconds=t1 - t0, tokens_seconds=t2 - t1)
