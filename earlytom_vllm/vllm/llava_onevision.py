"""LLaVA-OneVision (and LLaVA-Video, which vLLM serves with the same class) with EarlyTom.

What this family contributes to the shared processor and core (everything else is theirs):

- a frame is a frame; its tokens per frame are vLLM's own ``_get_num_frame_tokens`` (the SigLIP
  patch grid pooled by ``spatial_pool_stride``: 27 x 27 -> 14 x 14 = 196), and each video gets one
  ``image_newline`` row after its tokens;
- a layer is vLLM's SigLIP encoder layer; the prune/received-attention layer is the same layer
  with its softmax computed in frame chunks (:class:`VllmSiglipTower`);
- received attention is pooled bilinearly like the features.

Weights load unchanged; images, ``enabled=False``, ``method="none"`` and ``retain_ratio=1`` take the
stock code path.
"""

from __future__ import annotations

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core import attention_with_received
from earlytom_vllm.core.attention import pool_received
from earlytom_vllm.families.llava_onevision import FAMILY
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.vllm.compat import all_reduce_tp, siglip_embed
from earlytom_vllm.vllm.observe import record_trace
from earlytom_vllm.vllm.processing import (
    EarlyTomEmbeddings,
    EarlyTomInfo,
    EarlyTomProcessor,
    check_rows,
    decode_plans,
    encode_videos,
    replace_video_placeholders,
    server_defaults,
)

# --------------------------------------------------------------------------------------------------
# Processor (API-server process)


class EarlyTomLlavaOnevisionProcessingInfo(EarlyTomInfo, LlavaOnevisionProcessingInfo):
    family = FAMILY

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts) -> int:
        # Upstream caps the profiling dummy at 16 frames; profile the real maximum we serve.
        max_videos = max(mm_counts.get("video", 0), 1)
        fits = self._get_max_video_frames(seq_len) // max_videos
        return max(1, min(fits, self.earlytom_defaults.max_frames))


class EarlyTomLlavaOnevisionMultiModalProcessor(EarlyTomProcessor,
                                                LlavaOnevisionMultiModalProcessor):
    info: EarlyTomLlavaOnevisionProcessingInfo

    def video_plans(self, processed, config: EarlyTomConfig) -> list[VideoPlan]:
        per_frame = FAMILY.frame_tokens(self.info.get_hf_config())  # 196 at every resolution
        videos = processed["pixel_values_videos"]  # [V, F, C, H, W] or V x [F, C, H, W]
        return [VideoPlan(int(v.shape[0]), per_frame, FAMILY.extra_rows, config) for v in videos]

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return replace_video_placeholders(updates, out_mm_kwargs,
                                          self.info.get_hf_config().video_token_index)


# --------------------------------------------------------------------------------------------------
# Model (engine process)


class VllmSiglipTower:
    """:class:`earlytom_vllm.core.VisionTower` over a vLLM LLaVA-OneVision model's modules."""

    def __init__(self, model: LlavaOnevisionForConditionalGeneration) -> None:
        self.model = model
        self.vision = model.vision_tower.vision_model
        self.layers = self.vision.encoder.layers
        self.num_layers = len(self.layers)
        vc = model.config.vision_config
        self.grid = vc.image_size // vc.patch_size  # 27
        stride = getattr(model.config, "spatial_pool_stride", 2)
        self.pooled = -(-self.grid // stride)  # 14: apply_pooling's output side
        self.tokens_per_frame = self.pooled * self.pooled

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return siglip_embed(self.vision, pixels)  # [F, 3, 384, 384] -> [F, 729, C]

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers[i](hidden)[0]

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i`` with its softmax computed in frame chunks, returning received attention.

        Mirrors vLLM 0.32 ``siglip.SiglipEncoderLayer.forward`` (pre-norm attention and MLP with
        residuals; ``tests/vllm/test_plugin.py`` pins it to that module's output). Same modules,
        always called, never read: the CPU backend empties ``qkv_proj.weight`` after loading.
        Received attention is summed over this rank's heads, all-reduced across tensor-parallel
        ranks, then averaged over all heads and queries, so every rank keeps the same tokens.
        """
        layer = self.layers[i]
        attn = layer.self_attn
        f, n, _ = hidden.shape
        heads, d = attn.num_heads_per_partition, attn.head_dim
        qkv, _ = attn.qkv_proj(layer.layer_norm1(hidden))  # [F, N, 3*Hp*d]
        q, k, v = qkv.chunk(3, dim=-1)  # 3 x [F, N, Hp*d]
        # [F, N, Hp*d] -> [F, N, Hp, d] -> [F, Hp, N, d]
        q, k, v = (x.reshape(f, n, heads, d).transpose(1, 2) for x in (q, k, v))
        out, received = attention_with_received(q, k, v, scale=attn.scale,
                                                chunk_frames=chunk_frames)
        out = out.transpose(1, 2).reshape(f, n, heads * d)  # [F, Hp, N, d] -> [F, N, Hp*d]
        attn_out, _ = attn.out_proj(out)
        hidden = attn_out + hidden
        hidden = layer.mlp(layer.layer_norm2(hidden)) + hidden
        if attn.tp_size > 1:
            received = all_reduce_tp(received)
        return hidden, received / (attn.num_heads * n)  # [F, N] mean over heads and queries

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[F, 729, C]`` -> ``[F, 196, D]`` exactly as the stock video path does."""
        hidden = self.vision.maybe_layer_norm_and_apply_head(hidden)
        if self.model.config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        return self.model.apply_pooling(self.model.multi_modal_projector(hidden))

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        return pool_received(received, self.grid, self.pooled)  # [F, 729] -> [F, 196]


@MULTIMODAL_REGISTRY.register_processor(
    EarlyTomLlavaOnevisionMultiModalProcessor,
    info=EarlyTomLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class EarlyTomLlavaOnevisionForConditionalGeneration(EarlyTomEmbeddings,
                                                     LlavaOnevisionForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        depth = FAMILY.encoder_depth(self.config)
        # A server-wide setting that does not fit this model stops the engine here, at start-up.
        server_defaults(FAMILY, self.config)
        # Observability (only with the server-wide ``trace`` setting): frames entering each
        # encoder layer, summed over videos, and the last video's trace. Read with
        # LLM.apply_model / collective_rpc (earlytom_vllm.vllm.observe).
        self.earlytom_layer_frames = [0] * depth
        self.earlytom_videos = 0
        self.earlytom_last: dict[str, object] = {}

    def _embed_images(self, image_input):
        return self._process_image_input(image_input)  # the stock image path

    def _embed_videos(self, video_input, plans) -> list[torch.Tensor]:
        pixels = video_input["pixel_values_videos"]  # [V, F, C, H, W] or V x [F, C, H, W]
        return self._embed_video_batch(list(pixels), decode_plans(plans, len(pixels)))

    @torch.inference_mode()
    def _embed_video_batch(self, pixels: list[torch.Tensor],
                           plans: list[VideoPlan]) -> list[torch.Tensor]:
        """Each video ``[F, 3, H, W]`` -> ``[rows, D]`` (2-D, newline last). The videos that
        compress are encoded together, as the stock path encodes a call's videos
        (:func:`encode_videos`)."""
        for video, plan in zip(pixels, plans, strict=True):
            if video.shape[0] != plan.num_frames:
                raise AssertionError(f"plan for {plan.num_frames} frames, video has "
                                     f"{video.shape[0]}")
        encoded = encode_videos(
            plans, pixels[0],
            # the stock video path, op for op: tower, then projector and pooling
            stock=lambda v: self.vision_tower(
                pixels[v], feature_select_strategy=self.config.vision_feature_select_strategy),
            stock_tokens=lambda h: self.apply_pooling(self.multi_modal_projector(h)),
            tower=lambda v: VllmSiglipTower(self),
            hidden=lambda tower, v: tower.embed(pixels[v]))
        return [self._video_rows(e, plan) for e, plan in zip(encoded, plans, strict=True)]

    def _video_rows(self, encoded, plan: VideoPlan) -> torch.Tensor:
        feats, result, seconds = encoded
        feats = feats.reshape(-1, feats.shape[-1])  # [F, 196, D] (stock) -> [F*196, D]
        newline = self.image_newline[None, :].to(feats.dtype)  # [D] -> [1, D]
        out = check_rows(torch.cat((feats, newline), dim=0), plan)  # [budget+1, D]
        if plan.config.trace:
            record_trace(self, plan, result, seconds)
        return out
