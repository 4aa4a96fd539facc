"""Qwen3-VL (and the models built on its vision encoder: Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE) with
EarlyTom inside the vision encoder (docs/method.md, "EarlyTom on Qwen3-VL").

What this family contributes to the shared processor and core (everything else is theirs):

- a frame is a temporal slice (2 video frames); its tokens per frame are ``(h/2) * (w/2)`` of THAT
  video's ``grid_thw``; no extra rows per video;
- a layer is vLLM's own ``Qwen3_VisionBlock`` run on ``F`` slices at once (full attention inside
  each slice; tables rebuilt for ``F`` slices by vLLM's ``prepare_encoder_metadata``); the
  received-attention layer (the last prune layer) is that block with its softmax computed in
  slice chunks (:class:`VllmQwen3VisionTower`);
- **deepstack follows the tokens**: the hidden states after each deepstack block are kept, merged
  by every later Stage I merge with that merge's weights (``follow_merge``), and go through their
  own mergers next to the main one; Stage II then gathers the same rows of the concatenated
  ``[main | deepstack...]`` features, so the LLM gets ``count`` rows of each kind;
- layout: the prompt keeps every slice's timestamp and markers, and each slice's slot holds
  ``count / t`` kept tokens (in temporal, then raster order); at ratio 1 this is the stock prompt;
- positions: every kept token takes its own stock position (that of its row and column in the
  EARLIEST original slice of its merged frame), and text keeps its stock (unpruned) positions.
  Rows carry 5 integer channels (:func:`row_channels`) through vLLM's pruning plumbing; the
  model's ``recompute_mrope_positions`` places them by index (:func:`place_rows`), which is right
  for any prefill chunking, several media per request, and the nested chat layout (where vLLM
  0.32's own recompute crashes or shifts positions: shared/spec/qwen3vl-facts.md section 2).

Images, ``enabled=False``, ``method="none"`` and ``retain_ratio=1`` run the stock encoder; their
prompt and positions are the stock model's.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from earlytom_vllm.core import (
    pool_merge_units,
)
from earlytom_vllm.core.temporal import MergePlan, apply_plan
from earlytom_vllm.families.qwen3_vl import FAMILY
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.vllm.compat import sync_allowed
from earlytom_vllm.vllm.observe import record_trace
from earlytom_vllm.vllm.processing import (
    PLAN_FIELD,
    EarlyTomInfo,
    EarlyTomProcessor,
    PositionChannelsModel,
    check_rows,
    plan_of,
)
from earlytom_vllm.vllm.qwen2_5_vl import (
    SliceGridTower,
    media_runs,
    slice_attention_with_received,
)

#: Integer channels appended to every media row: original slice, row, column (the token's stock
#: position), slot and index in the slot (where the row sits in the prompt).
CHANNELS = 5
_DIGIT = 256  # each channel as 2 base-256 digits: exact in bfloat16 and float16
POSITION_CHANNELS = 2 * CHANNELS


# --------------------------------------------------------------------------------------------------
# Position channels


def row_channels(grid_pos: torch.Tensor, slots: int) -> torch.Tensor:
    """``[K, 3]`` (original slice, row, column) of a medium's rows -> ``[K, 5]`` int64 with the
    slot each row fills and its index there: rows fill ``slots`` equal slots in order."""
    k = grid_pos.shape[0]
    if k % slots:
        raise AssertionError(f"{k} rows do not fill {slots} equal slots")
    rho = torch.arange(k, device=grid_pos.device)
    per = k // slots
    slot = torch.div(rho, per, rounding_mode="floor")
    return torch.cat((grid_pos.long(), torch.stack((slot, rho - slot * per), dim=1)), dim=1)


def encode_channels(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[K, 5]`` int64 -> ``[K, 10]`` in ``dtype``, two base-256 digits each (exact in any
    float dtype: the embeddings' own dtype carries them)."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= _DIGIT * _DIGIT):
        raise ValueError(f"position channels must be in [0, {_DIGIT * _DIGIT}), got "
                         f"[{int(values.min())}, {int(values.max())}]")
    hi = torch.div(values, _DIGIT, rounding_mode="floor")
    # [K, 5] x2 -> [K, 5, 2] -> [K, 10]
    return torch.stack((hi, values - hi * _DIGIT), dim=2).reshape(values.shape[0], -1).to(dtype)


def decode_channels(encoded: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_channels`: ``[K, 10]`` -> ``[K, 5]`` int64."""
    digits = encoded.round().long().reshape(encoded.shape[0], CHANNELS, 2)  # [K, 10] -> [K, 5, 2]
    return digits[..., 0] * _DIGIT + digits[..., 1]


def place_rows(host_ids: list[int], positions: torch.Tensor, channels: list[torch.Tensor],
               num_computed_tokens: int, pad_ids: tuple[int, ...]) -> torch.Tensor:
    """Write the M-RoPE positions ``[3, N]`` of this prefill chunk's media rows.

    ``channels``: per medium in the chunk (in prompt order; the first may continue one that
    began before ``num_computed_tokens``), ``[L, 5]`` (slice ``o``, row, column, slot ``s``,
    index ``m``). A medium's slots are consecutive runs of its pad tokens. The first row of a
    piece is the first pad at or after the cursor; that fixes which run is its slot, the other
    slots are the runs next to it. A row goes to ``run[s].start + m``; its position is one past
    the token before slot ``o``'s run (text, whose positions are already final) plus
    ``(0, row, column)``: the stock position of that token. Text positions are not touched.
    """
    runs = media_runs(host_ids, pad_ids)
    starts = torch.tensor([a for a, _ in runs], dtype=torch.long)
    cursor = num_computed_tokens
    for ch in channels:
        if ch.shape[0] == 0:
            continue
        ch = ch.cpu()
        first = next(i for i, (_, e) in enumerate(runs) if e > cursor)  # the run holding row 0
        o, row, col, slot, index = ch.unbind(1)
        at = starts[first + slot - slot[0]] + index  # [L] prompt index of each row
        if int(at[0]) != max(cursor, runs[first][0]):
            raise AssertionError(f"media rows start at {int(at[0])}, the chunk's next "
                                 f"placeholder token is at {max(cursor, runs[first][0])}")
        anchor = starts[first + o - slot[0]] - 1  # token before the run of slice o
        base = positions[:, anchor.to(positions.device)] + 1  # [3, L]
        grid = torch.stack((torch.zeros_like(row), row, col)).to(positions.device)  # [3, L]
        positions[:, at.to(positions.device)] = base + grid
        cursor = int(at[-1]) + 1
    return positions


def unpruned_index(host_ids: list[int], compressed: list[tuple[int, int, int]],
                   video_token_id: int) -> tuple[list[int], torch.Tensor]:
    """The stock (unpruned) prompt of a compressed prompt and where each token of it sits there.

    ``compressed``: ``(offset, length, tokens_per_slice)`` of each compressed video placeholder;
    each run of its video pads (one slot) is a stock slice of ``tokens_per_slice`` pads.
    Returns the stock ids and ``[N]`` int64: token ``i`` is stock token ``index[i]`` (a kept
    row stands in for the first pads of its slice).
    """
    n = len(host_ids)
    extra = torch.zeros(n + 1, dtype=torch.long)
    for a, b in media_runs(host_ids, (video_token_id,)):
        full = next((f for off, length, f in compressed if off <= a < off + length), None)
        if full is not None:
            extra[b] += full - (b - a)  # tokens after this slot move by the pads it lacks
    index = torch.arange(n) + torch.cumsum(extra, 0)[:n]  # [N]
    stock = torch.full((n + int(extra.sum()),), video_token_id, dtype=torch.long)
    stock[index] = torch.tensor(host_ids, dtype=torch.long)  # gaps are the missing pads
    return stock.tolist(), index


# --------------------------------------------------------------------------------------------------
# Processor (API-server process)


class EarlyTomQwen3VLInfo(EarlyTomInfo):
    """Mixed into the ProcessingInfo of each architecture on this encoder."""

    family = FAMILY

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts,
                                          max_frames_per_video: int | None = None) -> int:
        # Profile (and size the encoder cache for) the largest video we serve.
        frames = (self.earlytom_defaults.max_frames if max_frames_per_video is None
                  else max_frames_per_video)
        return super().get_num_frames_with_most_features(seq_len, mm_counts,
                                                         max_frames_per_video=frames)


class EarlyTomQwen3VLProcessingInfo(EarlyTomQwen3VLInfo, Qwen3VLProcessingInfo):
    pass


class EarlyTomQwen3VLMoeProcessingInfo(EarlyTomQwen3VLInfo, Qwen3VLMoeProcessingInfo):
    pass


class EarlyTomQwen3_5ProcessingInfo(EarlyTomQwen3VLInfo, Qwen3_5ProcessingInfo):
    pass


class EarlyTomQwen3_5MoeProcessingInfo(EarlyTomQwen3VLInfo, Qwen3_5MoeProcessingInfo):
    pass


class EarlyTomQwen3VLMultiModalProcessor(EarlyTomProcessor, Qwen3VLMultiModalProcessor):
    info: EarlyTomQwen3VLInfo

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """The stock updates, with each planned video's slots holding ``rows / t`` pads
        (timestamps and markers as stock; only the pads are embedding rows)."""
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs,
                                                   out_mm_kwargs))
        stock = next(u for u in updates if u.modality == "video")
        config = self.info.get_hf_config()

        def replacement(item_idx: int):
            plan = plan_of(out_mm_kwargs, item_idx)
            if plan is None:  # given as embeddings: the stock layout
                return stock.replacement(item_idx)
            item = out_mm_kwargs["video"][item_idx]
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[plan.rows // plan.num_frames] * plan.num_frames,
                timestamps=item["timestamps"].data,
                tokenizer=self.info.get_tokenizer(),
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                video_token_id=config.video_token_id,
                select_token_id=True,
            )

        return [*(u for u in updates if u.modality != "video"),
                PromptReplacement(modality="video", target=stock.target, replacement=replacement)]


# --------------------------------------------------------------------------------------------------
# Model (engine process)


class VllmQwen3VisionTower(SliceGridTower):
    """:class:`earlytom_vllm.core.VisionTower` over vLLM's ``Qwen3_VisionTransformer`` for the
    videos of one grid ``(h, w)``.

    Hidden states are ``[F, N, C]`` with ``N = h * w`` patches per slice in the processor's
    merge-unit order (the 4 patches of a 2x2 unit consecutive, units in raster order; the same
    in every slice, so the first ``F`` slices' tables are those of an ``F``-slice grid). The
    hidden states after each deepstack block are kept (``taps``) and follow every later merge.
    """

    def __init__(self, visual, grid_h: int, grid_w: int) -> None:
        super().__init__(visual, grid_h, grid_w)
        self.tap_layers = [int(i) for i in visual.deepstack_visual_indexes]
        self.taps: dict[int, torch.Tensor] = {}  # layer -> [F, N, C] after that block

    def embed(self, pixels: torch.Tensor, frames: int) -> torch.Tensor:
        """``[t*h*w, 3*2*16*16]`` patches -> ``[t, h*w, C]``. Mirrors
        ``Qwen3_VisionTransformer.forward`` up to its block loop."""
        v = self.visual
        x = v.patch_embed(v.input_norm(pixels.to(device=v.device), v.dtype))  # [t*h*w, C]
        x = x + self.metadata(frames)["pos_embeds"]
        return x.reshape(frames, self.h * self.w, -1)  # [t*h*w, C] -> [t, h*w, C]

    def _keep_tap(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        if i in self.tap_layers:
            self.taps[i] = hidden
        return hidden

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        f, n, c = hidden.shape
        meta = self.metadata(f)
        out = self.blocks[i](hidden.reshape(f * n, 1, c),  # [F, N, C] -> [F*N, 1, C]
                             cu_seqlens=meta["cu_seqlens"],
                             rotary_pos_emb_cos=meta["rotary_pos_emb_cos"],
                             rotary_pos_emb_sin=meta["rotary_pos_emb_sin"],
                             max_seqlen=meta["max_seqlen"],
                             sequence_lengths=meta.get("sequence_lengths"))
        return self._keep_tap(i, out.reshape(f, n, c))  # [F*N, 1, C] -> [F, N, C]

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``i`` with its softmax computed in slice chunks, and received attention
        ``[F, N]``. Mirrors vLLM 0.32 ``Qwen3_VisionBlock.forward`` (pre-norm attention and MLP
        with residuals), calling the same modules."""
        blk = self.blocks[i]
        f, n, c = hidden.shape
        x = hidden.reshape(f * n, 1, c)  # [F*N, 1, C]: vLLM's [s, b, c]
        x_attn, received = slice_attention_with_received(
            blk.attn, blk.norm1(x), self.metadata(f), f, self.visual.num_heads, chunk_frames)
        x = x + x_attn
        x = x + blk.mlp(blk.norm2(x))
        return self._keep_tap(i, x.reshape(f, n, c)), received  # [F, N, C], [F, N]

    def follow_merge(self, i: int, plan: MergePlan) -> None:
        """Stage I merged the frames after layer ``i``: merge every kept tap (all were taken at
        or before ``i``) with the same plan and weights."""
        if plan.identity:
            return
        for layer in self.taps:
            self.taps[layer] = apply_plan(self.taps[layer], plan)

    def _tap(self, layer: int, frames: int) -> torch.Tensor:
        """The hidden states kept after deepstack block ``layer``, ``[F, N, C]``, checked to
        have followed every merge (``frames`` slices, like the main states)."""
        tap = self.taps.get(layer)
        if tap is None or tap.shape[0] != frames:
            raise AssertionError(f"deepstack tap of block {layer} has "
                                 f"{None if tap is None else tap.shape[0]} slices, not {frames}")
        return tap

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[F, N, C]`` (and the taps, ``[F, N, C]`` each) -> ``[F, N/4, D * (1 + levels)]``:
        the main merger and each deepstack merger, concatenated as the stock forward does."""
        f, n, c = hidden.shape
        levels = [self.visual.merger(hidden.reshape(f * n, 1, c))]  # [F*N/4, D]
        for k, layer in enumerate(self.tap_layers):
            tap = self._tap(layer, f)  # [F, N, C] -> [F*N, 1, C]
            levels.append(self.visual.deepstack_merger_list[k](tap.reshape(f * n, 1, c)))
        merged = torch.cat(levels, dim=1)  # [F*N/4, D * (1 + levels)]
        return merged.reshape(f, self.tokens_per_frame, -1)  # -> [F, N/4, D']

    def project_rows(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``project_and_pool(hidden)`` at the flat indices ``index`` only (``[K]`` -> ``[K,
        D * (1 + levels)]``): every merger is one MLP per merge unit, so the main merger and each
        deepstack merger run on the kept units alone (units are in raster order here)."""
        levels = [self.visual.merger(self.units(hidden, index))]  # [K, D]
        for k, layer in enumerate(self.tap_layers):
            tap = self._tap(layer, hidden.shape[0])
            levels.append(self.visual.deepstack_merger_list[k](self.units(tap, index)))
        return torch.cat(levels, dim=1)  # [K, D * (1 + levels)]

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        """``[F, N]`` -> ``[F, N/4]``: the mean over each merge unit (raster order)."""
        return pool_merge_units(received, self.unit)


class EarlyTomQwen3VLModel(PositionChannelsModel):
    """The EarlyTom model side, mixed in before any vLLM model class built on
    ``Qwen3VLForConditionalGeneration`` (dense, MoE, Qwen3.5 hybrid). Media embeddings carry
    integer position channels (:func:`row_channels`)."""

    family = FAMILY

    # -- embeddings ---------------------------------------------------------------------------
    def _with_channels(self, emb: torch.Tensor, grid_pos: torch.Tensor,
                       slots: int) -> torch.Tensor:
        channels = encode_channels(row_channels(grid_pos, slots), emb.dtype)
        return torch.cat((emb, channels.to(emb.device)), dim=1)  # [K, D'] -> [K, D' + 10]

    def _embed_images(self, image_input) -> tuple[torch.Tensor, ...]:
        feats = self._process_image_input(image_input)
        grids = image_input["image_grid_thw"].tolist()
        return tuple(self._with_channels(e, self._full_grid(g, e.device), 1)
                     for e, g in zip(feats, grids, strict=True))

    def _embed_videos(self, video_input, plans) -> list[torch.Tensor]:
        grids = video_input["video_grid_thw"].tolist()  # [V, 3]
        if video_input["type"] == "video_embeds":  # given as embeddings: nothing to compress
            feats = self._process_video_input(video_input)
            return [self._with_channels(e, self._full_grid(g, e.device), g[0])
                    for e, g in zip(feats, grids, strict=True)]
        videos = self._videos(video_input, plans)
        encoded = self._encode_all(videos, VllmQwen3VisionTower)
        return [self._video_rows(e, g, plan) for e, (_, g, plan) in zip(encoded, videos,
                                                                       strict=True)]

    def _video_rows(self, encoded, grid: list[int], plan: VideoPlan) -> torch.Tensor:
        """One encoded video -> ``[rows, D * (1 + levels) + 10]``: the kept tokens' main and
        deepstack features and their position channels."""
        feats, result, seconds, grid_pos = encoded
        out = check_rows(self._with_channels(feats, grid_pos, grid[0]), plan)
        if plan.config.trace:
            record_trace(self, plan, result, seconds,
                         positions=row_channels(grid_pos, grid[0]).cpu().tolist(),
                         grid_thw=list(grid))
            self.earlytom_recent.append(self.earlytom_last)
        return out

    # -- positions ----------------------------------------------------------------------------
    def get_mrope_input_positions(self, input_tokens, mm_features):
        """The stock positions of the same tokens in the unpruned prompt: text (timestamps,
        markers, and whatever follows the video) is final; a compressed video's rows stand in
        for the first pads of their slot's slice (provisional: rewritten when the video is
        encoded; if its KV comes from the prefix cache they are never read)."""
        ids = list(input_tokens)
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        compressed = []
        for f in features:
            plan = (VideoPlan.decode(f.data[PLAN_FIELD].data.tolist())
                    if f.modality == "video" and PLAN_FIELD in f.data else None)
            if plan is not None and plan.config.compresses:
                compressed.append((f.mm_position.offset, f.mm_position.length,
                                   plan.tokens_per_frame))
        if not compressed:
            return super().get_mrope_input_positions(ids, mm_features)
        stock_ids, index = unpruned_index(ids, compressed, self.config.video_token_id)
        stock_features = [SimpleNamespace(
            modality=f.modality, data=f.data,
            mm_position=SimpleNamespace(offset=int(index[f.mm_position.offset])))
            for f in features]
        stock, _ = super().get_mrope_input_positions(stock_ids, stock_features)
        positions = stock[:, index]  # [3, N]
        return positions, int(positions.max()) + 1 - len(ids)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        """Strip the position channels from this chunk's media rows and place them
        (:func:`place_rows`; same contract as the stock method)."""
        embeds = [mm[:, :-POSITION_CHANNELS] for mm in multimodal_embeddings]
        with sync_allowed():
            host_ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else input_ids
            channels = [decode_channels(mm[:, -POSITION_CHANNELS:].cpu())
                        for mm in multimodal_embeddings]
            positions = place_rows(list(host_ids), mrope_positions.clone(), channels,
                                   num_computed_tokens,
                                   (self.config.image_token_id, self.config.video_token_id))
            delta = int(positions.max()) + 1 - len(host_ids)
        if self.earlytom_trace:  # the prompt's M-RoPE positions the LLM will use, [3, N]
            self.earlytom_positions = positions[:, :len(host_ids)].cpu().tolist()
        return embeds, positions, delta


def _register(info):
    return MULTIMODAL_REGISTRY.register_processor(
        EarlyTomQwen3VLMultiModalProcessor, info=info, dummy_inputs=Qwen3VLDummyInputsBuilder)


@_register(EarlyTomQwen3VLProcessingInfo)
class EarlyTomQwen3VLForConditionalGeneration(EarlyTomQwen3VLModel,
                                              Qwen3VLForConditionalGeneration):
    pass


@_register(EarlyTomQwen3VLMoeProcessingInfo)
class EarlyTomQwen3VLMoeForConditionalGeneration(EarlyTomQwen3VLModel,
                                                 Qwen3VLMoeForConditionalGeneration):
    pass


@_register(EarlyTomQwen3_5ProcessingInfo)
class EarlyTomQwen3_5ForConditionalGeneration(EarlyTomQwen3VLModel,
                                              Qwen3_5ForConditionalGeneration):
    pass


@_register(EarlyTomQwen3_5MoeProcessingInfo)
class EarlyTomQwen3_5MoeForConditionalGeneration(EarlyTomQwen3VLModel,
                                                 Qwen3_5MoeForConditionalGeneration):
    pass
