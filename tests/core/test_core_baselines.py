"""The same-budget baselines of ``core/baselines.py``, pinned to what the README says they are.

- ``evs_select`` against vLLM's own EVS (``vllm/multimodal/video_prune/evs.py``,
  ``compute_retention_mask``, the installed file, loaded on its own without importing vLLM) on the
  same pooled embeddings. The two keep the same tokens whenever they keep the same number of
  tokens; only the count rule differs, and exactly so:

  * this project keeps ``video_token_budget(T, r) = T * ceil(196 r)`` tokens, the serving budget
    every method shares;
  * vLLM keeps ``max(196, int(T * 196 * (1 - q)))``: the total rounded down, never less than one
    whole frame. So at the same ratio (q = 1 - r) vLLM keeps fewer tokens (the per-frame ceiling
    adds up to ``T - 1``), except below one frame, where vLLM keeps the whole first frame and this
    project keeps the first ``budget`` tokens of frame 0 in raster order.

  The kept tokens are compared by choosing q so that vLLM's count equals the budget.
  (Both compare in float32 here; for bf16 embeddings vLLM computes the cosine in bf16 and this
  project in float32, which can reorder near-ties.)

- ``post_encoder_select`` against :func:`ref_post_encoder`, written from its definition
  (VisionZip-style): every frame keeps the tokens that receive the most attention, ``budget // T``
  each and the remainder one each to the first frames, ties to the lower raster position, a NaN
  score never beats a number.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from core_reference import (
    GRID,
    POOLED,
    ToyTower,
    bilinear_ref,
    embeddings_unrelated,
    ref_received,
)

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import compress_video
from earlytom_vllm.core.baselines import evs_select, post_encoder_select
from earlytom_vllm.core.budget import video_token_budget

SIDE = 14  # pooled grid side: 14 x 14 = 196 tokens a frame


@pytest.fixture(scope="module")
def vllm_evs() -> ModuleType:
    """The installed vLLM's ``video_prune/evs.py`` (it imports only torch)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "multimodal" / "video_prune" / "evs.py"
    if not path.is_file():
        pytest.skip(f"{path} is not there: this vLLM has no EVS")
    module_spec = importlib.util.spec_from_file_location("vllm_video_prune_evs", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def vllm_kept(evs: ModuleType, features: torch.Tensor, count: int) -> list[int]:
    """Flat indices vLLM's EVS keeps from ``features [T, 196, D]``, with q chosen so that it keeps
    ``count`` tokens (``count >= 196``)."""
    t, n, d = features.shape
    total = t * n
    q = 1.0 - (count + 0.5) / total  # int(total * (1 - q)) == count
    assert evs.compute_retained_tokens_count(n, t, q) == count
    mask = evs.compute_retention_mask(features.reshape(t * n, d), (t, SIDE, SIDE), 1, q)
    return mask.nonzero().squeeze(1).tolist()


# --- videos with the structure EVS reacts to ---------------------------------------------------

def drifting_video(t: int, d: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
    """Each frame is the previous one plus a per-token change of random size (some tokens never
    change, some change a lot), and one hard cut halfway: ``[T, 196, D]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(POOLED, d, generator=g, dtype=torch.float64)
    frames = [x]
    for i in range(1, t):
        if i == t // 2:  # a hard cut: every token turns around (the largest possible change)
            x = -x + 0.1 * torch.randn(POOLED, d, generator=g, dtype=torch.float64)
        else:
            scale = torch.rand(POOLED, 1, generator=g, dtype=torch.float64) ** 3
            still = torch.rand(POOLED, 1, generator=g) < 0.2
            x = x + torch.where(still, 0.0, 2.0 * scale) * torch.randn(
                POOLED, d, generator=g, dtype=torch.float64)
        frames.append(x)
    return torch.stack(frames).to(dtype)


def looping_video(t: int, d: int = 8, seed: int = 1) -> torch.Tensor:
    """Frames alternate between two images A, B, A, B, ... plus a small drift, so every frame is
    far from the previous one but frame 2k is close to frame 0: comparing with the first frame
    instead of the previous one changes the choice."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(POOLED, d, generator=g)
    b = torch.randn(POOLED, d, generator=g)
    frames = [(a if i % 2 == 0 else b) + 0.05 * i * torch.randn(POOLED, d, generator=g)
              for i in range(t)]
    return torch.stack(frames)


def frozen_video(t: int, d: int = 8, seed: int = 2) -> torch.Tensor:
    """The same frame ``t`` times: every later token ties with every other (tie-breaking only)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, POOLED, d, generator=g).expand(t, POOLED, d).contiguous()


VIDEOS = {
    "drifting": drifting_video,
    "looping": looping_video,
    "frozen": frozen_video,
}


# --- EVS: the same tokens as vLLM's compute_retention_mask ---------------------------------------

@pytest.mark.parametrize("name", sorted(VIDEOS))
@pytest.mark.parametrize(("t", "ratio"), [(2, 0.5), (4, 0.25), (8, 0.25), (8, 0.5), (16, 0.1),
                                          (32, 0.1), (32, 0.25)])
def test_evs_keeps_the_same_tokens_as_vllm_at_the_serving_budget(vllm_evs, name, t, ratio):
    features = VIDEOS[name](t)
    budget = video_token_budget(t, ratio, 196)
    assert budget >= POOLED  # below one frame vLLM's count cannot be matched (next tests)
    tokens, index = evs_select(features, budget)
    assert index.tolist() == vllm_kept(vllm_evs, features, budget)
    assert torch.equal(tokens, features.reshape(t * POOLED, -1)[index])


@pytest.mark.parametrize("count", [196, 197, 250, 391, 500, 783])
def test_evs_keeps_the_same_tokens_as_vllm_at_any_count_of_a_frame_or_more(vllm_evs, count):
    features = drifting_video(4, seed=7, dtype=torch.float64)
    _, index = evs_select(features, count)
    assert index.tolist() == vllm_kept(vllm_evs, features, count)


def test_evs_keeps_the_first_frame_then_the_most_changed_tokens(vllm_evs):
    """What vLLM's EVS does, checked on a video where it is visible: frame 0 whole, then, over
    the whole video, the tokens that changed most since the previous frame."""
    t = 6
    features = drifting_video(t, seed=3)
    budget = video_token_budget(t, 0.5, 196)  # 588: frame 0 plus 392 of the 980 later tokens
    index = evs_select(features, budget)[1].tolist()
    assert index[:POOLED] == list(range(POOLED))
    x = features.double()
    unit = x / x.norm(dim=-1, keepdim=True)
    dissim = 1.0 - (unit[1:] * unit[:-1]).sum(-1)  # [T-1, 196], float64
    kept_later = {i - POOLED for i in index[POOLED:]}
    threshold = min(float(dissim.reshape(-1)[j]) for j in kept_later)
    dropped = [float(v) for j, v in enumerate(dissim.reshape(-1).tolist()) if j not in kept_later]
    assert max(dropped) <= threshold + 1e-6
    # the cut frame (t // 2) changed everywhere: it is kept whole
    cut = t // 2
    assert set(range(cut * POOLED, (cut + 1) * POOLED)) <= set(index)
    assert index == vllm_kept(vllm_evs, features, budget)


@pytest.mark.parametrize(("t", "ratio", "ours", "vllm"), [
    (32, 0.10, 640, 627),   # per-frame ceiling 32 x 20 vs int(627.2)
    (32, 0.15, 960, 940),
    (32, 0.20, 1280, 1254),
    (32, 0.25, 1568, 1568),  # 196 x 0.25 = 49 exactly: the rules agree
    (8, 0.15, 240, 235),
    (4, 0.50, 392, 392),
    (8, 0.10, 160, 196),     # below one frame: vLLM keeps the whole first frame
    (2, 0.10, 40, 196),
    (16, 0.05, 160, 196),
])
def test_evs_budget_rule_differs_from_vllm_as_stated(vllm_evs, t, ratio, ours, vllm):
    assert video_token_budget(t, ratio, 196) == ours
    assert vllm_evs.compute_retained_tokens_count(196, t, 1.0 - ratio) == vllm


@pytest.mark.parametrize("t", [1, 2, 3, 8, 16, 32, 64])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0])
def test_evs_budget_is_vllms_count_plus_the_per_frame_ceiling_or_one_frame(vllm_evs, t, ratio):
    """At q = 1 - r: vLLM = max(196, floor(T * 196 * r)) (up to the float in 1 - (1 - r)), and
    the project's budget is the same total rounded up per frame: between floor and floor + T - 1."""
    ours = video_token_budget(t, ratio, 196)
    theirs = vllm_evs.compute_retained_tokens_count(196, t, 1.0 - ratio)
    exact = t * 196 * ratio
    floor = math.floor(exact + 1e-9)
    assert theirs in (max(196, floor), max(196, floor - 1))  # 1 - (1 - r) may round below r
    assert floor <= ours <= floor + t - 1 + (0 if exact == floor else 1)
    if ours >= 196:
        assert ours >= theirs
    else:
        assert theirs == 196


@pytest.mark.parametrize(("t", "ratio"), [(8, 0.1), (2, 0.1), (16, 0.05), (4, 0.05)])
def test_evs_below_one_frame_keeps_a_raster_prefix_of_the_first_frame(vllm_evs, t, ratio):
    """Where the rules part: vLLM keeps frame 0 whole (196); the project keeps exactly the budget,
    the first ``budget`` positions of frame 0, a subset of what vLLM keeps."""
    features = drifting_video(t, seed=5)
    budget = video_token_budget(t, ratio, 196)
    assert budget < POOLED
    index = evs_select(features, budget)[1].tolist()
    assert index == list(range(budget))
    assert set(index) < set(vllm_kept(vllm_evs, features, POOLED))


def test_evs_rejects_bad_shapes_and_budgets():
    features = drifting_video(3)
    for bad in (0, 3 * POOLED + 1, True, 2.0):
        with pytest.raises(ValueError, match="budget"):
            evs_select(features, bad)
    with pytest.raises(ValueError, match="features"):
        evs_select(features[0], 10)


# --- post_encoder: per-frame attention top-k (VisionZip-style) ----------------------------------

def ref_post_encoder(received: torch.Tensor, budget: int) -> list[int]:
    """Flat indices kept: frame f keeps its ``budget // T`` (+1 for the first ``budget % T``
    frames) most-attended tokens; ties to the lower position; NaN ranks below every number."""
    t, n = received.shape
    base, rem = divmod(budget, t)
    kept: list[int] = []
    for f in range(t):
        row = [float(v) for v in received[f]]

        def key(j: int, row: list[float] = row) -> tuple[float, int]:
            return (math.inf if math.isnan(row[j]) else -row[j], j)

        top = sorted(range(n), key=key)[: base + (1 if f < rem else 0)]
        kept.extend(f * n + j for j in sorted(top))
    return kept


def attention_scores(t: int, seed: int, *, levels: int | None = None,
                     nan_fraction: float = 0.0) -> torch.Tensor:
    """``[T, 196]`` non-negative scores; ``levels`` quantises them (many ties)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(t, POOLED, generator=g) ** 2
    if levels is not None:
        s = torch.floor(s * levels) / levels
    if nan_fraction:
        s[torch.rand(t, POOLED, generator=g) < nan_fraction] = float("nan")
    return s


@pytest.mark.parametrize(("t", "budget"), [
    (1, 1), (1, 196), (3, 3), (4, 80), (4, 83), (8, 160), (8, 392), (16, 320), (5, 979),
    (32, 640),
])
@pytest.mark.parametrize("ties", [None, 4])
def test_post_encoder_keeps_the_most_attended_tokens_of_every_frame(t, budget, ties):
    received = attention_scores(t, seed=t * 1000 + budget, levels=ties)
    features = torch.randn(t, POOLED, 6, generator=torch.Generator().manual_seed(budget))
    tokens, index = post_encoder_select(features, received, budget)
    assert index.tolist() == ref_post_encoder(received, budget)
    assert torch.equal(tokens, features.reshape(t * POOLED, -1)[index])


def test_post_encoder_quota_does_not_follow_attention_mass_across_frames():
    """One frame receiving far more attention than the others still keeps only its share."""
    t, budget = 4, video_token_budget(4, 0.1, 196)  # 20 a frame
    received = attention_scores(t, seed=11)
    received[2] *= 1000.0
    index = post_encoder_select(torch.zeros(t, POOLED, 2), received, budget)[1]
    per_frame = torch.bincount(index // POOLED, minlength=t).tolist()
    assert per_frame == [20, 20, 20, 20]
    assert index.tolist() == ref_post_encoder(received, budget)


def test_post_encoder_all_ties_keep_the_first_raster_positions():
    t, budget = 3, 30
    received = torch.full((t, POOLED), 0.5)
    index = post_encoder_select(torch.zeros(t, POOLED, 2), received, budget)[1].tolist()
    assert index == [f * POOLED + j for f in range(t) for j in range(10)]


def test_post_encoder_nan_scores_never_beat_numbers():
    t, budget = 4, 160
    received = attention_scores(t, seed=4, nan_fraction=0.5)
    index = post_encoder_select(torch.zeros(t, POOLED, 2), received, budget)[1]
    assert index.tolist() == ref_post_encoder(received, budget)
    assert not torch.isnan(received.reshape(-1)[index]).any()  # >= 40 numbers in every frame


# --- the wiring in compress_video: which features, which attention ---------------------------------

def test_compress_video_evs_is_vllms_evs_on_the_pooled_projected_features(vllm_evs):
    tower = ToyTower(num_layers=3, seed=4)
    t = 6
    cfg = EarlyTomConfig(retain_ratio=0.25, method="evs")
    out = compress_video(embeddings_unrelated(t, seed=9), tower, cfg)
    pooled = tower.last_pooled  # [T, 196, D]: what the projector + pooling produced
    assert pooled is not None and pooled.shape[:2] == (t, POOLED)
    assert out.index.tolist() == vllm_kept(vllm_evs, pooled, video_token_budget(t, 0.25, 196))
    assert torch.equal(out.tokens, pooled.reshape(t * POOLED, -1)[out.index])


def same_top_k_up_to_ties(index: list[int], score: torch.Tensor, budget: int,
                          tol: float = 1e-6) -> bool:
    """``index`` is a per-frame top-k of ``score [T, N]`` (float64 reference values), allowing
    only swaps between tokens whose reference scores are within ``tol`` (float32 vs float64)."""
    t, n = score.shape
    ref = ref_post_encoder(score, budget)
    if index == ref:
        return True
    base, rem = divmod(budget, t)
    for f in range(t):
        k = base + (1 if f < rem else 0)
        got = {i - f * n for i in index if i // n == f}
        want = {i - f * n for i in ref if i // n == f}
        if len(got) != k:
            return False
        boundary = float(torch.sort(score[f], descending=True).values[k - 1])
        if any(abs(float(score[f, j]) - boundary) > tol for j in got ^ want):
            return False
    return True


def test_compress_video_post_encoder_uses_the_last_layers_attention_pooled_like_the_features():
    tower = ToyTower(num_layers=3, seed=5, dtype=torch.float64)
    t = 5
    emb = embeddings_unrelated(t, seed=10, dtype=torch.float64)
    cfg = EarlyTomConfig(retain_ratio=0.2, method="post_encoder")
    out = compress_video(emb, tower, cfg)
    # independently: run the stock layers up to the last one, its received attention (explicit
    # softmax, float64), bilinear 27 -> 14 like the features, then the per-frame top-k
    h = emb
    for i in range(tower.num_layers - 1):
        h = tower.layer(i, h)
    q, k, _ = tower._qkv(tower.num_layers - 1, h)
    received = ref_received(q, k)  # [T, 729]
    pooled = bilinear_ref(received.view(t, GRID, GRID), SIDE).reshape(t, POOLED)
    budget = video_token_budget(t, 0.2, 196)
    assert out.index.numel() == budget
    assert same_top_k_up_to_ties(out.index.tolist(), pooled, budget)
