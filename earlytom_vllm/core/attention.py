"""Received attention: how much attention each token gets, averaged over heads and queries.

Computed at one encoder layer only (the last prune layer), in frame chunks so that at most
``[chunk, H, N, N]`` probabilities exist at once; the same probabilities produce the layer's
attention output, so that layer costs one attention, not two.
"""

from __future__ import annotations

import math

import torch


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None) -> None:
    for name, x in (("q", q), ("k", k)) + ((("v", v),) if v is not None else ()):
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a [T, H, N, d] tensor, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v is not None and v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [T, H, N, *] like q {tuple(q.shape)}, got {tuple(v.shape)}")


def _check_chunk(chunk_frames: int) -> int:
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
    return chunk_frames


def attention_with_received(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    chunk_frames: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention per frame, plus the attention each key token receives.

    Args:
        q, k, v: ``[T, H, N, d]``; attention never crosses frames.
        scale: softmax scale (default ``1/sqrt(d)``).
    Returns:
        ``(out [T, H, N, d] in v's dtype, received_sum [T, N] float32+)`` where ``received_sum`` is
        summed (not averaged) over this rank's heads and all queries, so tensor-parallel ranks can
        all-reduce it before dividing by ``heads * N``.
    """
    _check_qkv(q, k, v)
    chunk = _check_chunk(chunk_frames)
    t, _, _, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty_like(v)
    n = q.shape[2]
    received = torch.empty(t, n, dtype=acc, device=q.device)
    # The [c, H, N, N] logits and probabilities of every chunk go into two buffers allocated
    # once: a fresh allocation per chunk costs as much as the softmax on CPU (every page of a
    # large block is faulted in and zeroed again), and the same kernels give the same bits.
    shape = (min(chunk, t), q.shape[1], n, n)
    logits_buf = torch.empty(shape, dtype=acc, device=q.device)
    probs_buf = torch.empty(shape, dtype=acc, device=q.device)
    for s in range(0, t, chunk):  # over frame chunks, not frames; no host sync
        e = min(s + chunk, t)
        # [c, H, N, d] @ [c, H, d, N] -> [c, H, N, N] (queries x keys), softmax in float32+
        # scaling q ([c,H,N,d]) is cheaper than scaling the [c,H,N,N] logits
        logits = torch.matmul(q[s:e].to(acc) * scale, k[s:e].to(acc).transpose(-1, -2),
                              out=logits_buf[: e - s])
        probs = torch.softmax(logits, dim=-1, out=probs_buf[: e - s])
        # [c, H, N, N] @ [c, H, N, d] -> [c, H, N, d]
        out[s:e] = torch.matmul(probs, v[s:e].to(acc)).to(v.dtype)
        # sum over heads (dim 1) and queries (dim 2): [c, H, N, N] -> [c, N]
        received[s:e] = probs.sum(dim=(1, 2))
    return out, received


def received_attention(
    q: torch.Tensor, k: torch.Tensor, *, chunk_frames: int = 4, scale: float | None = None
) -> torch.Tensor:
    """Mean over heads and queries of ``softmax(q k^T * scale)``: ``[T, H, N, d]`` -> ``[T, N]``."""
    _check_qkv(q, k, None)
    chunk = _check_chunk(chunk_frames)
    t, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.promote_types(q.dtype, torch.float32)
    received = torch.empty(t, n, dtype=acc, device=q.device)
    for s in range(0, t, chunk):
        e = min(s + chunk, t)
        # [c, H, N, d] @ [c, H, d, N] -> [c, H, N, N]
        probs = torch.softmax(
            torch.matmul(q[s:e].to(acc) * scale, k[s:e].to(acc).transpose(-1, -2)), dim=-1
        )
        received[s:e] = probs.sum(dim=(1, 2))  # [c, H, N, N] -> [c, N]
    return received / (h * n)


def pool_received(received: torch.Tensor, grid: int, pooled: int) -> torch.Tensor:
    """Pool per-token attention like LLaVA-OneVision pools features: bilinear, e.g. 27x27 -> 14x14.

    ``[T, grid*grid]`` -> ``[T, pooled*pooled]`` (align_corners=False).
    """
    if received.ndim != 2 or received.shape[1] != grid * grid:
        raise ValueError(f"received must be [T, {grid * grid}], got {tuple(received.shape)}")
    t = received.shape[0]
    x = received.reshape(t, 1, grid, grid)  # [T, 729] -> [T, 1, 27, 27]
    x = torch.nn.functional.interpolate(x, size=(pooled, pooled), mode="bilinear",
                                        align_corners=False)
    return x.reshape(t, pooled * pooled)  # [T, 1, 14, 14] -> [T, 196]


def pool_merge_units(received: torch.Tensor, unit: int) -> torch.Tensor:
    """Pool per-token attention like a patch merger fuses features: the mean over each run of
    ``unit`` consecutive tokens (Qwen2.5-VL: the 4 patches of a 2x2 merge unit, which are
    consecutive in its window order). ``[T, N]`` -> ``[T, N / unit]``."""
    if received.ndim != 2 or unit < 1 or received.shape[1] % unit:
        raise ValueError(f"received must be [T, N] with N divisible by {unit}, "
                         f"got {tuple(received.shape)}")
    t, n = received.shape
    return received.reshape(t, n // unit, unit).mean(dim=-1)  # [T, N] -> [T, N/u, u] -> [T, N/u]
