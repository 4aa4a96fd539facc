"""Same-budget baselines that prune AFTER the full vision encoder (for benchmarks).

- ``post_encoder``: VisionZip-style, each frame keeps its top-k pooled tokens by the attention
  they receive at the encoder's last layer (k from the shared budget).
- ``evs``: the idea of vLLM's Efficient Video Sampling, for LLaVA-OneVision: the first frame is
  kept whole, then the tokens most different from the same position in the previous frame,
  chosen globally over the video.
Both return exactly ``budget`` tokens as ascending flat indices, like Stage II.
"""

from __future__ import annotations

import torch

from earlytom_vllm.core.selection import select_tokens


def frame_groups(num_frames: int) -> list[tuple[int, int]]:
    """The post-encoder baseline's groups: every frame alone, so every frame is dynamic
    (per-frame top-k in Stage II's selection)."""
    return [(i, i) for i in range(num_frames)]


def post_encoder_select(features: torch.Tensor, received: torch.Tensor,
                        budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``features [T, N, D]``, ``received [T, N]`` -> ``(tokens [budget, D], index [budget])``."""
    return select_tokens(features, received, frame_groups(features.shape[0]), budget)


def evs_select(features: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``features [T, N, D]`` -> ``(tokens [budget, D], index [budget])``."""
    if features.ndim != 3:
        raise ValueError(f"features must be [T, N, D], got {tuple(features.shape)}")
    t, n, d = features.shape
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= t * n:
        raise ValueError(f"budget must be an integer in [1, {t * n}], got {budget!r}")
    x = features.to(torch.promote_types(features.dtype, torch.float32))
    # [T-1, N, D] vs [T-1, N, D] -> [T-1, N]
    dissim = 1.0 - torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=-1)
    first = torch.full((1, n), float("inf"), dtype=dissim.dtype, device=dissim.device)
    score = torch.cat([first, dissim], dim=0).reshape(-1)  # [T, N] -> [T*N]
    order = torch.sort(score, descending=True, stable=True).indices
    index = torch.sort(order[:budget]).values  # ascending: temporal, then raster order
    tokens = features.reshape(t * n, d).index_select(0, index)  # [T*N, D] -> [budget, D]
    return tokens, index
