"""Stage II: decoupled spatial selection over the pooled tokens of the surviving frames.

Dynamic frames (a refined group's ends, or every frame of a group of <= 2) keep their top-k tokens
by received attention; static frames (a group's inner frames) keep the best token of each of k
contiguous raster windows, so attention sinks cannot take a static frame's whole quota. Exactly
``budget`` tokens come out, spread as :func:`earlytom_vllm.core.budget.allocate_quota` says.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from earlytom_vllm.core.budget import allocate_quota
from earlytom_vllm.core.temporal import check_groups


def dynamic_mask(groups: Sequence[tuple[int, int]], num_frames: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``[T']`` bool: True for dynamic frames (see the module docstring)."""
    dyn = torch.zeros(num_frames, dtype=torch.bool)
    for start, end in groups:  # over groups (few), host-side, before anything touches the device
        if end - start + 1 <= 2:
            dyn[start : end + 1] = True
        else:
            dyn[start] = True
            dyn[end] = True
    return dyn.to(device) if device is not None else dyn


def _rank_desc(score: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
    """Permutation per row sorting by ``key`` ascending, then score descending, then position.

    ``[F, N]`` -> ``[F, N]`` indices. Ties always resolve to the lower position (stable sorts),
    so every process (and tensor-parallel rank) picks the same tokens.
    """
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    if key is None:
        return order
    key_sorted = torch.gather(key, -1, order)
    second = torch.sort(key_sorted, dim=-1, stable=True).indices
    return torch.gather(order, -1, second)


def window_ids(quota: torch.Tensor, n: int) -> torch.Tensor:
    """Window of each raster position when ``n`` tokens split into ``quota[f]`` contiguous windows,
    the first ``n % quota`` windows one token longer. ``[F]`` -> ``[F, n]`` int64."""
    k = quota.clamp(min=1).unsqueeze(1)  # [F] -> [F, 1]
    q, r = n // k, n % k
    p = torch.arange(n, device=quota.device).unsqueeze(0)  # [1, n]
    long_span = r * (q + 1)
    return torch.where(p < long_span, p // (q + 1), r + (p - long_span) // q.clamp(min=1))


def selection_mask(received: torch.Tensor, groups: Sequence[tuple[int, int]],
                   budget: int) -> torch.Tensor:
    """``[T', N]`` bool keep-mask with exactly ``budget`` True entries."""
    t, n = received.shape
    checked = check_groups(groups, t)
    dyn = dynamic_mask(checked, t, device=received.device)
    quota = allocate_quota(budget, dyn, tokens_per_frame=n)  # [T']
    score = received.to(torch.promote_types(received.dtype, torch.float32))
    score = torch.nan_to_num(score, nan=float("-inf"))

    # Dynamic frames: rank by score; keep rank < quota.
    order = _rank_desc(score)  # [T', N]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(t, n))
    keep_dyn = rank < quota.unsqueeze(1)

    # Static frames: the first token of each window in (window, score desc, position) order.
    win = window_ids(quota, n)  # [T', N]
    order_w = _rank_desc(score, key=win)
    win_sorted = torch.gather(win, 1, order_w)
    is_head = torch.ones_like(win_sorted, dtype=torch.bool)
    is_head[:, 1:] = win_sorted[:, 1:] != win_sorted[:, :-1]
    keep_static = torch.zeros_like(is_head)
    keep_static.scatter_(1, order_w, is_head)

    return torch.where(dyn.unsqueeze(1), keep_dyn, keep_static)


def select_index(received: torch.Tensor, groups: Sequence[tuple[int, int]],
                 budget: int) -> torch.Tensor:
    """Which ``budget`` tokens Stage II keeps: ``[budget]`` ascending flat indices into
    ``T' * N`` (frames in temporal order, raster order within a frame).

    Args:
        received: ``[T', N]`` pooled received attention of the surviving frames.
        groups: refined groups over the T' frames.
        budget: tokens to keep; ``T' <= budget <= T' * N``.
    """
    if received.ndim != 2:
        raise ValueError(f"received must be [T', N], got {tuple(received.shape)}")
    t, n = received.shape
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(f"budget must be an integer, got {budget!r}")
    if not t <= budget <= t * n:
        raise ValueError(f"budget must be in [{t}, {t * n}] for {t} frames of {n} tokens, got {budget}")
    keep = selection_mask(received, groups, budget)
    index = keep.reshape(-1).nonzero().squeeze(1)  # [T', N] -> [T'*N] -> [budget], ascending
    if index.numel() != budget:  # cheap: nonzero already synced
        raise AssertionError(f"selected {index.numel()} tokens, budget is {budget}")
    return index


def select_tokens(
    features: torch.Tensor,
    received: torch.Tensor,
    groups: Sequence[tuple[int, int]],
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep exactly ``budget`` tokens of ``features`` (:func:`select_index`).

    Args:
        features: ``[T', N, D]`` pooled, projected features of the surviving frames (N = 196).
        received: ``[T', N]`` pooled received attention.
        groups: refined groups over the T' frames.
        budget: tokens to keep; ``T' <= budget <= T' * N``.
    Returns:
        ``(tokens [budget, D], index [budget])``: flat indices into ``T' * N``, ascending (frames
        in temporal order, raster order within a frame).
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [T', N, D], got {tuple(features.shape)}")
    if received.ndim != 2 or tuple(received.shape) != tuple(features.shape[:2]):
        raise ValueError(
            f"received must be [T', N] = {tuple(features.shape[:2])}, got {tuple(received.shape)}"
        )
    t, n, d = features.shape
    index = select_index(received, groups, budget)
    tokens = features.reshape(t * n, d).index_select(0, index)  # [T'*N, D] -> [budget, D]
    return tokens, index
