"""float64 / float32 / bfloat16 / float16 inputs work; Stage I decisions are made in float32 or
better (a low-precision video decides exactly like its float32 upcast)."""

from __future__ import annotations

import pytest
import torch
from core_reference import (
    FAST,
    POOLED,
    angle_video,
    ref_segment,
    scene_video,
    sim_matrix,
    walk_video,
)
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm.core import merge_frames, segment_frames, select_tokens

LOW = [torch.bfloat16, torch.float16]
ALL = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", ALL)
def test_scene_cuts_in_every_dtype(dtype):
    lengths = [3, 5, 1, 4, 2]
    video = scene_video(lengths, seed=5).to(dtype)
    groups = segment_frames(video, 0.5, 6, 0.9)
    assert groups == [(0, 2), (3, 7), (8, 8), (9, 12), (13, 14)]
    h, rec = merge_frames(video, groups, torch.rand(15, video.shape[1]).to(dtype))
    assert h.dtype == dtype and rec.dtype == dtype
    assert h.shape[0] <= 15 - 2  # the 5-frame and 4-frame scenes each lose at least one frame


@FAST
@given(st.integers(2, 20), st.integers(0, 2**16), st.floats(0.05, 0.8),
       st.sampled_from(LOW), st.floats(0.1, 0.95))
def test_low_precision_decides_like_its_float32_upcast(t, seed, step, dtype, tau):
    video = walk_video(t, n=6, d=8, step=step, seed=seed).to(dtype)
    up = video.float()
    groups = segment_frames(video, tau, 6, 0.9)
    assert groups == segment_frames(up, tau, 6, 0.9)
    h, rec = merge_frames(video, groups, video[..., 0].clone())
    h_up, _rec_up = merge_frames(up, groups, up[..., 0].clone())
    assert h.dtype == dtype and rec.dtype == dtype
    assert h.shape == h_up.shape
    # the blend itself may round once to the low-precision dtype
    torch.testing.assert_close(h.float(), h_up, atol=0, rtol=2 ** -7)


def test_float16_large_magnitudes_do_not_overflow_the_similarity():
    # |x| = 1000: x.x = 1e6 overflows float16 (max 65504); cosine must still be computed right
    angles = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    video = (1000.0 * angle_video(angles)).expand(10, 4, 2).contiguous()
    m = sim_matrix(video)
    expected, _ = ref_segment(lambda i, j: m[i][j], 10, 0.9, 100, 0.9)
    assert expected == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert segment_frames(video.half(), 0.9, 100, 0.9) == expected
    assert segment_frames(video.bfloat16(), 0.9, 100, 0.9) == expected


def test_tiny_magnitudes_in_low_precision():
    # |x| = 1e-3: x.x = 1e-6 is subnormal-ish in float16; cosines must still be right
    video = (1e-3 * angle_video([0, 10, 20, 30, 40, 50, 60, 70, 80, 90])).expand(10, 4, 2)
    assert segment_frames(video.contiguous().half(), 0.9, 100, 0.9) == [(0, 2), (3, 5), (6, 8),
                                                                      (9, 9)]


@pytest.mark.parametrize("fdtype", ALL)
@pytest.mark.parametrize("rdtype", ALL)
def test_select_tokens_dtypes(fdtype, rdtype):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, POOLED, 3, generator=g).to(fdtype)
    received = torch.rand(4, POOLED, generator=g).to(rdtype)
    tokens, index = select_tokens(features, received, [(0, 3)], 4 * 20)
    assert tokens.dtype == fdtype and tokens.shape == (80, 3)
    assert torch.equal(tokens, features.reshape(-1, 3)[index])
    # dynamic frame 0 keeps its top-20 by the (exactly upcast) attention values
    s = received[0].double()
    kept = index[index < POOLED]
    assert torch.equal(torch.sort(s[kept], descending=True).values,
                       torch.sort(s, descending=True).values[:20])


@pytest.mark.parametrize("dtype", LOW)
def test_float32_received_with_low_precision_hidden(dtype):
    video = walk_video(12, n=4, d=6, step=0.1, seed=3).to(dtype)
    up = video.float()
    groups = segment_frames(video, 0.5, 6, 0.9)
    received = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
    h, rec = merge_frames(video, groups, received)
    _, rec_up = merge_frames(up, groups, received)
    assert h.shape[0] < 12  # something was merged or dropped
    assert rec.dtype == torch.float32
    assert torch.equal(rec, rec_up)  # same plan, same weights, received kept in float32
