"""``EarlyTomLlavaOnevisionForConditionalGeneration``: LLaVA-OneVision with EarlyTom in its encoder.

A thin subclass: it drives vLLM's own SigLIP modules layer by layer through the shared core loop
(:func:`earlytom_vllm.core.compress_video`). Weights load unchanged; images, ``enabled=False`` and
``retain_ratio=1`` take the stock code path.
"""

from __future__ import annotations

import logging
import time

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from vllm.multimodal import MULTIMODAL_REGISTRY

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core import attention_with_received, compress_video
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.vllm.compat import all_reduce_tp, encoder_depth
from earlytom_vllm.vllm.processor import (
    PLAN_FIELD,
    EarlyTomDummyInputsBuilder,
    EarlyTomMultiModalProcessor,
    EarlyTomProcessingInfo,
)

logger = logging.getLogger(__name__)


class VllmSiglipTower:
    """:class:`earlytom_vllm.core.VisionTower` over a vLLM LLaVA-OneVision model's modules."""

    def __init__(self, model: LlavaOnevisionForConditionalGeneration) -> None:
        self.model = model
        self.vision = model.vision_tower.vision_model
        self.layers = self.vision.encoder.layers
        self.num_layers = len(self.layers)
        vc = model.config.vision_config
        self.grid = vc.image_size // vc.patch_size

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.embeddings(pixels)  # [F, 3, 384, 384] -> [F, 729, C]

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.layers[i](hidden)[0]

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i`` with its softmax computed in frame chunks, returning received attention.

        Same modules as the stock layer (always called, never read: the CPU backend empties
        ``qkv_proj.weight`` after loading). Received attention is summed over this rank's heads,
        all-reduced across tensor-parallel ranks, then averaged over all heads and queries, so
        every rank keeps the same tokens.
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


@MULTIMODAL_REGISTRY.register_processor(
    EarlyTomMultiModalProcessor,
    info=EarlyTomProcessingInfo,
    dummy_inputs=EarlyTomDummyInputsBuilder,
)
class EarlyTomLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.earlytom_defaults = EarlyTomConfig.from_dict(getattr(self.config, "earlytom", None))
        depth = encoder_depth(self.config)
        if self.earlytom_defaults.prune_layers[-1] >= depth:
            raise ValueError(
                f"earlytom.prune_layers {list(self.earlytom_defaults.prune_layers)} must be "
                f"below the vision encoder depth {depth}"
            )
        # Observability: frames entering each encoder layer, summed over videos, and the last
        # video's trace. Read with LLM.apply_model / collective_rpc.
        self.earlytom_layer_frames = [0] * depth
        self.earlytom_videos = 0
        self.earlytom_last: dict[str, object] = {}

    def embed_multimodal(self, **kwargs: object):
        plans = kwargs.pop(PLAN_FIELD, None)
        by_modality = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: tuple[torch.Tensor, ...] = ()
        for modality, parsed in by_modality.items():  # keeps the request's modality order
            if parsed is None:
                continue
            if modality == "image":
                embeddings += tuple(self._process_image_input(parsed))
            elif modality == "video":
                embeddings += tuple(self._embed_videos(parsed, plans))
        return embeddings

    # -- videos ---------------------------------------------------------------------------------
    def _embed_videos(self, video_input, plans) -> list[torch.Tensor]:
        pixels = video_input["pixel_values_videos"]  # [V, F, C, H, W] or V x [F, C, H, W]
        if plans is None:
            raise AssertionError(f"{PLAN_FIELD} missing: the EarlyTom processor did not run")
        rows = plans.tolist() if isinstance(plans, torch.Tensor) else [p.tolist() for p in plans]
        if len(rows) != len(pixels):
            raise AssertionError(f"{len(rows)} plans for {len(pixels)} videos")
        # One video at a time: encoder memory is bounded by the longest video, whatever the
        # scheduler packed into this call.
        return [self._embed_video(pixels[i], VideoPlan.decode(rows[i]))
                for i in range(len(rows))]

    @torch.inference_mode()
    def _embed_video(self, pixels: torch.Tensor, plan: VideoPlan) -> torch.Tensor:
        """``[F, 3, H, W]`` -> ``[rows, D]`` (2-D, newline last)."""
        if pixels.shape[0] != plan.num_frames:
            raise AssertionError(f"plan for {plan.num_frames} frames, video has {pixels.shape[0]}")
        newline = self.image_newline[None, :]  # [D] -> [1, D]

        def clock() -> float:  # benchmark timings; one device sync per stage, per video
            if pixels.is_cuda:
                torch.cuda.synchronize(pixels.device)
            return time.perf_counter()

        if not plan.config.compresses:
            # The stock video path, op for op (split in two only to time it).
            t0 = clock()
            hidden = self.vision_tower(
                pixels, feature_select_strategy=self.config.vision_feature_select_strategy)
            t1 = clock()
            feats = self.apply_pooling(self.multi_modal_projector(hidden))  # [F, 196, D]
            feats = feats.reshape(-1, feats.shape[-1])  # [F, 196, D] -> [F*196, D]
            t2 = clock()
            self._record([plan.num_frames] * len(self.earlytom_layer_frames), plan, None,
                         (t1 - t0, t2 - t1))
        else:
            tower = VllmSiglipTower(self)
            t0 = clock()
            result = compress_video(tower.embed(pixels), tower, plan.config, clock=clock)
            feats = result.tokens  # [budget, D]
            total = clock() - t0
            # Encoder = patch embedding + layers (+ Stage I); the rest is token processing.
            self._record(result.frames_per_layer, plan, result,
                         (total - result.tokens_seconds, result.tokens_seconds))
        out = torch.cat((feats, newline.to(feats.dtype)), dim=0)  # [budget+1, D]
        if out.shape[0] != plan.rows:
            raise AssertionError(
                f"video embedding has {out.shape[0]} rows, its placeholder count is {plan.rows}"
            )
        return out

    def _record(self, frames_per_layer: list[int], plan: VideoPlan, result,
                seconds: tuple[float, float]) -> None:
        self.earlytom_videos += 1
        for i, f in enumerate(frames_per_layer):
            self.earlytom_layer_frames[i] += f
        self.earlytom_last = {
            "frames_per_layer": list(frames_per_layer),
            "rows": plan.rows,
            "method": plan.config.method if plan.config.compresses else "none",
            "index": None if result is None else result.index.cpu().tolist(),
            "groups": None if result is None else result.groups,
            "encoder_seconds": seconds[0],  # patch embedding + encoder layers (+ Stage I)
            "tokens_seconds": seconds[1],  # projector + pooling + selection
        }
        logger.debug("earlytom video: %d frames, %d rows, frames per layer %s",
                     plan.num_frames, plan.rows, frames_per_layer)
