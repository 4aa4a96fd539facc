"""Section 3 + 4: Stage II keeps exactly the budget; dynamic frames top-k, static frames one token
per contiguous raster window; quota budget // T' + remainder to dynamic, then static frames."""

from __future__ import annotations

import itertools

import pytest
import torch
from core_reference import FAST, POOLED, random_groups, ref_dynamic, ref_quota, ref_windows
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm.core import dynamic_mask, select_tokens

SCORE_MODES = ["random", "ties", "all_equal", "signed_zero", "extreme", "sink", "tiny", "negative"]


def make_scores(mode: str, t: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (t, POOLED)
    if mode == "random":
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    elif mode == "ties":
        x = torch.randint(0, 3, shape, generator=g).double()
    elif mode == "all_equal":
        x = torch.full(shape, 0.25, dtype=torch.float64)
    elif mode == "signed_zero":
        pick = torch.randint(0, 3, shape, generator=g)
        x = torch.where(pick == 0, -0.0, torch.where(pick == 1, 0.0, 1.0)).double()
        x[:, ::7] = -0.0  # plenty of -0.0 next to +0.0
    elif mode == "extreme":
        vals = torch.tensor([3.0e38, -3.0e38, 1e30, 1e-30, 1e-38, 0.0, 1.0], dtype=torch.float64)
        x = vals[torch.randint(0, len(vals), shape, generator=g)]
    elif mode == "sink":
        x = 1e-3 * torch.rand(shape, generator=g, dtype=torch.float64)
        x[:, :12] = 50.0 + torch.rand(t, 12, generator=g, dtype=torch.float64)  # top-left corner
    elif mode == "tiny":
        x = 1e-40 * torch.randint(1, 5, shape, generator=g).double()  # subnormal in float32
    elif mode == "negative":
        x = -torch.rand(shape, generator=g, dtype=torch.float64)
    else:  # pragma: no cover
        raise AssertionError(mode)
    return x.to(dtype)


def check_selection(features, received, groups, budget, tokens, index):
    """Every property the spec pins down, checked against a brute-force reference."""
    t, n, d = features.shape
    assert tokens.shape == (budget, d)
    assert tokens.dtype == features.dtype
    assert index.shape == (budget,)
    assert not index.is_floating_point()
    idx = index.tolist()
    assert all(0 <= i < t * n for i in idx)
    assert all(a < b for a, b in itertools.pairwise(idx)), "index must be strictly ascending"
    assert torch.equal(tokens, features.reshape(t * n, d)[index])

    dyn = ref_dynamic(groups, t)
    quota = ref_quota(budget, dyn)
    score = received.double()  # exact upcast; used only for comparisons
    per_frame = [[i % n for i in idx if i // n == f] for f in range(t)]
    assert [len(p) for p in per_frame] == quota, "per-frame quota differs from the spec"
    for f in range(t):
        kept = per_frame[f]
        k = quota[f]
        s = score[f]
        if dyn[f]:
            # keep its k highest-attention tokens (tie-robust: the kept values are the top k)
            top = torch.sort(s, descending=True).values[:k]
            kept_vals = torch.sort(s[kept], descending=True).values
            assert torch.equal(kept_vals, top), f"dynamic frame {f} is not its top-{k}"
            if len(set(s.tolist())) == n:  # distinct scores: the set itself is determined
                assert sorted(kept) == sorted(torch.topk(s, k).indices.tolist())
        else:
            windows = ref_windows(k, n)
            assert len(windows) == k
            for w in windows:
                inside = [p for p in kept if p in w]
                assert len(inside) == 1, f"static frame {f}: window {w} holds {len(inside)} picks"
                assert s[inside[0]] == s[list(w)].max(), f"static frame {f}: not the window max"


@st.composite
def selection_cases(draw, max_t=7):
    t = draw(st.integers(1, max_t))
    cuts = draw(st.lists(st.booleans(), min_size=t - 1, max_size=t - 1))
    groups = random_groups(cuts)
    budget = draw(st.one_of(st.integers(t, t * POOLED),
                            st.sampled_from([t, t * POOLED, t * 20, t * 20 + 1, t * POOLED - 1]))
                  .filter(lambda b: t <= b <= t * POOLED))
    mode = draw(st.sampled_from(SCORE_MODES))
    seed = draw(st.integers(0, 2**16))
    return t, groups, budget, mode, seed


@FAST
@given(selection_cases(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16,
                                           torch.float16]))
def test_select_tokens_properties(case, rdtype):
    t, groups, budget, mode, seed = case
    if rdtype in (torch.float16, torch.bfloat16) and mode in ("extreme", "tiny"):
        rdtype = torch.float32
    received = make_scores(mode, t, seed, rdtype)
    features = torch.randn(t, POOLED, 3, generator=torch.Generator().manual_seed(seed))
    tokens, index = select_tokens(features, received, groups, budget)
    check_selection(features, received, groups, budget, tokens, index)


@pytest.mark.parametrize("mode", SCORE_MODES)
@pytest.mark.parametrize("groups", [[(0, 0)], [(0, 4)], [(0, 1), (2, 2), (3, 6)],
                                    [(0, 2), (3, 4), (5, 5), (6, 9)]])
def test_select_tokens_every_mode_and_structure(mode, groups):
    t = groups[-1][1] + 1
    received = make_scores(mode, t, seed=t)
    features = torch.randn(t, POOLED, 4, dtype=torch.float64)
    for budget in (t, t * 20, t * 20 + 3, t * 49, t * POOLED - 1, t * POOLED):
        tokens, index = select_tokens(features, received, groups, budget)
        check_selection(features, received, groups, budget, tokens, index)


@pytest.mark.parametrize("fdtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_select_tokens_feature_dtypes(fdtype):
    groups = [(0, 3), (4, 4)]
    received = make_scores("random", 5, 1)
    features = torch.randn(5, POOLED, 6).to(fdtype)
    tokens, index = select_tokens(features, received, groups, 5 * 20)
    check_selection(features, received, groups, 5 * 20, tokens, index)


def test_dynamic_and_static_frames():
    # groups of <= 2 frames: all dynamic; longer groups: ends dynamic, inner frames static
    groups = [(0, 0), (1, 2), (3, 5), (6, 9)]
    expected = [True, True, True, True, False, True, True, False, False, True]
    assert ref_dynamic(groups, 10) == expected
    assert dynamic_mask(groups, 10).tolist() == expected


def test_quota_hand_example():
    # T' = 5, groups (0,4): frames 0 and 4 dynamic, 1..3 static. budget = 5*20 + 3:
    # 20 each, remainder 3 -> frame 0, frame 4 (dynamic), then frame 1 (first static)
    received = make_scores("random", 5, 0)
    features = torch.randn(5, POOLED, 2)
    _, index = select_tokens(features, received, [(0, 4)], 103)
    counts = torch.bincount(index // POOLED, minlength=5).tolist()
    assert counts == [21, 21, 20, 20, 21]


def test_static_windows_hand_example():
    # k = 3 windows of 196 tokens: 66, 65, 65 (the first 196 % 3 = 1 window is one longer)
    assert [len(w) for w in ref_windows(3)] == [66, 65, 65]
    assert [(w.start, w.stop) for w in ref_windows(3)] == [(0, 66), (66, 131), (131, 196)]
    # static middle frame with quota 3: the max of each window is kept, not the global top 3
    received = torch.zeros(3, POOLED)
    received[1, 0:3] = torch.tensor([9.0, 8.0, 7.0])  # global top-3 all in window 0
    received[1, 65] = 5.0  # last position of window 0
    received[1, 66] = 4.0  # first position of window 1
    received[1, 195] = 1.0  # last position of window 2
    features = torch.randn(3, POOLED, 2)
    _, index = select_tokens(features, received, [(0, 2)], 9)
    picks = [i - POOLED for i in index.tolist() if i // POOLED == 1]
    assert picks == [0, 66, 195]


def test_attention_sink_cannot_take_a_static_frame():
    # every frame's 20 highest tokens sit in the top-left corner (rows 0-1 of the 14x14 grid)
    t, k = 6, 20
    received = 1e-3 * torch.rand(t, POOLED, generator=torch.Generator().manual_seed(0))
    received[:, :20] += 100.0
    features = torch.randn(t, POOLED, 3)
    tokens, index = select_tokens(features, received, [(0, t - 1)], t * k)
    check_selection(features, received, [(0, t - 1)], t * k, tokens, index)
    for f in range(t):
        picks = [i % POOLED for i in index.tolist() if i // POOLED == f]
        if f in (0, t - 1):  # dynamic: exactly the sink tokens
            assert picks == list(range(20))
        else:  # static: one per window of 196/20 -> windows of 10 (16 of them) and 9 (4)
            windows = ref_windows(k)
            assert [sum(p in w for p in picks) for w in windows] == [1] * k
            assert max(picks) >= 180  # spread to the end of the frame
            assert sum(p < 20 for p in picks) == 2  # the corner only wins its own 2 windows


def test_select_all_tokens_returns_everything_in_order():
    features = torch.randn(3, POOLED, 5)
    received = make_scores("ties", 3, 2)
    tokens, index = select_tokens(features, received, [(0, 2)], 3 * POOLED)
    assert torch.equal(index, torch.arange(3 * POOLED))
    assert torch.equal(tokens, features.reshape(-1, 5))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"features": torch.zeros(3, POOLED)}, "features"),
     ({"received": torch.zeros(3, 195)}, "received"),
     ({"received": torch.zeros(2, POOLED)}, "received"),
     ({"received": torch.zeros(3 * POOLED)}, "received"),
     ({"budget": 2}, "budget"),
     ({"budget": 3 * POOLED + 1}, "budget"),
     ({"budget": 30.0}, "budget"),
     ({"budget": True}, "budget"),
     ({"groups": [(0, 1)]}, "groups"),
     ({"groups": [(0, 0), (2, 2)]}, "groups"),
     ({"groups": [(0, 3)]}, "groups")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"features": torch.zeros(3, POOLED, 2), "received": torch.zeros(3, POOLED),
            "groups": [(0, 2)], "budget": 30}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        select_tokens(args["features"], args["received"], args["groups"], args["budget"])
