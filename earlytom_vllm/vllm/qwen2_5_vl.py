"""Qwen2.5-VL with EarlyTom inside its vision encoder (method.md section 7).

What this family contributes to the shared processor and core (everything else is theirs):

- a frame is a temporal slice (2 video frames); its tokens per frame are ``(h/2) * (w/2)`` of THAT
  video's ``grid_thw`` (so two videos of one prompt may differ); no extra rows per video;
- a layer is vLLM's own ``Qwen2_5_VisionBlock`` run on ``F`` slices at once (slice-major window
  order, tables rebuilt for ``F`` slices by vLLM's ``prepare_encoder_metadata``); the
  received-attention layer (the last prune layer, a full-attention block) is that block with its
  softmax computed in slice chunks (:class:`VllmQwenVisionTower`);
- received attention is pooled by the mean over each 2x2 merge unit, then un-permuted to raster
  order like the merger's output;
- positions: each kept token returns with vLLM's 4 EVS position channels (time, row, column, and
  the offset at which text resumes), so the runner's own ``recompute_mrope_positions`` rewrites
  the prompt's M-RoPE positions (also across prefill chunks). Time is the stock rule
  (``slice * second_per_grid_t * tokens_per_second``) applied to the EARLIEST original slice of a
  merged frame; text after the video resumes where it does in the stock model.

Images, ``enabled=False``, ``method="none"`` and ``retain_ratio=1`` run the stock encoder; their
positions are the stock model's, channel for channel.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.video_prune import evs

from earlytom_vllm.core import (
    attention_with_received,
    pool_merge_units,
)
from earlytom_vllm.families.qwen2_5_vl import FAMILY
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.vllm.compat import (
    all_reduce_tp,
    cast_overflow_tensors,
    host_to_device,
    sync_allowed,
)
from earlytom_vllm.vllm.observe import record_trace
from earlytom_vllm.vllm.processing import (
    PLAN_FIELD,
    EarlyTomInfo,
    EarlyTomProcessor,
    PositionChannelsModel,
    check_rows,
    replace_video_placeholders,
)

POSITION_CHANNELS = 4  # vLLM's EVS layout: t, h, w, text offset (video_prune/evs.py)


# --------------------------------------------------------------------------------------------------
# Processor (API-server process)


class EarlyTomQwen2_5_VLProcessingInfo(EarlyTomInfo, Qwen2_5_VLProcessingInfo):
    family = FAMILY

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts,
                                          max_frames_per_video: int | None = None) -> int:
        # Upstream profiles 14 frames; profile (and size the encoder cache for) the real maximum
        # we serve, still bounded by what fits in seq_len.
        if max_frames_per_video is None:
            max_frames_per_video = self.earlytom_defaults.max_frames
        return super().get_num_frames_with_most_features(seq_len, mm_counts,
                                                         max_frames_per_video)


class EarlyTomQwen2_5_VLMultiModalProcessor(EarlyTomProcessor, Qwen2_5_VLMultiModalProcessor):
    info: EarlyTomQwen2_5_VLProcessingInfo

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return replace_video_placeholders(updates, out_mm_kwargs,
                                          self.info.get_hf_config().video_token_id)


# --------------------------------------------------------------------------------------------------
# Model (engine process)


class SliceGridTower:
    """What the Qwen towers share: the videos of one grid ``(h, w)`` in slices of ``h * w``
    patches, merged 2x2 into ``tokens_per_frame`` LLM tokens, and vLLM's own per-slice encoder
    tables (``prepare_encoder_metadata``) for any number of slices."""

    def __init__(self, visual, grid_h: int, grid_w: int) -> None:
        self.visual = visual
        self.blocks = visual.blocks
        self.num_layers = len(self.blocks)
        self.h, self.w = grid_h, grid_w
        self.unit = visual.spatial_merge_unit  # 4 patches per 2x2 merge unit
        m = visual.spatial_merge_size
        self.grid_w = grid_w // m  # merged columns
        self.tokens_per_frame = (grid_h // m) * self.grid_w
        self._meta: dict[int, dict] = {}

    def units(self, hidden: torch.Tensor, unit_index: torch.Tensor) -> torch.Tensor:
        """The patches of the merge units ``unit_index`` (positions in the hidden states' unit
        order) as a merger takes them: ``[F, N, C]`` -> ``[K*4, 1, C]``."""
        f, n, c = hidden.shape
        units = hidden.reshape(f * n // self.unit, self.unit, c)  # [F, N, C] -> [F*N/4, 4, C]
        return units.index_select(0, unit_index).reshape(-1, 1, c)  # -> [K, 4, C] -> [K*4, 1, C]

    def metadata(self, frames: int) -> dict:
        """vLLM's encoder tables (rotary, cu_seqlens and the family's own) for ``frames``
        slices: the first ``frames`` slices' tables, since they are the same in every slice."""
        meta = self._meta.get(frames)
        if meta is None:
            meta = self.visual.prepare_encoder_metadata([[frames, self.h, self.w]])
            self._meta[frames] = meta
        return meta


class VllmQwenVisionTower(SliceGridTower):
    """:class:`earlytom_vllm.core.VisionTower` over vLLM's ``Qwen2_5_VisionTransformer`` for the
    videos of one grid ``(h, w)``.

    Hidden states are ``[F, N, C]`` with ``N = h * w`` patches per slice in vLLM's window order
    (slice-major and the same in every slice, so the first ``F`` slices' tables are the tables of
    an ``F``-slice grid); vLLM's blocks see the flat ``[F * N, 1, C]`` they expect.
    """

    def __init__(self, visual, grid_h: int, grid_w: int) -> None:
        super().__init__(visual, grid_h, grid_w)
        self.full = {int(i) for i in visual.fullatt_block_indexes}

    def embed(self, pixels: torch.Tensor, frames: int) -> torch.Tensor:
        """``[t*h*w, 3*2*14*14]`` patches -> ``[t, h*w, C]`` in window order.
        Mirrors ``Qwen2_5_VisionTransformer.forward`` up to its block loop."""
        v = self.visual
        x = v.patch_embed(v.input_norm(pixels.to(device=v.device), v.dtype))  # [t*h*w, C]
        window = self.metadata(frames)["window_index"]
        x = x.reshape(x.shape[0] // self.unit, self.unit, -1)[window]  # [units, 4, C], reordered
        return x.reshape(frames, self.h * self.w, -1)  # [t*h*w/4, 4, C] -> [t, h*w, C]

    def _seqlens(self, i: int, meta: dict) -> dict:
        # mirrors Qwen2_5_VisionTransformer.forward: full blocks attend per slice, others per window
        kind = "full" if i in self.full else "window"
        return {"cu_seqlens": meta["cu_seqlens"] if kind == "full" else meta["cu_window_seqlens"],
                "max_seqlen": meta[f"max_seqlen_{kind}"],
                "sequence_lengths": meta.get(f"sequence_lengths_{kind}")}

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        f, n, c = hidden.shape
        meta = self.metadata(f)
        out = self.blocks[i](hidden.reshape(f * n, 1, c),  # [F, N, C] -> [F*N, 1, C]
                             rotary_pos_emb_cos=meta["rotary_pos_emb_cos"],
                             rotary_pos_emb_sin=meta["rotary_pos_emb_sin"],
                             **self._seqlens(i, meta))
        return out.reshape(f, n, c)  # [F*N, 1, C] -> [F, N, C]

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``i`` (a full-attention block) with its softmax computed in slice chunks,
        returning received attention ``[F, N]`` (mean over all heads and queries of a slice).

        Mirrors vLLM 0.32 ``Qwen2_5_VisionBlock.forward`` (attention within each slice:
        :func:`slice_attention_with_received`; fused add-norm, MLP), calling the same modules.
        """
        if i not in self.full:
            raise AssertionError(f"received attention is read at a full-attention block, not {i}")
        blk = self.blocks[i]
        f, n, c = hidden.shape
        x = hidden.reshape(f * n, 1, c)  # [F*N, 1, C]: vLLM's [s, b, c]
        x_attn, received = slice_attention_with_received(
            blk.attn, blk.norm1(x), self.metadata(f), f, self.visual.num_heads, chunk_frames)
        x_norm, residual = blk.norm2(x, residual=x_attn)
        x = residual + blk.mlp(x_norm)
        return x.reshape(f, n, c), received  # [F, N, C], [F, N]

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[F, N, C]`` -> ``[F, N/4, D]`` in raster order, as the stock forward's tail:
        merger on window-ordered merge units, then ``reverse_indices``."""
        f, n, c = hidden.shape
        x = hidden.reshape(f * n, 1, c)
        if x.dtype == torch.float16:  # mirrors the stock forward (Qwen2.5-VL-3B overflows)
            x = cast_overflow_tensors(x)
        merged = self.visual.merger(x)  # [F*N/4, D], window order
        merged = merged[self.metadata(f)["reverse_indices"]]  # -> raster order
        return merged.reshape(f, self.tokens_per_frame, -1)

    def project_rows(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``project_and_pool(hidden)`` at the raster indices ``index`` only (``[K]`` ->
        ``[K, D]``): the merger is one MLP per merge unit, so it runs on the kept units alone
        (raster token ``k`` is window-order unit ``reverse_indices[k]``)."""
        order = self.metadata(hidden.shape[0])["reverse_indices"].to(index.device)
        x = self.units(hidden, order[index])  # [K*4, 1, C]
        if x.dtype == torch.float16:  # mirrors the stock forward (Qwen2.5-VL-3B overflows)
            x = cast_overflow_tensors(x)
        return self.visual.merger(x)  # [K, D]

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        """``[F, N]`` -> ``[F, N/4]``: mean per merge unit, un-permuted like the features."""
        f = received.shape[0]
        pooled = pool_merge_units(received, self.unit)  # [F, N/4], window order
        order = self.metadata(f)["reverse_indices"].to(pooled.device)
        return pooled.reshape(-1)[order].reshape(f, self.tokens_per_frame)


def slice_attention_with_received(attn, x_norm: torch.Tensor, meta: dict, frames: int,
                                  num_heads: int, chunk_frames: int
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM 0.32's ``Qwen2_5_VisionAttention.forward`` (also Qwen3-VL's vision attention) with
    full attention inside each of ``frames`` slices and its softmax computed in slice chunks:
    ``[F*N, 1, C]`` normed input -> (``[F*N, 1, C]`` output, received attention ``[F, N]``,
    the mean over all heads and queries of a slice).

    Calls the module's own qkv, vision RoPE and projection. Heads are split across
    tensor-parallel ranks: the per-rank sums are all-reduced before averaging, so every rank
    keeps the same tokens.
    """
    s = x_norm.shape[0]
    n = s // frames
    heads, d = attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head
    qkv, _ = attn.qkv(x_norm)  # [S, 1, 3*Hp*d]
    qkv = qkv.reshape(s, 3, heads, d)  # "s b (three head head_dim)", b = 1
    qk = qkv[:, :2].transpose(0, 1).contiguous()  # [2, S, Hp, d]: "(two b) s head head_dim"
    qk = attn.apply_rotary_emb(qk, meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"])
    # [S, Hp, d] -> [F, N, Hp, d] -> [F, Hp, N, d]
    q, k, v = (t.reshape(frames, n, heads, d).transpose(1, 2)
               for t in (qk[0], qk[1], qkv[:, 2]))
    out, received = attention_with_received(q, k, v, scale=attn.attn.scale,
                                            chunk_frames=chunk_frames)
    out = out.transpose(1, 2).reshape(s, 1, heads * d)  # "b s h d -> s b (h d)"
    x_attn, _ = attn.proj(out)  # [S, 1, C] (all-reduced across TP ranks)
    if attn.tp_size > 1:
        received = all_reduce_tp(received)
    return x_attn, received / (num_heads * n)


def media_positions(grid_pos: torch.Tensor, t_factor: float, grid_t: int, grid_h: int,
                    grid_w: int) -> torch.Tensor:
    """vLLM's EVS position channels for kept tokens: ``[K, 3]`` (slice, row, column) in the merged
    grid ``(grid_t, grid_h, grid_w)`` -> ``[K, 4]`` int64 (time, row, column, text offset), media
    placed at position 0 (the layout of ``video_prune/evs.py:compute_mrope_for_media``).

    Time and the text offset follow the stock model's ``get_mrope_input_positions``: time =
    ``int(slice * t_factor)`` in float64, and text resumes one past the largest position of the
    WHOLE grid, so a compressed video's tokens keep the stock positions of the tokens they are
    and the text after it keeps its stock positions at any ratio.
    """
    time = (grid_pos[:, 0].double() * t_factor).long()  # numpy's float64 truncation, as stock
    extent = max(int((grid_t - 1) * t_factor), grid_h - 1, grid_w - 1) + 1
    offset = torch.full_like(time, extent)
    return torch.stack((time, grid_pos[:, 1], grid_pos[:, 2], offset), dim=1)  # [K, 4]


def media_runs(ids: list[int], pad_ids: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of placeholder tokens (one per medium), in prompt order."""
    mask = torch.isin(torch.tensor(ids, dtype=torch.long), torch.tensor(pad_ids))
    edges = torch.diff(mask.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                       append=torch.zeros(1, dtype=torch.int8))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends, strict=True))


def place_media(ids: torch.Tensor, host_ids: list[int], positions: torch.Tensor,
                channels: list[torch.Tensor], num_computed_tokens: int, config) -> torch.Tensor:
    """Write the position channels (``[4, L]`` each, in prompt order; the first may continue a
    medium that began before ``num_computed_tokens``) into the prompt's ``[3, N]`` positions,
    shifting the text after each medium, with vLLM's own ``recompute_mrope_positions``.

    vLLM 0.32's function places ONE medium right, counted from that medium's vision_start
    token. With several media in one call, or a chunk that starts in the text after an earlier
    medium, its "in the middle of a medium" test looks at an earlier vision_start and writes the
    positions in the wrong place (tests/vllm/test_qwen_positions.py shows it). So it is called
    once per medium, on the prompt from that medium's vision_start on.
    """
    runs = media_runs(host_ids, (config.image_token_id, config.video_token_id))
    cursor = num_computed_tokens
    for ch in channels:
        run_start, _ = next(r for r in runs if r[1] > cursor)
        start = max(cursor, run_start)
        vs = run_start - 1  # the medium's <|vision_start|>
        # counted from vs: 0 starts the medium, more continues it after start - vs - 1 tokens
        seen = 0 if start == run_start else start - vs
        sub, _ = evs.recompute_mrope_positions(ids[vs:], [ch], positions[:, vs:], seen,
                                               config.vision_start_token_id,
                                               config.image_token_id, config.video_token_id)
        positions[:, vs:] = sub
        cursor = start + ch.shape[1]
    return positions


@MULTIMODAL_REGISTRY.register_processor(
    EarlyTomQwen2_5_VLMultiModalProcessor,
    info=EarlyTomQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class EarlyTomQwen2_5_VLForConditionalGeneration(PositionChannelsModel,
                                                 Qwen2_5_VLForConditionalGeneration):
    """Media embeddings carry vLLM's 4 EVS position channels (:func:`media_positions`)."""

    family = FAMILY

    # -- embeddings ---------------------------------------------------------------------------
    def _merged_grid(self, grid: list[int]) -> tuple[int, int, int]:
        m = self.visual.spatial_merge_size
        return grid[0], grid[1] // m, grid[2] // m

    def _with_positions(self, emb: torch.Tensor, grid_pos: torch.Tensor, t_factor: float,
                        grid: list[int]) -> torch.Tensor:
        positions = media_positions(grid_pos, t_factor, *self._merged_grid(grid))
        # [K, D] + [K, 4] -> [K, D+4] (as _postprocess_video_embeds_evs appends them)
        return torch.cat((emb, positions.to(device=emb.device, dtype=emb.dtype)), dim=1)

    def _embed_images(self, image_input) -> tuple[torch.Tensor, ...]:
        """The stock image path; positions are the stock ones (t = 0, rows, columns)."""
        feats = self._process_image_input(image_input)
        grids = image_input["image_grid_thw"].tolist()
        return tuple(self._with_positions(e, self._full_grid(g, e.device), 1.0, g)
                     for e, g in zip(feats, grids, strict=True))

    def _t_factors(self, video_input, num_videos: int) -> list[float]:
        # mirrors iter_mm_grid_thw: second_per_grid_t (1.0 when absent) x tokens_per_second
        tps = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            return [1.0 * tps] * num_videos
        return [float(s) * tps for s in seconds.tolist()]

    def _embed_videos(self, video_input, plans) -> list[torch.Tensor]:
        grids = video_input["video_grid_thw"].tolist()  # [V, 3]
        factors = self._t_factors(video_input, len(grids))
        if video_input["type"] == "video_embeds":  # given as embeddings: nothing to compress
            feats = self._process_video_input(video_input)
            return [self._with_positions(e, self._full_grid(g, e.device), tf, g)
                    for e, g, tf in zip(feats, grids, factors, strict=True)]
        videos = self._videos(video_input, plans)
        encoded = self._encode_all(videos, VllmQwenVisionTower)
        return [self._video_rows(e, g, tf, plan) for e, (_, g, plan), tf
                in zip(encoded, videos, factors, strict=True)]

    def _video_rows(self, encoded, grid: list[int], t_factor: float,
                    plan: VideoPlan) -> torch.Tensor:
        """One encoded video -> ``[rows, D + 4]``: kept tokens and their position channels."""
        feats, result, seconds, grid_pos = encoded
        out = check_rows(self._with_positions(feats, grid_pos, t_factor, grid), plan)
        if plan.config.trace:
            record_trace(self, plan, result, seconds,
                         positions=out[:, -POSITION_CHANNELS:].long().cpu().tolist(),
                         grid_thw=list(grid), t_factor=t_factor)
            self.earlytom_recent.append(self.earlytom_last)
        return out

    # -- positions (see place_media) -----------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """The prompt's positions before any medium is encoded. Text and every position that
        is known now are final: images and uncompressed videos get the stock positions, and the
        text after a compressed video resumes where it does in the stock model (that does not
        depend on which tokens are kept). Only a compressed video's own tokens are provisional
        (rewritten when it is encoded); if they come from the prefix cache they are never read."""
        n = len(input_tokens)
        ids = torch.tensor(list(input_tokens), dtype=torch.long)
        positions = torch.arange(n).expand(3, n).clone()  # [3, N], all text to begin with
        media = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            channels = self._initial_channels(feature)  # [L, 4]
            if channels.shape[0] != feature.mm_position.length:
                raise AssertionError(f"{feature.modality} at {feature.mm_position.offset} has "
                                     f"{feature.mm_position.length} placeholders, "
                                     f"{channels.shape[0]} positions")
            media.append(channels.T)  # [4, L]
        positions = place_media(ids, list(input_tokens), positions, media, 0, self.config)
        delta = int(positions.max()) + 1 - n if n else 0
        return positions, delta

    def _initial_channels(self, feature) -> torch.Tensor:
        data = feature.data
        if feature.modality == "image":
            grid = data["image_grid_thw"].data.tolist()
            return media_positions(self._full_grid(grid, "cpu"), 1.0, *self._merged_grid(grid))
        if feature.modality != "video":
            raise ValueError(f"Unsupported modality: {feature.modality}")
        grid = data["video_grid_thw"].data.tolist()
        # mirrors iter_mm_grid_thw: second_per_grid_t (1.0 when absent) x tokens_per_second
        seconds = data.get("second_per_grid_ts")
        t_factor = (seconds.data.item() if seconds else 1.0) * getattr(
            self.config.vision_config, "tokens_per_second", 1.0)
        plan = VideoPlan.decode(data[PLAN_FIELD].data.tolist()) if PLAN_FIELD in data else None
        if plan is None or not plan.config.compresses:
            grid_pos = self._full_grid(grid, "cpu")
        else:  # provisional: only the text offset (channel 3) matters until it is encoded
            grid_pos = torch.zeros(plan.rows, 3, dtype=torch.long)
        return media_positions(grid_pos, t_factor, *self._merged_grid(grid))

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        """Strip the 4 position channels from this chunk's media embeddings and place them
        (same contract as the stock method; one medium per call of vLLM's function)."""
        device = (multimodal_embeddings[0].device if len(multimodal_embeddings)
                  else mrope_positions.device)
        if isinstance(input_ids, torch.Tensor):
            ids = input_ids.to(device=device, dtype=torch.long)
        else:
            ids = host_to_device(input_ids, dtype=torch.long, device=device)
        embeds = [mm[:, :-POSITION_CHANNELS] for mm in multimodal_embeddings]
        channels = [mm[:, -POSITION_CHANNELS:].permute(1, 0).long()
                    for mm in multimodal_embeddings]  # [4, L] each
        with sync_allowed():
            host_ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else input_ids
            positions = place_media(ids, host_ids, mrope_positions.clone(), channels,
                                    num_computed_tokens, self.config)
            delta = int(positions.max()) + 1 - len(host_ids)
        if self.earlytom_trace:  # the prompt's M-RoPE positions the LLM will use, [3, N]
            self.earlytom_positions = positions[:, :len(host_ids)].cpu().tolist()
        return embeds, positions, delta
