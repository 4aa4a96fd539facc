"""The one encoder loop with Stage I, and the whole compression pipeline of one video.

Adapters (per model family, for vLLM and transformers) describe their vision tower with a few
callables (:class:`VisionTower`): what a frame is, how one layer runs, how features are projected
and pooled, how received attention is pooled the same way. Everything else, including which layer
computes received attention, how many frames each layer sees and how many tokens come out, is
decided here once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


@dataclass
class BatchRun:
    """What :func:`run_encoder_batch` produced for the videos of one call."""

    hidden: torch.Tensor  # [sum T', N, C]: every video's surviving frames, in order
    runs: list[EncoderRun]  # per video; its hidden / received are views into the batch's


def concat_plans(plans: Sequence[MergePlan], lengths: Sequence[int]) -> MergePlan:
    """One plan over the concatenated frames of several videos (video ``v``'s plan over its
    ``lengths[v]`` frames, offset by the frames before it): merges never cross videos."""
    first: list[int] = []
    second: list[int] = []
    weight: list[float] = []
    offset = 0
    for plan, t in zip(plans, lengths, strict=True):
        first += [k + offset for k in plan.first]
        second += [k + offset for k in plan.second]
        weight += plan.weight
        offset += t
    return MergePlan(first, second, weight)


def run_encoder_batch(
    hidden: torch.Tensor,
    lengths: Sequence[int],
    run_layer: LayerFn,
    num_layers: int,
    *,
    run_layer_with_received: LayerWithReceivedFn | None = None,
    received_layer: int | None = None,
    prune_layers: tuple[int, ...] = (),
    tau: float = 0.5,
    max_window: int = 6,
    ema: float = 0.9,
    min_frames: Sequence[int] | None = None,
    keep_last_middle: bool = False,
    on_merge: MergeFn | None = None,
) -> BatchRun:
    """Run ``num_layers`` layers over several videos at once, merging each video's frames after
    each prune layer.

    The layers see every video's frames in one batch (a layer works per frame, so this is the
    per-video computation, in one call per layer as the stock encoder makes); Stage I segments
    and merges each video alone (frames of two videos never merge).

    Args:
        hidden: ``[sum T, N, C]`` patch embeddings of the videos, one after the other (one frame
            per batch row).
        lengths: ``[V]`` frames of each video (``sum(lengths) == hidden.shape[0]``).
        run_layer: ``(i, [F, N, C]) -> [F, N, C]``.
        run_layer_with_received: ``(i, [F, N, C]) -> ([F, N, C], [F, N])``; called once, at
            ``received_layer`` (default: the last prune layer).
        prune_layers: layers after which Stage I segments and merges; after the last one the
            surviving frames are segmented once more (refinement) for Stage II.
        min_frames: ``[V]``: Stage I never leaves video ``v`` fewer frames than
            ``min_frames[v]`` (default 1 each).
        on_merge: ``(i, plan)``, called after Stage I at prune layer ``i`` with the merge it
            applied over the batch's frames (identity plans included), so that a tower can apply
            the same merge to other states of the same frames (Qwen3-VL's deepstack taps).
    """
    lengths = [int(t) for t in lengths]
    if not lengths or min(lengths) < 1 or sum(lengths) != hidden.shape[0]:
        raise ValueError(f"lengths {lengths} must be positive and sum to the {hidden.shape[0]} "
                         "frames of hidden")
    mins = [1] * len(lengths) if min_frames is None else [int(m) for m in min_frames]
    if len(mins) != len(lengths):
        raise ValueError(f"min_frames has {len(mins)} entries for {len(lengths)} videos")
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
    videos = range(len(lengths))
    groups: list[Groups | None] = [None for _ in videos]
    frames: list[list[int]] = [[] for _ in videos]
    origins = [list(range(t)) for t in lengths]  # host ints, from each merge plan (no sync)
    for i in range(num_layers):
        for v in videos:
            frames[v].append(lengths[v])
        if i == received_layer:
            assert run_layer_with_received is not None
            hidden, received = run_layer_with_received(i, hidden)  # [F,N,C], [F,N]
        else:
            hidden = run_layer(i, hidden)
        if i not in prune:
            continue
        # Stage I, video by video: segment, merge, and after the last prune layer refine.
        hs = list(hidden.split(lengths))  # V x [T_v, N, C] views
        rs = list(received.split(lengths)) if received is not None else [None for _ in videos]
        plans = []
        for v in videos:
            hs[v], rs[v], refined, plan = stage1(
                hs[v], rs[v], tau=tau, max_window=max_window, ema=ema, min_frames=mins[v],
                keep_last_middle=keep_last_middle, refine=i == prune_layers[-1],
                with_sources=True)
            groups[v] = refined if refined is not None else groups[v]
            origins[v] = [origins[v][k] for k in plan.first]  # a merged frame keeps its earlier
            plans.append(plan)
        batch_plan = concat_plans(plans, lengths)
        if not batch_plan.identity:
            hidden = hs[0] if len(hs) == 1 else torch.cat(hs)  # -> [sum T', N, C]
            if received is not None:
                received = rs[0] if len(rs) == 1 else torch.cat(rs)  # -> [sum T', N]
        lengths = [len(p) for p in plans]
        if on_merge is not None:
            on_merge(i, batch_plan)
    hs = hidden.split(lengths)
    rs = received.split(lengths) if received is not None else [None for _ in videos]
    return BatchRun(hidden=hidden, runs=[
        EncoderRun(hidden=hs[v], received=rs[v], groups=groups[v], frames_per_layer=frames[v],
                   origins=origins[v]) for v in videos])


def run_encoder(
    hidden: torch.Tensor,
    run_layer: LayerFn,
    num_layers: int,
    *,
    min_frames: int = 1,
    **settings,
) -> EncoderRun:
    """:func:`run_encoder_batch` over one video ``[T, N, C]`` (``min_frames``: an int); the
    other settings are the same."""
    return run_encoder_batch(hidden, [hidden.shape[0]], run_layer, num_layers,
                             min_frames=[min_frames], **settings).runs[0]


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
    encoder_seconds: float = 0.0  # filled only when compress_video(s) gets a clock
    tokens_seconds: float = 0.0  # projector + pooling + selection
    batch: int = 1  # videos encoded in the same call (the seconds are the call's)


def batch_key(config: EarlyTomConfig) -> tuple:
    """Videos whose settings have the same key can be encoded in one :func:`compress_videos`
    call: everything that shapes the encoder run except the ratio (each video keeps its own
    budget)."""
    return (config.effective_method, tuple(config.prune_layers), config.tau, config.max_window,
            config.ema, config.keep_last_middle, config.attention_chunk_frames)


def _cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def compress_videos(embeddings: Sequence[torch.Tensor], tower: VisionTower,
                    configs: Sequence[EarlyTomConfig], *,
                    clock: Callable[[], float] | None = None) -> list[VideoCompression]:
    """Encode several videos ``[T_v, N, C]`` in one batch (every layer called once for all of
    them; Stage I and Stage II per video) and keep ``video_token_count(T_v, configs[v],
    tokens_per_frame)`` tokens of each.

    ``configs[v].method`` picks EarlyTom or a same-budget baseline; when nothing is compressed
    (``enabled=False``, ``method="none"`` or ``retain_ratio=1``) all ``T * tokens_per_frame``
    tokens return. The configs must agree on everything but the ratio (:func:`batch_key`).
    ``clock`` (benchmarks and traces only: e.g. ``time.perf_counter`` after a device sync)
    times the encoder and the token processing (projector, pooling, selection) separately, for
    the whole call (``VideoCompression.batch`` says how many videos shared it).
    """
    if len(embeddings) != len(configs) or not embeddings:
        raise ValueError(f"{len(embeddings)} videos for {len(configs)} configs")
    for e in embeddings:
        if e.ndim != 3 or e.shape[1:] != embeddings[0].shape[1:]:
            raise ValueError(f"embeddings must be [T, N, C] with the same N and C, got "
                             f"{[tuple(x.shape) for x in embeddings]}")
    keys = {batch_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"videos of one batch must share every setting but the ratio, got {keys}")
    config = configs[0]
    lengths = [e.shape[0] for e in embeddings]
    n_layers = tower.num_layers
    per_frame = tower.tokens_per_frame
    method = config.effective_method
    budgets = [video_token_count(t, c, per_frame) for t, c in zip(lengths, configs, strict=True)]
    t0 = clock() if clock else 0.0

    def with_received(i: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tower.layer_with_received(i, h, config.attention_chunk_frames)

    # Stage 1: the encoder over every video at once (with Stage I inside it for EarlyTom).
    hidden = _cat(embeddings)  # V x [T_v, N, C] -> [sum T, N, C]
    if method == "earlytom":
        batch = run_encoder_batch(
            hidden, lengths, tower.layer, n_layers,
            run_layer_with_received=with_received,
            prune_layers=config.prune_layers, tau=config.tau, max_window=config.max_window,
            ema=config.ema, min_frames=[min_frames_for_budget(b, per_frame) for b in budgets],
            keep_last_middle=config.keep_last_middle,
            on_merge=getattr(tower, "follow_merge", None),
        )
    elif method == "post_encoder":
        batch = run_encoder_batch(hidden, lengths, tower.layer, n_layers,
                                  run_layer_with_received=with_received,
                                  received_layer=n_layers - 1)
    elif method in ("evs", "none"):
        batch = run_encoder_batch(hidden, lengths, tower.layer, n_layers)
    else:  # pragma: no cover - EarlyTomConfig validates method
        raise ValueError(f"method {config.method!r} is not supported")
    t1 = clock() if clock else 0.0

    # Stage 2: each video's selection, then one projector call for the whole batch; a tower
    # that projects per output token (``project_rows``) projects only the selected rows.
    runs = batch.runs
    kept = [run.hidden.shape[0] for run in runs]  # [V] T'_v
    if method in ("earlytom", "post_encoder"):
        indices = []
        for run, budget in zip(runs, budgets, strict=True):
            assert run.received is not None
            rec = tower.pool_received(run.received)  # [T', N] -> [T', tokens_per_frame]
            if rec.shape[1] != per_frame:
                raise AssertionError(f"the tower pooled {rec.shape[1]} received-attention "
                                     f"values per frame, it declares {per_frame}")
            groups = run.groups if method == "earlytom" else frame_groups(rec.shape[0])
            assert groups is not None
            indices.append(select_index(rec, groups, budget))  # [budget] into T' * per_frame
        starts = [0]
        for t in kept[:-1]:
            starts.append(starts[-1] + t * per_frame)
        flat = _cat([ix + s for ix, s in zip(indices, starts, strict=True)])  # [sum budget]
        project_rows = getattr(tower, "project_rows", None)
        if project_rows is not None:
            rows = project_rows(batch.hidden, flat)  # [sum T', N, C] -> [sum budget, D]
        else:
            pooled = _project(tower, batch.hidden, per_frame)  # [sum T', tokens_per_frame, D]
            rows = pooled.reshape(-1, pooled.shape[-1]).index_select(0, flat)
        tokens = list(rows.split(budgets))
    else:
        pooled = _project(tower, batch.hidden, per_frame)  # [sum T', N, C] -> [.., n, D]
        tokens, indices = [], []
        for p, budget in zip(pooled.split(kept), budgets, strict=True):
            if method == "none":
                tokens.append(p.reshape(-1, p.shape[-1]))  # [T, n, D] -> [T*n, D]
                indices.append(torch.arange(tokens[-1].shape[0], device=p.device))
            else:  # evs: chosen from the projected features themselves
                tok, ix = evs_select(p, budget)
                tokens.append(tok)
                indices.append(ix)
    t2 = clock() if clock else 0.0
    out = []
    for v, run in enumerate(runs):
        if tokens[v].shape[0] != budgets[v]:
            raise AssertionError(f"compressed video has {tokens[v].shape[0]} rows, budget is "
                                 f"{budgets[v]}")
        out.append(VideoCompression(tokens[v], indices[v], budgets[v], run.frames_per_layer,
                                    kept[v], run.groups, run.origins, encoder_seconds=t1 - t0,
                                    tokens_seconds=t2 - t1, batch=len(runs)))
    return out


def compress_video(embeddings: torch.Tensor, tower: VisionTower, config: EarlyTomConfig,
                   *, clock: Callable[[], float] | None = None) -> VideoCompression:
    """Encode one video ``[T, N, C]`` and keep ``video_token_count(T, config, tokens_per_frame)``
    tokens (:func:`compress_videos` of one video)."""
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [T, N, C], got {tuple(embeddings.shape)}")
    return compress_videos([embeddings], tower, [config], clock=clock)[0]
