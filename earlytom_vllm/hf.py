"""Transformers adapter: EarlyTom for ``transformers.LlavaOnevisionForConditionalGeneration``.

Per instance and reversible: :func:`apply_earlytom` replaces the instance's ``get_video_features``
(an instance attribute shadowing the class method; nothing global is patched) with one that runs
the shared core loop over transformers' own SigLIP modules; :func:`remove_earlytom` restores it.
Because the LLM sees ``FAMILY.rows(T, config, 196)`` tokens per video (the budget plus the
newline), the prompt must carry that many video placeholders: :func:`shrink_video_placeholders`
rewrites processor outputs accordingly.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core import (
    VideoCompression,
    attention_with_received,
    compress_video,
    compress_videos,
)
from earlytom_vllm.core.attention import pool_received
from earlytom_vllm.families.llava_onevision import FAMILY

_ATTR = "_earlytom"


class HFSiglipTower:
    """:class:`earlytom_vllm.core.VisionTower` over a transformers LLaVA-OneVision model."""

    def __init__(self, model: Any) -> None:
        inner = model.model
        self.inner = inner
        tower = inner.vision_tower  # transformers 5 flattens SiglipVisionModel (no .vision_model)
        self.vision = getattr(tower, "vision_model", tower)
        cfg = inner.config
        depth = cfg.vision_config.num_hidden_layers
        fl = cfg.vision_feature_layer
        if not isinstance(fl, int):
            raise ValueError(f"EarlyTom needs a single vision_feature_layer, got {fl!r}")
        self.num_layers = depth + fl + 1 if fl < 0 else fl  # hidden_states[fl] = after that many
        self.layers = self.vision.encoder.layers
        self.grid = cfg.vision_config.image_size // cfg.vision_config.patch_size  # 27
        self.pooled = -(-self.grid // getattr(cfg, "spatial_pool_stride", 2))  # 14
        self.tokens_per_frame = self.pooled * self.pooled  # 196
        self.select_strategy = cfg.vision_feature_select_strategy

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.embeddings(pixels)  # [F, 3, 384, 384] -> [F, 729, C]

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layers[i](hidden, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mirrors transformers 5.x ``SiglipEncoderLayer.forward`` (pre-norm attention and MLP
        with residuals), with the softmax in frame chunks; pinned to it by
        ``tests/vllm/test_plugin.py``."""
        layer = self.layers[i]
        attn = layer.self_attn
        f, n, _ = hidden.shape
        x = layer.layer_norm1(hidden)
        # [F, N, C] -> [F, N, H, d] -> [F, H, N, d]
        q, k, v = (p(x).reshape(f, n, -1, attn.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        out, received = attention_with_received(q, k, v, scale=attn.scale,
                                                chunk_frames=chunk_frames)
        out = out.transpose(1, 2).reshape(f, n, -1)  # [F, H, N, d] -> [F, N, H*d]
        hidden = hidden + attn.out_proj(out)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        return hidden, received / (q.shape[1] * n)

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.select_strategy == "default":
            hidden = hidden[:, 1:]
        return self.inner.apply_pooling(self.inner.multi_modal_projector(hidden))

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        return pool_received(received, self.grid, self.pooled)  # [F, 729] -> [F, 196]


def compress_hf_video(model: Any, pixels: torch.Tensor, config: EarlyTomConfig) -> VideoCompression:
    """Run one video ``[T, 3, H, W]`` through the transformers model's encoder with EarlyTom."""
    tower = HFSiglipTower(model)
    return compress_video(tower.embed(pixels), tower, config)


def _video_features(self, pixel_values_videos: torch.Tensor, *args: Any, **kwargs: Any):
    """Replacement for ``LlavaOnevisionModel.get_video_features`` on one instance."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    config: EarlyTomConfig = getattr(self, _ATTR)["config"]
    owner = getattr(self, _ATTR)["owner"]
    tower = HFSiglipTower(owner)
    videos = list(pixel_values_videos)  # [B, T, 3, H, W] -> B x [T, 3, H, W]: one batch
    rows = []
    for result in compress_videos([tower.embed(v) for v in videos], tower,
                                  [config] * len(videos)):
        rows.append(torch.cat((result.tokens, self.image_newline[None].to(result.tokens.dtype))))
        getattr(self, _ATTR)["last"] = result
    # All videos' rows in order, [1, sum(rows), D]; the caller flattens dims 0 and 1.
    return BaseModelOutputWithPooling(pooler_output=torch.cat(rows)[None])


def apply_earlytom(model: Any, config: EarlyTomConfig | None = None) -> Any:
    """Enable EarlyTom on this model instance (idempotent; returns the model)."""
    config = config or EarlyTomConfig()
    if not isinstance(config, EarlyTomConfig):
        raise ValueError(f"config must be an EarlyTomConfig, got {type(config).__name__}")
    inner = model.model
    HFSiglipTower(model)  # validates the architecture before anything changes
    state = {"config": config, "owner": model, "last": None}
    object.__setattr__(inner, _ATTR, state)
    inner.get_video_features = types.MethodType(_video_features, inner)
    return model


def remove_earlytom(model: Any) -> Any:
    """Undo :func:`apply_earlytom` on this instance (no-op when not applied)."""
    inner = model.model
    if hasattr(inner, _ATTR):
        del inner.get_video_features  # the class method shows through again
        object.__delattr__(inner, _ATTR)
    return model


def last_compression(model: Any) -> VideoCompression | None:
    """The last video's compression result (kept indices, frames per layer)."""
    state = getattr(model.model, _ATTR, None)
    return None if state is None else state["last"]


def shrink_video_placeholders(input_ids: torch.Tensor, video_token_id: int,
                              frames_per_video: list[int], config: EarlyTomConfig,
                              attention_mask: torch.Tensor | None = None, *,
                              tokens_per_frame: int):
    """Rewrite a batch-of-one prompt so each video has ``FAMILY.rows(T, config, 196)``
    placeholders.

    ``input_ids [1, L]`` with runs of ``tokens_per_frame*T + 1`` video tokens (as transformers'
    processor writes them; ``HFSiglipTower(model).tokens_per_frame``) -> ``[1, L']``. Returns
    ``(input_ids, attention_mask)``.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, L], got {tuple(input_ids.shape)}")
    ids = input_ids[0].tolist()
    out: list[int] = []
    i, v = 0, 0
    while i < len(ids):
        if ids[i] != video_token_id:
            out.append(ids[i])
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == video_token_id:
            j += 1
        if v >= len(frames_per_video):
            raise ValueError("input_ids has more video placeholder runs than frames_per_video")
        out.extend([video_token_id] * FAMILY.rows(frames_per_video[v], config, tokens_per_frame))
        v, i = v + 1, j
    if v != len(frames_per_video):
        raise ValueError(f"found {v} video placeholder runs, frames_per_video has {len(frames_per_video)}")
    new_ids = torch.tensor([out], dtype=input_ids.dtype, device=input_ids.device)
    mask = None if attention_mask is None else torch.ones_like(new_ids)
    return new_ids, mask
