"""Section 4: budget(T, r) = T * ceil(196 r) exactly (float guard), and the quota spread."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from core_reference import FAST, POOLED, ref_quota
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import (
    allocate_quota,
    min_frames_for_budget,
    tokens_per_frame_kept,
    video_token_budget,
    video_token_count,
)


def exact_ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


# (the ratio the user meant, as an exact rational; the float they pass)
RATIOS: list[tuple[Fraction, float]] = (
    [(Fraction(k, 196), k / 196) for k in range(1, 197)]
    + [(Fraction(f"0.{p:02d}"), float(f"0.{p:02d}")) for p in range(1, 100)]
    + [(Fraction(1), 1.0)]
    + [(Fraction(f"0.{p:03d}"), float(f"0.{p:03d}")) for p in range(1, 1000, 7)]
)


def test_count_is_the_budget_when_compressing_and_everything_otherwise():
    for t, n in ((1, 196), (32, 196), (8, 256), (3, 1)):
        assert video_token_count(t, EarlyTomConfig(retain_ratio=0.1), n) == \
            video_token_budget(t, 0.1, n)
        for off in ({"enabled": False}, {"method": "none"}, {"retain_ratio": 1.0}):
            assert video_token_count(t, EarlyTomConfig(**off), n) == t * n


def test_counting_needs_a_tokens_per_frame():
    with pytest.raises(TypeError):
        video_token_budget(32, 0.1)  # no model-independent default: the model supplies it


def test_budget_exact_for_every_frame_count_and_grid_ratio():
    bad = []
    for exact, r in RATIOS:
        per_frame = exact_ceil(196 * exact)
        for t in range(1, 65):
            got = video_token_budget(t, r, POOLED)
            if got != t * per_frame:
                bad.append((t, r, got, t * per_frame))
    assert not bad, f"{len(bad)} mismatches, e.g. (T, r, got, expected) = {bad[:5]}"


def test_float_guard_53_over_196():
    r = 53 / 196
    assert 196 * r > 53  # the float trap the spec describes: 53.00000000000001
    assert math.ceil(196 * r) == 54
    assert tokens_per_frame_kept(r, POOLED) == 53
    for t in (1, 2, 32, 64):
        assert video_token_budget(t, r, POOLED) == 53 * t


@pytest.mark.parametrize(("r", "per_frame"), [(0.1, 20), (0.15, 30), (0.2, 40), (0.25, 49),
                                               (1.0, 196), (0.5, 98), (0.75, 147), (0.01, 2),
                                               (1 / 196, 1), (195 / 196, 195)])
def test_budget_known_values(r, per_frame):
    assert video_token_budget(32, r, POOLED) == 32 * per_frame
    assert video_token_budget(1, r, POOLED) == per_frame


def test_budget_excludes_the_newline_and_defaults_to_196_tokens_per_frame():
    assert video_token_budget(32, 1.0, POOLED) == 32 * 196  # not 32*196 + 1
    assert video_token_budget(32, 0.1, 196) == video_token_budget(32, 0.1, POOLED)


@FAST
@given(st.integers(1, 10_000).flatmap(lambda b: st.tuples(st.integers(1, b), st.just(b))),
       st.integers(1, 64))
def test_budget_exact_for_rationals(ab, t):
    a, b = ab
    exact = Fraction(a, b)
    assert video_token_budget(t, a / b, POOLED) == t * exact_ceil(196 * exact)


@FAST
@given(st.integers(1, 1000), st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(1, n),
                                                                              st.just(n))),
       st.integers(1, 16))
def test_budget_with_other_tokens_per_frame(n, ab, t):
    a, b = ab
    assert video_token_budget(t, a / b, n) == t * exact_ceil(n * Fraction(a, b))


@FAST
@given(st.floats(min_value=0.0, max_value=1.0, exclude_min=True), st.integers(1, 64))
def test_budget_bounds_for_any_float_ratio(r, t):
    b = video_token_budget(t, r, POOLED)
    assert t <= b <= t * 196
    assert b % t == 0
    # within the guard's 1e-9 tolerance of the exact ceiling of the float's value
    exact = Fraction(r) * 196
    per = b // t
    assert per >= 1
    assert per == exact_ceil(exact) or (abs(exact - round(exact)) <= Fraction(1, 10**9)
                                        and per == round(exact)) or exact <= Fraction(1, 10**9)


@pytest.mark.parametrize("frames", [0, -1, 1.0, 2.5, "3", None, True, False])
def test_bad_frame_count_names_num_frames(frames):
    with pytest.raises(ValueError, match="num_frames"):
        video_token_budget(frames, 0.1, POOLED)


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, 1.0000001, math.nan, math.inf, "abc", "0.1",
                                   None, True, False])
def test_bad_ratio_names_retain_ratio(ratio):
    with pytest.raises(ValueError, match="retain_ratio"):
        video_token_budget(4, ratio, POOLED)


@FAST
@given(st.integers(1, 100_000))
def test_min_frames_for_budget_is_ceil_budget_over_196(budget):
    assert min_frames_for_budget(budget, POOLED) == exact_ceil(Fraction(budget, 196))


@FAST
@given(st.lists(st.booleans(), min_size=1, max_size=40).flatmap(
    lambda dyn: st.tuples(st.just(dyn), st.integers(1, 196 * len(dyn)))))
def test_allocate_quota_matches_spec(case):
    dyn, budget = case
    got = allocate_quota(budget, torch.tensor(dyn, dtype=torch.bool), POOLED)
    assert got.tolist() == ref_quota(budget, dyn)
    assert int(got.sum()) == budget
    assert int(got.max()) <= 196


def test_allocate_quota_hand_example():
    # 7 frames, 3 dynamic (0, 3, 6); budget 7*20 + 5 -> each 20, +1 to 0, 3, 6, then 1, 2
    dyn = torch.tensor([True, False, False, True, False, False, True])
    assert allocate_quota(145, dyn, POOLED).tolist() == [21, 21, 21, 21, 20, 20, 21]


def test_allocate_quota_rejects_overfull_budget():
    with pytest.raises(ValueError, match="budget"):
        allocate_quota(3 * 196 + 1, torch.ones(3, dtype=torch.bool), POOLED)
