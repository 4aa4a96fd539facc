"""Section 2, segmentation: streaming EMA against the segment's FIRST frame, s reset to 1.0,
close before frame i when s < tau or i - start + 1 >= max_window."""

from __future__ import annotations

import math

import pytest
import torch
from core_reference import (
    FAST,
    angle_video,
    cosd,
    ref_segment,
    scene_video,
    sim_matrix,
    walk_video,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from earlytom_vllm.core import segment_frames, similarity_band


def covers(groups, t):
    flat = [i for a, b in groups for i in range(a, b + 1)]
    return flat == list(range(t)) and all(a <= b for a, b in groups)


def test_identical_frames_split_only_by_max_window():
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(1, 7, 5, generator=g)
    video = frame.expand(32, 7, 5).contiguous()
    groups = segment_frames(video, tau=0.5, max_window=6, ema=0.9)
    # max_window = 6: a segment holds at most 5 frames
    assert groups == [(0, 4), (5, 9), (10, 14), (15, 19), (20, 24), (25, 29), (30, 31)]


@pytest.mark.parametrize(("max_window", "t"), [(2, 5), (3, 7), (6, 32), (8, 20), (40, 32)])
def test_max_window_rule_on_identical_frames(max_window, t):
    video = torch.ones(t, 3, 4)
    groups = segment_frames(video, tau=0.0, max_window=max_window, ema=0.9)
    size = max_window - 1
    expected = [(s, min(s + size, t) - 1) for s in range(0, t, size)]
    assert groups == expected


def test_single_frame_video():
    assert segment_frames(torch.randn(1, 4, 3), 0.5, 6, 0.9) == [(0, 0)]


@FAST
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.integers(2, 8),
       st.integers(0, 2**16))
def test_hard_scene_cuts_split_exactly_at_the_cuts(lengths, max_window, seed):
    video = scene_video(lengths, seed=seed).float()
    groups = segment_frames(video, tau=0.5, max_window=max_window, ema=0.9)
    expected = []
    start = 0
    size = max_window - 1
    for length in lengths:  # each scene, cut into pieces of at most max_window - 1 frames
        for s in range(start, start + length, size):
            expected.append((s, min(s + size, start + length) - 1))
        start += length
    assert groups == expected


def test_scene_video_has_the_intended_similarities():
    video = scene_video([3, 4])
    m = sim_matrix(video)
    assert m[0][2] > 0.99 and m[3][6] > 0.99
    assert abs(m[2][3]) < 0.05 and abs(m[0][6]) < 0.05


def test_slow_drift_ref_is_the_first_frame_not_the_previous_one():
    # Frames drift 10 degrees per step: the previous frame is always cos(10) = 0.985 similar,
    # but the segment's first frame drifts away. tau = 0.9, ema = 0.9:
    #   i=1: s = 0.9 cos10 + 0.1 * 1        = 0.98633
    #   i=2: s = 0.9 cos20 + 0.1 * 0.98633  = 0.94436
    #   i=3: s = 0.9 cos30 + 0.1 * 0.94436  = 0.87386 < 0.9 -> close (0, 2)
    video = angle_video([10 * t for t in range(10)])
    s1 = 0.9 * cosd(10) + 0.1
    s2 = 0.9 * cosd(20) + 0.1 * s1
    s3 = 0.9 * cosd(30) + 0.1 * s2
    assert s2 > 0.9 > s3
    groups = segment_frames(video, tau=0.9, max_window=100, ema=0.9)
    assert groups == [(0, 2), (3, 5), (6, 8), (9, 9)]
    # comparing with the previous frame would never split (until max_window)
    assert 0.9 * cosd(10) + 0.1 > 0.9


def test_ema_smoothing_matters():
    # ema = 0.5, tau = 0.7, drift 10 degrees per step.
    # s: 0.99240, 0.96604, 0.91603, 0.84104, 0.74192, 0.62096 (< 0.7 at i = 6) -> close (0, 5)
    # (without smoothing, cos50 = 0.643 < 0.7 would close at i = 5)
    s, trace = 1.0, []
    for i in range(1, 7):
        s = 0.5 * cosd(10 * i) + 0.5 * s
        trace.append(s)
    assert min(trace[:5]) > 0.7 > trace[5]
    assert cosd(50) < 0.7
    video = angle_video([10 * t for t in range(8)])
    assert segment_frames(video, tau=0.7, max_window=100, ema=0.5) == [(0, 5), (6, 7)]
    assert segment_frames(video, tau=0.7, max_window=100, ema=1.0) == [(0, 4), (5, 7)]


def test_s_is_reset_to_one_and_ref_moves_to_the_new_segment():
    # ema = 0.5, tau = 0.6. Frame 1 is orthogonal to frame 0: s = 0.5*0 + 0.5*1 = 0.5 -> cut.
    # New segment starts at frame 1 with s = 1.0; frame 2 is 60 degrees from frame 1:
    #   s = 0.5*cos60 + 0.5*1.0 = 0.75 >= 0.6 -> no cut.
    # (Without the reset, s = 0.5*0.5 + 0.5*0.5 = 0.5 < 0.6 would cut; keeping frame 0 as ref,
    #  sim = cos150 < 0 would cut.)
    video = angle_video([0, 90, 150])
    assert segment_frames(video, tau=0.6, max_window=6, ema=0.5) == [(0, 0), (1, 2)]


def test_close_uses_strict_less_than_tau():
    # identical frames: sim = 1 exactly for the unit vector (1, 0); with ema = 1, s = 1.0 = tau
    video = angle_video([0, 0, 0, 0])
    assert segment_frames(video, tau=1.0, max_window=6, ema=1.0) == [(0, 3)]
    assert segment_frames(video, tau=0.0, max_window=6, ema=1.0) == [(0, 3)]
    # opposite directions: sim = -1; tau = 0 -> s = -1 < 0 -> cut
    video = angle_video([0, 180, 180])
    assert segment_frames(video, tau=0.0, max_window=6, ema=1.0) == [(0, 0), (1, 2)]


@FAST
@given(st.integers(1, 24), st.floats(0.05, 1.5), st.integers(0, 2**16),
       st.floats(0.0, 1.0), st.integers(2, 9), st.floats(0.05, 1.0))
def test_segmentation_matches_spec_reference(t, step, seed, tau, max_window, ema):
    video = walk_video(t, step=step, seed=seed)
    m = sim_matrix(video)
    expected, trace = ref_segment(lambda i, j: m[i][j], t, tau, max_window, ema)
    assume(all(abs(s - tau) > 1e-7 for s in trace))
    groups = segment_frames(video, tau=tau, max_window=max_window, ema=ema)
    assert groups == expected
    assert covers(groups, t)
    assert all(b - a + 1 <= max_window - 1 for a, b in groups)
    assert all(isinstance(a, int) and isinstance(b, int) for a, b in groups)


@FAST
@given(st.integers(2, 16), st.integers(0, 2**16), st.integers(1, 6))
def test_similarity_band_matches_reference(t, seed, max_offset):
    video = walk_video(t, step=0.7, seed=seed)
    m = sim_matrix(video)
    band = similarity_band(video, max_offset)
    for o in range(1, min(max_offset, t - 1) + 1):
        assert band[o] == pytest.approx([m[i][i + o] for i in range(t - o)], abs=1e-12)


def test_similarity_is_position_wise_mean_of_cosines():
    # token 0: same direction (cos 1); token 1: orthogonal (cos 0); different norms
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    b = torch.tensor([[[5.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    band = similarity_band(torch.cat([a, b]), 1)
    assert band[1] == pytest.approx([0.5], abs=1e-15)
    # not the cosine of the flattened frames, not a cosine of mean tokens
    flat = torch.nn.functional.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0)
    assert not math.isclose(float(flat), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"hidden": torch.zeros(4, 3)}, "hidden"),
     ({"hidden": torch.zeros(2, 4, 3, 1)}, "hidden"),
     ({"hidden": torch.zeros(4, 3, 2, dtype=torch.int64)}, "hidden"),
     ({"hidden": torch.zeros(0, 3, 2)}, "hidden"),
     ({"tau": -0.1}, "tau"), ({"tau": 1.5}, "tau"), ({"tau": math.nan}, "tau"),
     ({"tau": "abc"}, "tau"),
     ({"max_window": 1}, "max_window"), ({"max_window": 6.0}, "max_window"),
     ({"max_window": True}, "max_window"),
     ({"ema": 0.0}, "ema"), ({"ema": 1.5}, "ema"), ({"ema": math.nan}, "ema"),
     ({"ema": "abc"}, "ema")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"hidden": torch.randn(4, 3, 2), "tau": 0.5, "max_window": 6, "ema": 0.9}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        segment_frames(args["hidden"], args["tau"], args["max_window"], args["ema"])
