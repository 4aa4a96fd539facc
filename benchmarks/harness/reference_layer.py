"""The reference encoder layer a benchmark times EarlyTom's logic against: one vision encoder
layer of a family's kind (its FLOPs description in :mod:`benchmarks.harness.flops_models`), random
weights, pure torch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness.flops_models import Qwen3VisionConfig, QwenVisionConfig, VisionConfig


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """The reference layer: norm ``layer``/``rms``, MLP ``gelu`` (fc1, GELU-tanh, fc2) or
    ``swiglu`` (SiLU(gate) * up, down), rotary q/k or not."""

    norm: str
    mlp: str
    rope: bool

    def describe(self, vision: Any) -> str:
        norm = "LayerNorm" if self.norm == "layer" else "RMSNorm"
        mlp = "GELU-tanh fc1/fc2 MLP" if self.mlp == "gelu" else "SwiGLU MLP"
        attn = "full attention within each frame"
        if isinstance(vision, QwenVisionConfig):
            attn = (f"attention within each {vision.window}-px window (full attention within "
                    f"the slice in blocks {list(vision.full_attention_blocks)})")
        return (f"pre-norm {norm}, q/k/v{' + 2-D rotary q/k' if self.rope else ''}, {attn}, "
                f"out projection, {mlp}; random weights ({vision.name})")


#: The layer kind of each vision description type: SigLIP (LLaVA-OneVision); Qwen3-VL's blocks
#: (LayerNorm, GELU-tanh MLP, rotary q/k); Qwen2.5-VL's (RMSNorm, SwiGLU, rotary q/k).
KINDS = {VisionConfig: LayerKind("layer", "gelu", rope=False),
         Qwen3VisionConfig: LayerKind("layer", "gelu", rope=True),
         QwenVisionConfig: LayerKind("rms", "swiglu", rope=True)}


def layer_kind(vision: Any) -> LayerKind:
    """The reference layer kind of a vision description."""
    return KINDS[type(vision)]


class EncoderLayer(torch.nn.Module):
    """One vision encoder layer of ``kind`` (random weights); ``windows``: the token counts of
    each frame's attention windows, in order (None: full attention within the frame)."""

    def __init__(self, width: int, heads: int, mlp: int, kind: LayerKind | None = None,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        kind = kind or KINDS[VisionConfig]
        self.heads, self.kind = heads, kind
        norm = torch.nn.LayerNorm if kind.norm == "layer" else torch.nn.RMSNorm
        self.ln1, self.ln2 = norm(width, eps=eps), norm(width, eps=eps)
        self.q = torch.nn.Linear(width, width)
        self.k = torch.nn.Linear(width, width)
        self.v = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, width)
        self.fc1 = torch.nn.Linear(width, mlp)
        self.fc2 = torch.nn.Linear(mlp, width)
        self.gate = torch.nn.Linear(width, mlp) if kind.mlp == "swiglu" else None
        d = width // heads
        angles = torch.rand(1, 1, 1, d // 2) * math.pi  # [1, 1, 1, d/2], any angles
        self.register_buffer("cos", angles.cos().repeat(1, 1, 1, 2))  # [1, 1, 1, d]
        self.register_buffer("sin", angles.sin().repeat(1, 1, 1, 2))

    def _rotary(self, t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
        return t * self.cos + rotated * self.sin

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[F, N, C]`` -> three ``[F, H, N, C/H]`` (after the first norm; q/k rotated)."""
        f, n, c = x.shape
        h = self.ln1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(f, n, self.heads, c // self.heads).transpose(1, 2)  # [F, H, N, d]

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        if self.kind.rope:
            q, k = self._rotary(q), self._rotary(k)
        return q, k, v

    def forward(self, x: torch.Tensor, windows: Sequence[int] | None = None) -> torch.Tensor:
        f, n, c = x.shape
        q, k, v = self.qkv(x)
        if windows is None:
            attn = F.scaled_dot_product_attention(q, k, v)  # [F, H, N, d]
        else:
            attn = windowed_sdpa(q, k, v, windows)
        x = x + self.out(attn.transpose(1, 2).reshape(f, n, c))  # [F, N, H, d] -> [F, N, C]
        h = self.ln2(x)
        if self.gate is None:
            return x + self.fc2(F.gelu(self.fc1(h), approximate="tanh"))
        return x + self.fc2(F.silu(self.gate(h)) * self.fc1(h))


def windowed_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  windows: Sequence[int]) -> torch.Tensor:
    """SDPA within consecutive runs of ``windows`` tokens of each frame, one batched call per
    window size: ``[F, H, N, d]`` -> ``[F, H, N, d]``."""
    f, h, n, d = q.shape
    if sum(windows) != n:
        raise ValueError(f"windows cover {sum(windows)} tokens, frames have {n}")
    starts = [sum(windows[:i]) for i in range(len(windows))]
    out = torch.empty_like(q)
    for size in sorted(set(windows)):
        at = [s for s, w in zip(starts, windows, strict=True) if w == size]
        m = len(at)
        idx = torch.tensor([s + j for s in at for j in range(size)])  # [m*size]
        # [F, H, m*size, d] -> [F, H, m, size, d] -> [F, m, H, size, d] -> [F*m, H, size, d]
        qs, ks, vs = (t.index_select(2, idx).view(f, h, m, size, d).transpose(1, 2)
                      .reshape(f * m, h, size, d) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs)
        # [F*m, H, size, d] -> [F, m, H, size, d] -> [F, H, m*size, d]
        o = o.view(f, m, h, size, d).transpose(1, 2).reshape(f, h, m * size, d)
        out.index_copy_(2, idx, o)
    return out
