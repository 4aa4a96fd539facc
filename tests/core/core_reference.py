"""Independent re-statements of the method (``docs/method.md``) for the core tests.

Everything here is written from the specification text, not from the library, and in float64
where numbers matter. Test modules import it as ``core_reference`` (pytest puts ``tests/core`` on
``sys.path``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from hypothesis import settings

POOLED = 196  # tokens per frame after 2x2 bilinear pooling (14 x 14)
GRID = 27  # SigLIP grid side before pooling

# Keep the whole tests/core run fast on 2 cores.
FAST = settings(max_examples=60, deadline=None, derandomize=True)

Groups = list[tuple[int, int]]


# ---------------------------------------------------------------------------------------------
# Stage I
# ---------------------------------------------------------------------------------------------
def ref_sim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spec: mean over token positions of the cosine similarity of a[j] and b[j] (float64)."""
    a64, b64 = a.double(), b.double()  # [N, D]
    cos = (a64 * b64).sum(-1) / (a64.norm(dim=-1) * b64.norm(dim=-1))  # [N]
    return float(cos.mean())


def sim_matrix(hidden: torch.Tensor) -> list[list[float]]:
    """``m[i][j] = ref_sim(hidden[i], hidden[j])`` for a ``[T, N, D]`` video (float64)."""
    h = hidden.double()
    unit = h / h.norm(dim=-1, keepdim=True)  # [T, N, D]
    m = torch.einsum("ind,jnd->ijn", unit, unit).mean(-1)  # [T, T, N] -> [T, T]
    return m.tolist()


def ref_segment(sim: Callable[[int, int], float], t: int, tau: float, max_window: int,
                ema: float) -> tuple[Groups, list[float]]:
    """Spec section 2, segmentation. Returns (groups, every smoothed s compared with tau)."""
    groups: Groups = []
    start, s = 0, 1.0
    trace: list[float] = []
    for i in range(1, t):
        s = ema * sim(start, i) + (1.0 - ema) * s  # ref = first frame of the current segment
        trace.append(s)
        if s < tau or i - start + 1 >= max_window:
            groups.append((start, i - 1))
            start, s = i, 1.0
    groups.append((start, t - 1))
    return groups, trace


# A plan row: output frame = w * x[a] + (1 - w) * x[b]; (i, i, 1.0) is "x[i] unchanged".
PlanRow = tuple[int, int, float]


def ref_merge_plan(sim: Callable[[int, int], float], groups: Sequence[tuple[int, int]], *,
                   keep_last_middle: bool = False) -> tuple[list[PlanRow], list[tuple[float, float]],
                                                           list[float]]:
    """Spec section 2, merging within a segment.

    Returns (plan rows, every pair of numbers the rule compares, every merge denominator).
    ``keep_last_middle=True`` is the variant that keeps m_{n-1}: the same walk, and m_{n-1} is
    emitted (unchanged) before the segment's last frame.
    """
    rows: list[PlanRow] = []
    compared: list[tuple[float, float]] = []
    denominators: list[float] = []
    for a, b in groups:
        length = b - a + 1
        if length <= 3:
            rows.extend((i, i, 1.0) for i in range(a, b + 1))
            continue
        rows.append((a, a, 1.0))  # first frame as it is
        m = list(range(a + 1, b))  # m_0 .. m_{n-1}
        n = len(m)
        s = [sim(m[j], m[j + 1]) for j in range(n - 1)]
        tau_seg = sim(a, b)
        i = 0
        while i < n - 1:
            if i + 1 < n - 1:  # a next pair exists
                compared += [(s[i], tau_seg), (s[i], s[i + 1])]
                if s[i] > tau_seg and s[i] > s[i + 1]:
                    denominators.append(s[i] + s[i + 1])
                    w = s[i] / (s[i] + s[i + 1])
                    rows.append((m[i], m[i + 1], w))
                    i += 2
                else:
                    rows.append((m[i], m[i], 1.0))
                    i += 1
            else:  # the last pair
                compared.append((s[i], tau_seg))
                # merged with w = 1.0 (emits m_i) or emitted: m_i either way
                rows.append((m[i], m[i], 1.0))
                i += 2 if s[i] > tau_seg else 1
        if keep_last_middle:
            rows.append((m[n - 1], m[n - 1], 1.0))
        rows.append((b, b, 1.0))  # last frame as it is
    return rows, compared, denominators


def apply_rows(x: torch.Tensor, rows: Sequence[PlanRow]) -> torch.Tensor:
    """Apply plan rows to ``[T, ...]`` in float64 -> ``[T', ...]``."""
    x64 = x.double()
    out = [x64[a] if w == 1.0 else w * x64[a] + (1.0 - w) * x64[b] for a, b, w in rows]
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# Budget and Stage II
# ---------------------------------------------------------------------------------------------
def ref_dynamic(groups: Sequence[tuple[int, int]], t: int) -> list[bool]:
    """Spec section 3: groups of <= 2 frames are all dynamic; else only the two ends."""
    dyn = [False] * t
    for a, b in groups:
        for i in range(a, b + 1):
            dyn[i] = (b - a + 1 <= 2) or i in (a, b)
    return dyn


def ref_quota(budget: int, dynamic: Sequence[bool]) -> list[int]:
    """Spec section 4: budget // T' each, the remainder one each to dynamic frames first, then to
    static frames, in temporal order."""
    t = len(dynamic)
    base, rem = divmod(budget, t)
    order = [i for i in range(t) if dynamic[i]] + [i for i in range(t) if not dynamic[i]]
    quota = [base] * t
    for i in order[:rem]:
        quota[i] += 1
    return quota


def ref_windows(k: int, n: int = POOLED) -> list[range]:
    """Spec section 3: n raster positions in k contiguous windows, the first n % k one longer."""
    q, r = divmod(n, k)
    out, pos = [], 0
    for w in range(k):
        size = q + 1 if w < r else q
        out.append(range(pos, pos + size))
        pos += size
    assert pos == n
    return out


def random_groups(draw_cuts: Sequence[bool]) -> Groups:
    """Turn ``T-1`` "cut after frame i" flags into contiguous inclusive groups."""
    groups: Groups = []
    start = 0
    for i, cut in enumerate(draw_cuts):
        if cut:
            groups.append((start, i))
            start = i + 1
    groups.append((start, len(draw_cuts)))
    return groups


def bilinear_ref(x: torch.Tensor, out: int) -> torch.Tensor:
    """Bilinear resize of ``[..., S, S]`` to ``[..., out, out]``, align_corners=False (half-pixel
    centres, source clamped at 0), written out by hand in float64."""
    s = x.shape[-1]
    scale = s / out

    def taps(o: int) -> tuple[int, int, float]:
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(math.floor(src), s - 1)
        i1 = min(i0 + 1, s - 1)
        return i0, i1, src - i0

    x64 = x.double()
    res = torch.empty(*x.shape[:-2], out, out, dtype=torch.float64)
    for oy in range(out):
        y0, y1, ly = taps(oy)
        for ox in range(out):
            x0, x1, lx = taps(ox)
            res[..., oy, ox] = ((1 - ly) * (1 - lx) * x64[..., y0, x0] + (1 - ly) * lx * x64[..., y0, x1]
                                + ly * (1 - lx) * x64[..., y1, x0] + ly * lx * x64[..., y1, x1])
    return res


def ref_received(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean over heads and queries of softmax(q k^T / sqrt(d)), float64, explicit softmax."""
    q64, k64 = q.double(), k.double()
    d = q.shape[-1]
    logits = q64 @ k64.transpose(-1, -2) / math.sqrt(d)  # [T, H, N, N]
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    p = e / e.sum(-1, keepdim=True)
    return p.mean(dim=(1, 2))  # [T, H, N(q), N(k)] -> [T, N(k)]


# ---------------------------------------------------------------------------------------------
# Constructed videos
# ---------------------------------------------------------------------------------------------
def angle_video(degrees: Sequence[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[T, 1, 2]``: one token per frame, a unit vector at the given angle, so
    sim(i, j) = cos(angle_i - angle_j) exactly."""
    rad = torch.tensor([math.radians(a) for a in degrees], dtype=torch.float64)
    return torch.stack([rad.cos(), rad.sin()], dim=-1).unsqueeze(1).to(dtype)  # [T, 2] -> [T,1,2]


def cosd(deg: float) -> float:
    return math.cos(math.radians(deg))


def scene_video(lengths: Sequence[int], *, n: int = 8, d: int = 16, noise: float = 0.01,
                seed: int = 0) -> torch.Tensor:
    """Hard cuts: scene k's token j is the k-th column of a random orthogonal matrix Q_j, so
    cross-scene similarity is 0 and within-scene similarity ~1 (small per-frame noise)."""
    assert len(lengths) <= d
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, d, generator=g, dtype=torch.float64))  # [n, d, d]
    frames = []
    for k, length in enumerate(lengths):
        base = q[:, :, k]  # [n, d]
        for _ in range(length):
            frames.append(base + noise * torch.randn(n, d, generator=g, dtype=torch.float64))
    return torch.stack(frames)  # [T, n, d]


def walk_video(t: int, *, n: int = 3, d: int = 4, step: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Random walk ``x_t = x_{t-1} + step * noise`` (float64 ``[T, n, d]``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    frames = []
    for _ in range(t):
        frames.append(x)
        x = x + step * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.stack(frames)


# ---------------------------------------------------------------------------------------------
# A toy vision tower (real per-frame attention layers, projector + bilinear 27 -> 14 pooling)
# ---------------------------------------------------------------------------------------------
class ToyTower:
    """Implements the ``VisionTower`` protocol with deterministic torch ops, and records calls."""

    def __init__(self, *, width: int = 16, out_dim: int = 12, heads: int = 2, num_layers: int = 4,
                 seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        g = torch.Generator().manual_seed(seed)

        def w(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) / math.sqrt(shape[0])).to(dtype)

        self.num_layers = num_layers
        self.grid = GRID
        self.tokens_per_frame = POOLED
        self.width, self.heads, self.dtype = width, heads, dtype
        self.weights = [
            {"q": w(width, width), "k": w(width, width), "v": w(width, width),
             "o": w(width, width), "up": w(width, 2 * width), "down": w(2 * width, width)}
            for _ in range(num_layers)
        ]
        self.proj_w = w(width, out_dim)
        self.proj_b = (0.1 * torch.randn(out_dim, generator=g)).to(dtype)
        self.calls: list[tuple[str, int, int, int | None]] = []  # (kind, layer, frames, chunk)
        self.last_pooled: torch.Tensor | None = None

    def _qkv(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f, n, c = h.shape
        wt = self.weights[i]
        hd = c // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(f, n, self.heads, hd).transpose(1, 2)  # [F,N,C] -> [F,H,N,hd]

        return split(h @ wt["q"]), split(h @ wt["k"]), split(h @ wt["v"])

    def _finish(self, i: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        f, n, c = h.shape
        wt = self.weights[i]
        o = o.transpose(1, 2).reshape(f, n, c)  # [F,H,N,hd] -> [F,N,C]
        h = h + 0.5 * (o @ wt["o"])
        return h + 0.25 * (torch.tanh(h @ wt["up"]) @ wt["down"])

    def layer(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        self.calls.append(("layer", i, hidden.shape[0], None))
        q, k, v = self._qkv(i, hidden)
        return self._finish(i, hidden, F.scaled_dot_product_attention(q, k, v))

    def layer_with_received(self, i: int, hidden: torch.Tensor,
                            chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        from earlytom_vllm.core import attention_with_received

        self.calls.append(("received", i, hidden.shape[0], chunk_frames))
        q, k, v = self._qkv(i, hidden)
        out, rsum = attention_with_received(q, k, v, chunk_frames=chunk_frames)
        n = hidden.shape[1]
        return self._finish(i, hidden, out), rsum / (self.heads * n)

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        f = hidden.shape[0]
        x = F.gelu(hidden @ self.proj_w + self.proj_b)  # [F, 729, C] -> [F, 729, D]
        d = x.shape[-1]
        x = x.view(f, GRID, GRID, d).permute(0, 3, 1, 2)  # [F, 729, D] -> [F, D, 27, 27]
        x = F.interpolate(x, size=(14, 14), mode="bilinear", align_corners=False)
        x = x.permute(0, 2, 3, 1).reshape(f, POOLED, d)  # [F, D, 14, 14] -> [F, 196, D]
        self.last_pooled = x
        return x


    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        from earlytom_vllm.core import pool_received

        return pool_received(received, GRID, 14)  # [F, 729] -> [F, 196]


def stock_tokens(tower: ToyTower, embeddings: torch.Tensor) -> torch.Tensor:
    """The stock pipeline: every layer on every frame, project, pool, flatten (no newline)."""
    h = embeddings
    for i in range(tower.num_layers):
        h = tower.layer(i, h)
    pooled = tower.project_and_pool(h)  # [T, 196, D]
    return pooled.reshape(-1, pooled.shape[-1])  # [T, 196, D] -> [T*196, D]


def embeddings_unrelated(t: int, width: int = 16, seed: int = 1,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, GRID * GRID, width, generator=g).to(dtype)  # [T, 729, C]


def embeddings_redundant(t: int, width: int = 16, seed: int = 2, noise: float = 1e-3,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, GRID * GRID, width, generator=g)
    return (base + noise * torch.randn(t, GRID * GRID, width, generator=g)).to(dtype)
