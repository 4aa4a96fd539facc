"""What every model family's EarlyTom processor shares: settings, validation, the plan, the count.

The processor runs in vLLM's API-server process, so every validation error raised here becomes an
HTTP 400 for the request at fault (raised inside the model it would kill the engine). Per video it
attaches an integer plan (:mod:`earlytom_vllm.plan`) that the model decodes; the placeholder count
is read back from that same plan, so the processor and the model cannot disagree.

A family mixes :class:`EarlyTomInfo` into its ``BaseProcessingInfo`` subclass and
:class:`EarlyTomProcessor` into its multimodal processor, and supplies only what differs: the
encoder depth (and its full-attention blocks), each video's frames and tokens per frame, the rows
it appends per video, and how its prompt update is written.

This process also serves vLLM's ``/metrics``: :func:`count_videos` adds each request's visual
tokens before and after compression there, computed from the plans the model will obey.
"""

from __future__ import annotations

import collections
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import torch
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from earlytom_vllm.config import EarlyTomConfig, EarlyTomConfigError
from earlytom_vllm.core import (
    VideoCompression,
    VisionTower,
    batch_key,
    compress_videos,
    kept_grid_positions,
)
from earlytom_vllm.families import Family
from earlytom_vllm.metrics import VisualTokenCounters
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.vllm.observe import trace_clock

KWARG = "earlytom"  # key in mm_processor_kwargs
PLAN_FIELD = "earlytom_plan"  # per-video int64 row carried to the model
_PROFILING = "earlytom_profiling"  # marks the memory-profiling dummy (never counted)


class EarlyTomValidationError(VLLMValidationError, ValueError):
    """Bad ``earlytom`` settings: HTTP 400 in vLLM's server naming the field, a ValueError
    offline. ``field`` is the dotted setting (``earlytom.tau``, ``hf_overrides.earlytom.tau``)."""

    def __init__(self, error: EarlyTomConfigError, *, where: str, value: object) -> None:
        # where: the request field that carried the settings (mm_processor_kwargs), or "" for the
        # server's --hf-overrides (the error's field already starts with hf_overrides).
        param = f"{where}.{error.field}" if where else error.field
        super().__init__(f"Invalid {param.rsplit('.', 1)[0]}: {error}", parameter=param,
                         value=value)
        self.field = error.field


def strip(kwargs: Mapping[str, object]) -> dict[str, object]:
    """The kwargs without this project's keys (never forwarded to transformers)."""
    return {k: v for k, v in kwargs.items() if k not in (KWARG, _PROFILING)}


def server_defaults(family: Family, hf_config: Any) -> EarlyTomConfig:
    """The server-wide settings: the family's defaults with ``--hf-overrides '{"earlytom": ..}'``
    applied, checked against the model. The processor and the model both call it, so a bad one
    fails when the engine starts (the model is built), naming ``hf_overrides.earlytom.<field>``."""
    try:
        return family.server_defaults(hf_config)
    except EarlyTomConfigError as exc:
        raise EarlyTomValidationError(exc, where="",
                                      value=getattr(hf_config, KWARG, None)) from None


class EarlyTomInfo:
    """Mixed into a family's ``ProcessingInfo`` (before the vLLM class in the bases)."""

    #: The model family (:mod:`earlytom_vllm.families`): defaults, depth, counts.
    family: ClassVar[Family]

    @cached_property
    def earlytom_defaults(self) -> EarlyTomConfig:
        """Server-wide defaults, validated against this model (see :func:`server_defaults`)."""
        return server_defaults(self.family, self.get_hf_config())

    def resolve_config(self, hf_kwargs: Mapping[str, object]) -> EarlyTomConfig:
        """The request's effective config; raises an error naming ``earlytom.<field>``."""
        overrides = hf_kwargs.get(KWARG)
        try:  # the front end validates with the same call (server/prepare.py)
            return self.family.request_config(self.earlytom_defaults, overrides,
                                              self.get_hf_config())
        except EarlyTomConfigError as exc:
            raise EarlyTomValidationError(exc, where="mm_processor_kwargs",
                                          value=overrides) from None

    def get_hf_processor(self, **kwargs: object):
        # Never forward our keys to transformers: each distinct value would build another
        # cached HF processor instance.
        return super().get_hf_processor(**strip(kwargs))


class EarlyTomProcessor:
    """Mixed into a family's multimodal processor (before the vLLM class in the bases)."""

    info: EarlyTomInfo

    def video_plans(self, processed: Any, config: EarlyTomConfig) -> list[VideoPlan]:
        """One plan per video in the HF processor's output. By default one per row of its
        ``video_grid_thw`` (slices, patch rows, patch columns: the Qwen families), tokens per
        frame from the family at that video's grid; a family without grids overrides it."""
        family, hf_config = self.info.family, self.info.get_hf_config()
        return [VideoPlan(t, family.frame_tokens(hf_config, (h, w)), family.extra_rows, config)
                for t, h, w in processed["video_grid_thw"].tolist()]  # [V, 3]

    def get_dummy_inputs(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any):
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        # Size the encoder cache (and profile memory) for the largest count a request may ask
        # for: full tokens. Otherwise a request with a higher ratio than the default would be
        # rejected as exceeding the pre-allocated encoder cache.
        inputs.hf_processor_mm_kwargs = {
            **inputs.hf_processor_mm_kwargs, KWARG: {"retain_ratio": 1.0}, _PROFILING: True,
        }
        return inputs

    def _apply_hf_processor_main(self, mm_items: Any, hf_kwargs: Mapping[str, object]):
        config = self.info.resolve_config(hf_kwargs)  # validate even for image-only requests
        processed = super()._apply_hf_processor_main(mm_items, strip(hf_kwargs))
        if processed.get("pixel_values_videos") is not None:
            plans = [p.encode() for p in self.video_plans(processed, config)]
            processed[PLAN_FIELD] = torch.tensor(plans, dtype=torch.int64)  # [V, len(WIRE_FIELDS)]
        return processed

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, strip(hf_processor_mm_kwargs)))
        fields[PLAN_FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: Any):
        return super()._get_prompt_updates(mm_items, strip(hf_processor_mm_kwargs),
                                           out_mm_kwargs)

    def apply(self, inputs: Any, timing_ctx: Any):
        result = super().apply(inputs, timing_ctx)
        if not inputs.hf_processor_mm_kwargs.get(_PROFILING):
            count_videos(self.info, result)
        return result


def plan_of(out_mm_kwargs: Any, item_idx: int) -> VideoPlan | None:
    """The plan of video ``item_idx`` (None for a video given as embeddings)."""
    items = out_mm_kwargs.get("video", [])
    item = items[item_idx] if item_idx < len(items) else None
    if item is None or PLAN_FIELD not in item:
        return None
    return VideoPlan.decode(item[PLAN_FIELD].data.tolist())


def replace_video_placeholders(updates: Sequence[Any], out_mm_kwargs: Any,
                               video_token_id: int) -> list[Any]:
    """The family's prompt updates with the video one replaced: each video's placeholder becomes
    ``plan.rows`` copies of ``video_token_id``, read back from the plan the model will obey.
    Videos without a plan (given as embeddings) keep the stock updates."""
    updates = list(updates)
    videos = out_mm_kwargs.get("video", [])
    if not videos or any(plan_of(out_mm_kwargs, i) is None for i in range(len(videos))):
        return updates

    def replacement(item_idx: int) -> list[int]:
        return [video_token_id] * plan_of(out_mm_kwargs, item_idx).rows

    return [*(u for u in updates if u.modality != "video"),
            PromptReplacement(modality="video", target=[video_token_id], replacement=replacement)]


def decode_plans(plans: Any, num_videos: int) -> list[VideoPlan]:
    """Model side: the ``(V, len(WIRE_FIELDS))`` int64 CPU tensor (or list of rows) -> one plan per
    video (one host copy of a CPU tensor: no device sync)."""
    if plans is None:
        raise AssertionError(f"{PLAN_FIELD} missing: the EarlyTom processor did not run")
    rows = plans.tolist() if isinstance(plans, torch.Tensor) else [p.tolist() for p in plans]
    if len(rows) != num_videos:
        raise AssertionError(f"{len(rows)} plans for {num_videos} videos")
    return [VideoPlan.decode(r) for r in rows]


# --------------------------------------------------------------------------------------------------
# Model side: one video's features, and embeddings in the request's order


class VideoFeatures(NamedTuple):
    """One video through the encoder: its features (``[budget, D]``), the core's record of the
    compression (None on the stock path) and the seconds of (encoder, token processing), which
    are measured only when ``trace`` is on."""

    features: torch.Tensor
    result: VideoCompression | None
    seconds: tuple[float, float]


def encode_videos(plans: Sequence[VideoPlan], like: torch.Tensor, *,
                  stock: Callable[[int], torch.Tensor],
                  tower: Callable[[int], VisionTower],
                  hidden: Callable[[VisionTower, int], torch.Tensor],
                  grid: Callable[[int], Hashable] = lambda v: None,
                  stock_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> list[VideoFeatures]:
    """The video path every family shares, for the videos of one encoder call (video ``v`` has
    ``plans[v]``). A video that compresses nothing goes through the stock encoder (``stock(v)``,
    then ``stock_tokens`` where the family projects and pools after it). The others are encoded
    in batches, as the stock encoder encodes a call's videos together: the videos of one
    ``grid(v)`` (the tower's geometry) and one :func:`earlytom_vllm.core.batch_key` go through
    the core's :func:`compress_videos` over the family's tower (``tower(v)``, the first hidden
    states ``hidden(tower, v)``) at once: every layer runs once over all their frames, Stage I
    and Stage II per video. The tower must count each plan's tokens per frame. Timing syncs the
    device, so only a traced plan is timed (a batch's seconds are the batch's).
    """
    out: list[VideoFeatures | None] = [None] * len(plans)
    batches: dict[tuple, list[int]] = {}
    for v, plan in enumerate(plans):
        if plan.config.compresses:
            batches.setdefault((grid(v), batch_key(plan.config)), []).append(v)
            continue
        clock = trace_clock(like) if plan.config.trace else None
        t0 = clock() if clock else 0.0
        feats = stock(v)
        t1 = clock() if clock else 0.0
        if stock_tokens is not None:
            feats = stock_tokens(feats)
        out[v] = VideoFeatures(feats, None, (t1 - t0, (clock() - t1) if clock else 0.0))
    for members in batches.values():
        tw = tower(members[0])
        for v in members:
            if tw.tokens_per_frame != plans[v].tokens_per_frame:
                raise AssertionError(f"plan for {plans[v].tokens_per_frame} tokens per frame, "
                                     f"the encoder gives {tw.tokens_per_frame}")
        clock = trace_clock(like) if plans[members[0]].config.trace else None
        t0 = clock() if clock else 0.0
        results = compress_videos([hidden(tw, v) for v in members], tw,
                                  [plans[v].config for v in members], clock=clock)
        total = (clock() - t0) if clock else 0.0
        for v, result in zip(members, results, strict=True):
            out[v] = VideoFeatures(result.tokens, result, (total - result.tokens_seconds,
                                                           result.tokens_seconds))
    return out  # type: ignore[return-value]  (every video got its features)


def check_rows(rows: torch.Tensor, plan: VideoPlan) -> torch.Tensor:
    """``rows`` when there is exactly one per placeholder token of the video (too many would be
    truncated by vLLM without a word, too few refused): the count is the plan's."""
    if rows.shape[0] != plan.rows:
        raise AssertionError(
            f"video embedding has {rows.shape[0]} rows, its placeholder count is {plan.rows}")
    return rows


class EarlyTomEmbeddings:
    """Model mixin (engine process): ``embed_multimodal`` in the request's modality order, with
    the processor's plans (:data:`PLAN_FIELD`) handed to the family's ``_embed_videos(parsed,
    plans)``; images go through the family's ``_embed_images(parsed)``. The rest of the stock
    method's contract (vLLM's ``_parse_and_validate_multimodal_inputs``) is the model's own."""

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        plans = kwargs.pop(PLAN_FIELD, None)
        by_modality = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: tuple[torch.Tensor, ...] = ()
        for modality, parsed in by_modality.items():  # keeps the request's modality order
            if parsed is None:
                continue
            if modality == "image":
                embeddings += tuple(self._embed_images(parsed))
            elif modality == "video":
                embeddings += tuple(self._embed_videos(parsed, plans))
        return embeddings


class PositionChannelsModel(EarlyTomEmbeddings):
    """Model mixin for the families whose media rows carry their own M-RoPE positions through
    vLLM's multimodal-pruning plumbing (the Qwen families): the runner strips the channels in the
    model's ``recompute_mrope_positions``. The family's model class sets ``family``."""

    #: compat.PRUNING_OPT_IN: earlytom_vllm.vllm.compat turns the runner's plumbing on for it.
    earlytom_mm_pruning: ClassVar[bool] = True
    family: ClassVar[Family]

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        # named, not **kwargs: vLLM reads these two names off the signature to build the model
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.video_pruning_rate:
            raise ValueError(
                "--video-pruning-rate (vLLM's EVS) and the EarlyTom architecture both choose the "
                "video tokens: serve EVS with the stock architecture, or EarlyTom without it "
                "(mm_processor_kwargs.earlytom.method='evs' gives an EVS-style baseline)")
        # Our embeddings always carry positions: the model's own EVS branches (and its encoder
        # CUDA graphs, which bypass embed_multimodal) must treat pruning as enabled.
        self.is_multimodal_pruning_enabled = True
        # A server-wide setting that does not fit this model stops the engine here, at start-up.
        self.earlytom_trace = server_defaults(self.family, self.config).trace
        # Observability (server-wide ``trace`` only): see earlytom_vllm.vllm.observe.
        self.earlytom_layer_frames = [0] * len(self.visual.blocks)
        self.earlytom_videos = 0
        self.earlytom_last: dict[str, object] = {}
        self.earlytom_recent: collections.deque[dict] = collections.deque(maxlen=8)
        self.earlytom_positions: list[list[int]] | None = None

    def _full_grid(self, grid: list[int], device: Any) -> torch.Tensor:
        """``[t*h*w/4, 3]`` (slice, row, column) of every merged token of a ``grid`` medium."""
        m = self.visual.spatial_merge_size
        t, h, w = grid[0], grid[1] // m, grid[2] // m
        return kept_grid_positions(torch.arange(t * h * w, device=device), range(t), h * w, w)

    @torch.inference_mode()
    def _encode_all(self, videos: Sequence[tuple[torch.Tensor, list[int], VideoPlan]],
                    tower_class: Callable[..., VisionTower]
                    ) -> list[tuple[torch.Tensor, VideoCompression | None, tuple[float, float],
                                    torch.Tensor]]:
        """The videos ``(patches [t*h*w, C], grid, plan)`` of one encoder call through the
        stock encoder, or the core over the family's ``tower_class(visual, h, w)`` (videos of
        one grid and settings in one batch: :func:`encode_videos`). Per video: (features
        ``[rows, D']``, the compression record, seconds, ``[rows, 3]`` (slice, row, column) of
        each kept token in the merged grid)."""
        for _, grid, plan in videos:
            if grid[0] != plan.num_frames:
                raise AssertionError(f"plan for {plan.num_frames} slices, video has {grid[0]}")
        like = videos[0][0] if videos else torch.empty(0)
        encoded = encode_videos(
            [plan for _, _, plan in videos], like,
            stock=lambda v: self.visual(videos[v][0], grid_thw=[videos[v][1]]),  # [thw/4, D']
            tower=lambda v: tower_class(self.visual, videos[v][1][1], videos[v][1][2]),
            hidden=lambda tower, v: tower.embed(videos[v][0], videos[v][1][0]),
            grid=lambda v: tuple(videos[v][1][1:]))
        out = []
        for (feats, result, seconds), (_, grid, plan) in zip(encoded, videos, strict=True):
            if result is None:
                kept = self._full_grid(grid, feats.device)
            else:
                kept = kept_grid_positions(result.index, result.origins, plan.tokens_per_frame,
                                           grid[2] // self.visual.spatial_merge_size)
            out.append((feats, result, seconds, kept))
        return out

    def _videos(self, video_input: Any, plans: Any) -> list[tuple[torch.Tensor, list[int],
                                                                  VideoPlan]]:
        """Each video's ``(patches, grid, plan)``, from the flat ``[sum t*h*w, C]`` patches."""
        grids = video_input["video_grid_thw"].tolist()  # [V, 3]
        pixels = video_input["pixel_values_videos"]
        if isinstance(pixels, (list, tuple)):
            pixels = torch.cat(list(pixels))
        per_video = pixels.split([t * h * w for t, h, w in grids])
        return list(zip(per_video, grids, decode_plans(plans, len(grids)), strict=True))


# --------------------------------------------------------------------------------------------------
# Visual-token counters on vLLM's /metrics


class _VideoCounters:
    """The engine's visual-token counters (:mod:`earlytom_vllm.metrics`), counted per request
    from the plans (after = the placeholder rows the model fills exactly; before = ``frames *
    tokens_per_frame + extra rows``). A video served from vLLM's processor cache arrives without
    its plan, so each plan's counts are remembered by item hash."""

    _REMEMBER = 4096

    def __init__(self) -> None:
        self.counters = VisualTokenCounters()
        self.known: OrderedDict[str, tuple[int, int, str]] = OrderedDict()

    def remember(self, key: str | None, value: tuple[int, int, str]) -> None:
        if key is None:
            return
        self.known[key] = value
        self.known.move_to_end(key)
        while len(self.known) > self._REMEMBER:
            self.known.popitem(last=False)


_COUNTERS: _VideoCounters | None = None


def count_videos(info: Any, result: Mapping[str, Any]) -> None:
    """Add one processed request's videos to the counters (API-server process)."""
    global _COUNTERS
    items = (result.get("mm_kwargs") or {}).get("video") or []
    if not items:
        return
    if _COUNTERS is None:
        _COUNTERS = _VideoCounters()
    hashes = (result.get("mm_hashes") or {}).get("video") or [None] * len(items)
    model = info.ctx.model_config.served_model_name
    model = model[0] if isinstance(model, (list, tuple)) else str(model)
    for item, key in zip(items, hashes, strict=False):
        if item is not None and PLAN_FIELD in item:
            plan = VideoPlan.decode(item[PLAN_FIELD].data.tolist())
            value = (plan.num_frames * plan.tokens_per_frame + plan.extra_rows, plan.rows,
                     plan.config.effective_method)
            _COUNTERS.remember(key, value)
        elif key is not None and key in _COUNTERS.known:
            value = _COUNTERS.known[key]
        else:
            continue  # a video given as embeddings: nothing was compressed
        before, after, method = value
        _COUNTERS.counters.add(model, method, before, after)
