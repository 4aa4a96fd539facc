"""Section 2, merging within a segment: local-optimum pairwise merges, w = s_i / (s_i + s_{i+1}),
tau_seg = sim(first, last), m_{n-1} never emitted by default, output [first, merged..., last]."""

from __future__ import annotations

import pytest
import torch
from core_reference import (
    FAST,
    angle_video,
    apply_rows,
    cosd,
    random_groups,
    ref_merge_plan,
    sim_matrix,
    walk_video,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from earlytom_vllm.core import merge_frames, segment_frames


def tag(t: int) -> torch.Tensor:
    """received = a known function of the frame index: [T, 1] with value 10 t + 1."""
    return (10.0 * torch.arange(t, dtype=torch.float64) + 1.0).unsqueeze(1)


def blend(x: torch.Tensor, a: int, b: int, w: float) -> torch.Tensor:
    return w * x[a] + (1.0 - w) * x[b]


def assert_frames(got: torch.Tensor, expected: list[torch.Tensor], atol: float = 1e-12) -> None:
    assert got.shape[0] == len(expected), f"{got.shape[0]} frames, expected {len(expected)}"
    torch.testing.assert_close(got, torch.stack(expected).to(got.dtype), atol=atol, rtol=0)


# --- hand-worked examples (N = 1 token, D = 2 unit vectors: sim(i, j) = cos(angle_i - angle_j)) --

def test_example_merge_first_pair_then_last_pair_emits_m_i():
    # angles: first 0, m0 10, m1 15, m2 35, m3 40, last 50
    # s0 = cos5, s1 = cos20, s2 = cos5, tau_seg = cos50 = 0.643
    # i=0: s0 > tau_seg and s0 > s1 -> merge(m0, m1), w = cos5/(cos5+cos20); i = 2
    # i=2: last pair, s2 > tau_seg -> w = 1.0 emits m2; m3 never emitted
    x = angle_video([0, 10, 15, 35, 40, 50])
    r = tag(6)
    w = cosd(5) / (cosd(5) + cosd(20))
    h, rec = merge_frames(x, [(0, 5)], r)
    assert_frames(h, [x[0], blend(x, 1, 2, w), x[3], x[5]])
    assert_frames(rec, [r[0], blend(r, 1, 2, w), r[3], r[5]])
    assert torch.equal(h[0], x[0]) and torch.equal(h[-1], x[5])  # ends kept as they are
    assert torch.equal(h[2], x[3])


def test_example_weight_far_from_one_half():
    # angles: first 0, m0 0, m1 30, m2 110, m3 120, last 170
    # s0 = cos30 = 0.866, s1 = cos80 = 0.174, s2 = cos10; tau_seg = cos170 = -0.985
    # merge(m0, m1) with w = 0.866 / (0.866 + 0.174) = 0.833; last pair emits m2
    x = angle_video([0, 0, 30, 110, 120, 170])
    r = tag(6)
    w = cosd(30) / (cosd(30) + cosd(80))
    assert 0.83 < w < 0.84
    h, rec = merge_frames(x, [(0, 5)], r)
    assert_frames(h, [x[0], blend(x, 1, 2, w), x[3], x[5]])
    assert_frames(rec, [r[0], blend(r, 1, 2, w), r[3], r[5]])


def test_example_merge_needs_a_local_optimum():
    # angles: first 0, m0 10, m1 20, m2 22, m3 40, last 50
    # s0 = cos10 < s1 = cos2 -> emit m0; i=1: s1 > tau_seg = cos50 and s1 > s2 = cos18
    # -> merge(m1, m2), w = cos2/(cos2+cos18); i = 3 ends the walk; m3 never emitted
    x = angle_video([0, 10, 20, 22, 40, 50])
    r = tag(6)
    w = cosd(2) / (cosd(2) + cosd(18))
    h, rec = merge_frames(x, [(0, 5)], r)
    assert_frames(h, [x[0], x[1], blend(x, 2, 3, w), x[5]])
    assert_frames(rec, [r[0], r[1], blend(r, 2, 3, w), r[5]])


def test_example_tau_seg_blocks_merges():
    # angles: first 0, m0 10, m1 12, m2 30, m3 33, last 1 -> tau_seg = cos1 = 0.99985
    # s0 = cos2, s1 = cos18, s2 = cos3: none exceeds tau_seg -> m0, m1, m2 emitted, m3 dropped
    x = angle_video([0, 10, 12, 30, 33, 1])
    r = tag(6)
    h, rec = merge_frames(x, [(0, 5)], r)
    assert_frames(h, [x[0], x[1], x[2], x[3], x[5]])
    assert_frames(rec, [r[0], r[1], r[2], r[3], r[5]])
    for k, src in enumerate([0, 1, 2, 3, 5]):
        assert torch.equal(h[k], x[src])  # nothing blended: bit-exact copies


def test_example_length_five_merge_consumes_to_the_end():
    # angles: first 0, m0 10, m1 12, m2 30, last 40; n = 3
    # i=0 (a next pair exists): s0 = cos2 > tau_seg = cos40 and > s1 = cos18 -> merge; i = 2 ends
    x = angle_video([0, 10, 12, 30, 40])
    r = tag(5)
    w = cosd(2) / (cosd(2) + cosd(18))
    h, rec = merge_frames(x, [(0, 4)], r)
    assert_frames(h, [x[0], blend(x, 1, 2, w), x[4]])
    assert_frames(rec, [r[0], blend(r, 1, 2, w), r[4]])


def test_example_length_four_drops_the_last_middle_either_way():
    # n = 2: only the last pair. s0 > tau_seg (cos2 > cos20) -> w = 1 emits m0; m1 never emitted
    x = angle_video([0, 10, 12, 20])
    h, _ = merge_frames(x, [(0, 3)])
    assert_frames(h, [x[0], x[1], x[3]])
    # s0 <= tau_seg (cos30 < cos1): emit m0; m1 never emitted
    x = angle_video([0, 10, 40, 1])
    h, _ = merge_frames(x, [(0, 3)])
    assert_frames(h, [x[0], x[1], x[3]])


def test_segments_of_three_or_fewer_frames_are_unchanged():
    x = angle_video([0, 1, 2, 50, 51, 90, 0, 1, 2])
    r = tag(9)
    groups = [(0, 2), (3, 4), (5, 5), (6, 8)]
    h, rec = merge_frames(x, groups, r)
    assert torch.equal(h, x)
    assert torch.equal(rec, r)


def test_output_order_over_several_segments():
    # segment A = the first example (6 frames -> 4), B = length 4 (-> 3), C = length 2 (as is)
    a = [0, 10, 15, 35, 40, 50]
    b = [200, 210, 212, 220]
    c = [300, 301]
    x = angle_video(a + b + c)
    r = tag(12)
    w = cosd(5) / (cosd(5) + cosd(20))
    h, rec = merge_frames(x, [(0, 5), (6, 9), (10, 11)], r)
    assert_frames(h, [x[0], blend(x, 1, 2, w), x[3], x[5], x[6], x[7], x[9], x[10], x[11]])
    assert_frames(rec, [r[0], blend(r, 1, 2, w), r[3], r[5], r[6], r[7], r[9], r[10], r[11]])


def test_identical_frames_32_max_window_6():
    # segments of 5 identical frames: all s equal -> no strict local optimum, no merge;
    # m_{n-1} (the 4th frame of each segment) dropped: 6 segments * 4 + the final pair (30, 31)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, 4, generator=g).expand(32, 5, 4).contiguous()
    groups = segment_frames(x, 0.5, 6, 0.9)
    assert groups == [(s, s + 4) for s in range(0, 30, 5)] + [(30, 31)]
    r = tag(32).expand(32, 5).contiguous()
    h, rec = merge_frames(x, groups, r)
    keep = [i for s in range(0, 30, 5) for i in (s, s + 1, s + 2, s + 4)] + [30, 31]
    assert h.shape[0] == 26
    assert torch.equal(rec, r[keep])
    assert torch.equal(h, x[keep])


# --- keep_last_middle -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "angles",
    [
        [0, 10, 15, 35, 40, 50],  # last pair merges (w = 1) in the released rule
        [0, 10, 12, 20],  # length 4, last pair merges (w = 1)
        [0, 10, 12, 30, 33, 1],  # last pair does not merge
        [0, 10, 20, 22, 40, 50],  # walk ends by a merge that reaches m_{n-2}
        [0, 10, 12, 30, 40],  # length 5, merge reaches m_{n-2}
        [0, 10, 40, 1],  # length 4, no merge
    ],
)
def test_keep_last_middle_emits_m_last_unchanged(angles):
    """Default: m_{n-1} is never emitted. keep_last_middle=True: 'the variant that keeps it' - the
    same walk, and m_{n-1} emitted as it is before the last frame."""
    x = angle_video(angles)
    t = len(angles)
    r = tag(t)
    m = sim_matrix(x)
    rows, _, _ = ref_merge_plan(lambda i, j: m[i][j], [(0, t - 1)])
    default, _rec_default = merge_frames(x, [(0, t - 1)], r)
    assert_frames(default, list(apply_rows(x, rows)))
    assert not any(torch.equal(row, x[t - 2]) for row in default)  # m_{n-1} is gone

    kept, rec_kept = merge_frames(x, [(0, t - 1)], r, keep_last_middle=True)
    rows_k, _, _ = ref_merge_plan(lambda i, j: m[i][j], [(0, t - 1)], keep_last_middle=True)
    assert kept.shape[0] == default.shape[0] + 1, "keep_last_middle must add exactly m_{n-1}"
    assert torch.equal(kept[-2], x[t - 2]), "m_{n-1} must be emitted as it is"
    assert_frames(kept, list(apply_rows(x, rows_k)))
    assert_frames(rec_kept, list(apply_rows(r, rows_k)))


# --- properties against the spec reference -----------------------------------------------------

@st.composite
def videos_and_groups(draw, max_t=20):
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**16))
    step = draw(st.floats(0.02, 1.2))
    cuts = draw(st.lists(st.booleans(), min_size=t - 1, max_size=t - 1))
    # favour long segments: drop most cuts
    keep_cut = draw(st.lists(st.integers(0, 3), min_size=t - 1, max_size=t - 1))
    cuts = [c and k == 0 for c, k in zip(cuts, keep_cut, strict=False)]
    return walk_video(t, n=2, d=3, step=step, seed=seed), random_groups(cuts)


@FAST
@given(videos_and_groups())
def test_merge_matches_spec_reference(case):
    x, groups = case
    m = sim_matrix(x)
    rows, compared, denominators = ref_merge_plan(lambda i, j: m[i][j], groups)
    assume(all(abs(a - b) > 1e-9 for a, b in compared))
    assume(all(d > 1e-6 for d in denominators))
    r = torch.rand(x.shape[0], x.shape[1], dtype=torch.float64) + 0.5
    h, rec = merge_frames(x, groups, r)
    assert h.dtype == x.dtype and rec.dtype == r.dtype
    assert h.shape[0] == len(rows)
    torch.testing.assert_close(h, apply_rows(x, rows), atol=1e-10, rtol=0)
    torch.testing.assert_close(rec, apply_rows(r, rows), atol=1e-10, rtol=0)
    # unblended rows are bit-exact copies
    for k, (a, _, w) in enumerate(rows):
        if w == 1.0:
            assert torch.equal(h[k], x[a]) and torch.equal(rec[k], r[a])


@FAST
@given(videos_and_groups(), st.integers(1, 24))
def test_min_frames_is_never_undercut(case, min_frames):
    x, groups = case
    t = x.shape[0]
    free, _ = merge_frames(x, groups)
    h, rec = merge_frames(x, groups, x[..., 0].clone(), min_frames=min_frames)
    assert h.shape[0] >= min(min_frames, t)
    # stops merging once T' would fall below min_frames: exactly max(min_frames, unconstrained)
    assert h.shape[0] == min(t, max(min_frames, free.shape[0]))
    if free.shape[0] >= min_frames:
        assert torch.equal(h, free)
    if min_frames >= t:
        assert torch.equal(h, x)
    # received went through exactly the same keep/merge/drop ops and weights
    torch.testing.assert_close(rec, h[..., 0], atol=1e-12, rtol=0)


@FAST
@given(videos_and_groups(), st.booleans())
def test_received_follows_hidden_exactly(case, keep_last_middle):
    """Merging is linear per frame, so received = hidden[..., 0] must stay hidden[..., 0]."""
    x, groups = case
    r = x[..., 0].clone()  # [T, N]
    h, rec = merge_frames(x, groups, r, keep_last_middle=keep_last_middle)
    assert rec.shape == h.shape[:2]
    torch.testing.assert_close(rec, h[..., 0], atol=1e-12, rtol=0)


def test_min_frames_hand_example():
    x = angle_video([0, 10, 15, 35, 40, 50])  # 6 -> 4 frames unconstrained
    assert merge_frames(x, [(0, 5)])[0].shape[0] == 4
    assert merge_frames(x, [(0, 5)], min_frames=4)[0].shape[0] == 4
    assert merge_frames(x, [(0, 5)], min_frames=5)[0].shape[0] == 5
    assert torch.equal(merge_frames(x, [(0, 5)], min_frames=6)[0], x)
    assert torch.equal(merge_frames(x, [(0, 5)], min_frames=9)[0], x)


def test_received_none_passes_through():
    x = angle_video([0, 10, 15, 35, 40, 50])
    h, rec = merge_frames(x, [(0, 5)])
    assert rec is None and h.shape[0] == 4


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"hidden": torch.zeros(6, 2)}, "hidden"),
     ({"hidden": torch.zeros(6, 1, 2, 1)}, "hidden"),
     ({"hidden": torch.zeros(6, 1, 2, dtype=torch.int32)}, "hidden"),
     ({"received": torch.zeros(6)}, "received"),
     ({"received": torch.zeros(5, 1)}, "received"),
     ({"received": torch.zeros(6, 2)}, "received"),
     ({"groups": [(0, 4)]}, "groups"),
     ({"groups": [(0, 2), (4, 5)]}, "groups"),
     ({"groups": [(0, 3), (3, 5)]}, "groups"),
     ({"groups": [(0, 6)]}, "groups"),
     ({"groups": [(3, 5), (0, 2)]}, "groups"),
     ({"groups": [(0, 1, 2), (3, 5)]}, "groups"),
     ({"min_frames": 0}, "min_frames"),
     ({"min_frames": 2.0}, "min_frames"),
     ({"min_frames": True}, "min_frames")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"hidden": angle_video([0, 10, 15, 35, 40, 50]), "groups": [(0, 5)], "received": None,
            "min_frames": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        merge_frames(args["hidden"], args["groups"], args["received"],
                     min_frames=args["min_frames"])
