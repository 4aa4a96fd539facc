"""Stage I: segment a video's frames and merge redundant ones, inside the vision encoder.

All similarities a call needs are computed in one batched op on the device and copied to the host
once; the (tiny, sequential) segmentation and merge decisions then run on Python floats, and the
resulting plan is applied to the hidden states with one gather and one blend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Groups = list[tuple[int, int]]


def _decision_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32-or-better for decisions (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def _check_video(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [T, N, D] tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one frame and one token, got {tuple(x.shape)}")


def similarity_band(hidden: torch.Tensor, max_offset: int) -> list[list[float]]:
    """Position-wise cosine similarity of frame pairs up to ``max_offset`` apart.

    ``sim(a, b)`` = mean over token positions j of cos(a[j], b[j]).

    Args:
        hidden: ``[T, N, D]``.
    Returns:
        ``band[o][i] = sim(frame i, frame i + o)`` for 1 <= o <= max_offset (``band[0]`` is empty),
        as host floats. One device-to-host copy.
    """
    t = hidden.shape[0]
    max_offset = min(max_offset, t - 1)
    if max_offset < 1:
        return [[]]
    unit = torch.nn.functional.normalize(hidden.to(_decision_dtype(hidden.dtype)), dim=-1)
    rows = []
    for o in range(1, max_offset + 1):  # at most max_window - 1 offsets, never per frame
        # [T-o, N, D] . [T-o, N, D] -> [T-o, N] -> [T-o]. einsum "->tn" is a batched matmul
        # (no elementwise product materialised): ~2x faster than vecdot here, and ~10x faster
        # than contracting N as well ("->t"), which takes a slow reduction path on CPU.
        rows.append(torch.einsum("tnd,tnd->tn", unit[:-o], unit[o:]).mean(dim=-1))
    flat = torch.cat(rows).cpu().tolist()  # the one host sync
    band: list[list[float]] = [[]]
    pos = 0
    for o in range(1, max_offset + 1):
        band.append(flat[pos : pos + t - o])
        pos += t - o
    return band


def _segment_from_band(band: list[list[float]], t: int, tau: float, max_window: int,
                       ema: float) -> Groups:
    groups: Groups = []
    start, s = 0, 1.0
    for i in range(1, t):
        s = ema * band[i - start][start] + (1.0 - ema) * s  # ref = first frame of the segment
        if s < tau or i - start + 1 >= max_window:
            groups.append((start, i - 1))
            start, s = i, 1.0
    groups.append((start, t - 1))
    return groups


def _check_segment_args(tau: float, max_window: int, ema: float) -> None:
    for name, value, lo_open in (("tau", tau, False), ("ema", ema, True)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        lo_ok = value > 0.0 if lo_open else value >= 0.0
        if not (lo_ok and value <= 1.0):  # also rejects NaN
            raise ValueError(f"{name} must be in {'(' if lo_open else '['}0, 1], got {value!r}")
    if isinstance(max_window, bool) or not isinstance(max_window, int) or max_window < 2:
        raise ValueError(f"max_window must be an integer >= 2, got {max_window!r}")


def segment_frames(hidden: torch.Tensor, tau: float, max_window: int, ema: float) -> Groups:
    """Split frames into temporal segments (streaming EMA against the segment's first frame).

    Args:
        hidden: ``[T, N, D]`` one video's hidden states.
    Returns:
        Inclusive ``(start, end)`` pairs covering ``0..T-1`` in order.
    """
    _check_video("hidden", hidden)
    _check_segment_args(tau, max_window, ema)
    t = hidden.shape[0]
    band = similarity_band(hidden, max_window - 1)
    return _segment_from_band(band, t, float(tau), max_window, float(ema))


@dataclass(frozen=True)
class MergePlan:
    """Output frame k = ``weight[k] * x[first[k]] + (1 - weight[k]) * x[second[k]]``.

    Rows with ``blend[k]`` False are copied from ``x[first[k]]`` untouched (bit-exact).
    """

    first: list[int]
    second: list[int]
    weight: list[float]

    @property
    def blend(self) -> list[bool]:
        return [w != 1.0 for w in self.weight]

    @property
    def identity(self) -> bool:
        """True when the plan keeps every input frame as it is."""
        return self.first == list(range(len(self.first))) and not any(self.blend)

    def __len__(self) -> int:
        return len(self.first)


def check_groups(groups: Sequence[tuple[int, int]], t: int) -> Groups:
    out: Groups = []
    expect = 0
    for g in groups:
        if not isinstance(g, (tuple, list)) or len(g) != 2:
            raise ValueError(f"groups must be (start, end) pairs, got {g!r}")
        a, b = int(g[0]), int(g[1])
        if a != expect or b < a:
            raise ValueError(
                f"groups must cover frames 0..{t - 1} contiguously in order, got {list(groups)}"
            )
        out.append((a, b))
        expect = b + 1
    if expect != t:
        raise ValueError(f"groups must cover frames 0..{t - 1} contiguously in order, got {list(groups)}")
    return out


def plan_merge(band: list[list[float]], groups: Groups, *, min_frames: int = 1,
               keep_last_middle: bool = False) -> MergePlan:
    """Decide the merges (pure Python on host floats; see ``docs/method.md`` section 2).

    Every reduction (a pairwise merge, or dropping a segment's last middle frame) removes one frame;
    reductions are taken in temporal order and stop once the output would fall below ``min_frames``.
    """
    t = groups[-1][1] + 1
    budget = max(0, t - max(1, min_frames))  # reductions still allowed
    first: list[int] = []
    second: list[int] = []
    weight: list[float] = []

    def keep(i: int) -> None:
        first.append(i)
        second.append(i)
        weight.append(1.0)

    for start, end in groups:
        length = end - start + 1
        if length <= 3:
            for i in range(start, end + 1):
                keep(i)
            continue
        keep(start)
        mids = list(range(start + 1, end))  # m_0 .. m_{n-1}
        n = len(mids)
        s = [band[1][m] for m in mids[:-1]]  # s_j = sim(m_j, m_{j+1}), j < n-1
        tau_seg = band[length - 1][start]  # sim(first, last)
        i = 0
        while i < n - 1:
            if i + 1 < n - 1:  # a next pair exists
                if budget > 0 and s[i] > tau_seg and s[i] > s[i + 1]:
                    first.append(mids[i])
                    second.append(mids[i + 1])
                    denom = s[i] + s[i + 1]
                    # Cosine similarities may be negative; a non-positive sum has no meaningful
                    # weight, so keep m_i (the pair still counts as merged).
                    weight.append(s[i] / denom if denom > 0.0 else 1.0)
                    budget -= 1
                    i += 2
                else:
                    keep(mids[i])
                    i += 1
                continue
            # The last pair (i == n - 2). The released code "merges" it with w = 1.0, which
            # emits m_i either way; so it simply emits m_i.
            keep(mids[i])
            break
        # m_{n-1} is never consumed by a merge. The released code never emits it; the
        # keep_last_middle variant (and a spent reduction budget) keeps it unchanged.
        if keep_last_middle or budget == 0:
            keep(mids[n - 1])
        else:
            budget -= 1
        keep(end)
    return MergePlan(first, second, weight)


def apply_plan(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Apply a merge plan to ``[T, ...]`` (hidden states or received attention) -> ``[T', ...]``."""
    dev = x.device
    first = torch.tensor(plan.first, device=dev)
    out = x.index_select(0, first)  # [T', ...] kept rows copied bit-exact
    blend_rows = [k for k, b in enumerate(plan.blend) if b]
    if blend_rows:
        rows = torch.tensor(blend_rows, device=dev)
        a = x.index_select(0, torch.tensor([plan.first[k] for k in blend_rows], device=dev))
        b = x.index_select(0, torch.tensor([plan.second[k] for k in blend_rows], device=dev))
        ct = _decision_dtype(x.dtype)
        w = torch.tensor([plan.weight[k] for k in blend_rows], device=dev, dtype=ct)
        w = w.view(-1, *([1] * (x.ndim - 1)))  # [M] -> [M, 1, ...] to broadcast over frames
        mixed = w * a.to(ct) + (1.0 - w) * b.to(ct)
        out.index_copy_(0, rows, mixed.to(x.dtype))
    return out


def stage1(
    hidden: torch.Tensor,
    received: torch.Tensor | None,
    *,
    tau: float,
    max_window: int,
    ema: float,
    min_frames: int = 1,
    keep_last_middle: bool = False,
    refine: bool = False,
    with_sources: bool = False,
):
    """Stage I at one prune layer: :func:`segment_frames` then :func:`merge_frames`, sharing one
    similarity band (segments hold at most ``max_window - 1`` frames, so the offsets segmentation
    needs cover the merge's too). With ``refine``, the surviving frames are segmented once more.

    Returns ``(hidden [T', N, D], received [T', N] | None, refined groups | None)``, and with
    ``with_sources`` a fourth item: the :class:`MergePlan` applied (``plan.first``: for each
    output frame, the input frame it comes from, the earlier of a merged pair; an identity plan
    when nothing merged), so that other tensors of the same frames can follow the merge.
    """
    _check_video("hidden", hidden)
    _check_segment_args(tau, max_window, ema)
    _check_received(received, hidden)
    band = similarity_band(hidden, max_window - 1)
    groups = _segment_from_band(band, hidden.shape[0], float(tau), max_window, float(ema))
    hidden, received, plan = _merge(hidden, received, groups, band, min_frames,
                                    keep_last_middle)
    refined = None
    if refine:  # nothing merged: the same frames give the same groups (no second band)
        refined = groups if plan.identity else segment_frames(hidden, tau, max_window, ema)
    return (hidden, received, refined, plan) if with_sources else (hidden, received, refined)


def merge_frames(
    hidden: torch.Tensor,
    groups: Sequence[tuple[int, int]],
    received: torch.Tensor | None = None,
    *,
    min_frames: int = 1,
    keep_last_middle: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge redundant middle frames within each segment.

    Args:
        hidden: ``[T, N, D]``.
        groups: segments from :func:`segment_frames`.
        received: optional ``[T, N]`` received attention, transformed exactly like ``hidden``.
        min_frames: never return fewer frames than this.
        keep_last_middle: keep each segment's last middle frame (the released code drops it).
    Returns:
        ``(hidden [T', N, D], received [T', N] | None)``.
    """
    _check_video("hidden", hidden)
    _check_received(received, hidden)
    if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
        raise ValueError(f"min_frames must be an integer >= 1, got {min_frames!r}")
    hidden, received, _ = _merge(hidden, received, check_groups(groups, hidden.shape[0]), None,
                                 min_frames, keep_last_middle)
    return hidden, received


def _check_received(received: torch.Tensor | None, hidden: torch.Tensor) -> None:
    if received is not None and (received.ndim != 2
                                 or tuple(received.shape) != tuple(hidden.shape[:2])):
        raise ValueError(
            f"received must be [T, N] = {tuple(hidden.shape[:2])}, got {tuple(received.shape)}"
        )


def _merge(hidden: torch.Tensor, received: torch.Tensor | None, groups: Groups,
           band: list[list[float]] | None, min_frames: int, keep_last_middle: bool,
           ) -> tuple[torch.Tensor, torch.Tensor | None, MergePlan]:
    """Plan and apply the merges; ``band`` is computed here unless the caller has one.
    Returns the merged tensors and the plan (identity when nothing merged)."""
    longest = max(b - a + 1 for a, b in groups)
    if longest < 4 or min_frames >= hidden.shape[0]:
        # nothing can merge: no similarity needed
        t = hidden.shape[0]
        return hidden, received, MergePlan(list(range(t)), list(range(t)), [1.0] * t)
    if band is None:
        band = similarity_band(hidden, longest - 1)
    plan = plan_merge(band, groups, min_frames=min_frames, keep_last_middle=keep_last_middle)
    if plan.identity:  # segments long enough, but nothing merged: no copy
        return hidden, received, plan
    return (apply_plan(hidden, plan), None if received is None else apply_plan(received, plan),
            plan)
