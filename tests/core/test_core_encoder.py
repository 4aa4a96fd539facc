"""The encoder loop with Stage I and compress_video, on a toy vision tower (real per-frame attention
layers with random weights; projector + bilinear 27 -> 14 pooling)."""

from __future__ import annotations

import itertools

import pytest
import torch
from core_reference import (
    POOLED,
    ToyTower,
    angle_video,
    embeddings_redundant,
    embeddings_unrelated,
    ref_dynamic,
    ref_quota,
    stock_tokens,
)

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import (
    VisionTower,
    compress_video,
    merge_frames,
    run_encoder,
    segment_frames,
    video_token_budget,
)

PRUNE = (1, 2)


def cfg(**kw) -> EarlyTomConfig:
    base = {"prune_layers": PRUNE, "tau": 0.5, "max_window": 6, "ema": 0.9,
            "attention_chunk_frames": 3}
    base.update(kw)
    return EarlyTomConfig(**base)


@pytest.fixture(scope="module")
def tower() -> ToyTower:
    return ToyTower(num_layers=4, seed=0)


def test_toy_tower_satisfies_the_protocol(tower):
    t: VisionTower = tower  # static shape of the protocol
    assert t.num_layers == 4 and t.tokens_per_frame == POOLED


# --- r = 1 / disabled: the stock path, bit for bit ----------------------------------------------

@pytest.mark.parametrize("config", [
    EarlyTomConfig(retain_ratio=1.0),
    EarlyTomConfig(retain_ratio=1),
    EarlyTomConfig(retain_ratio=0.1, enabled=False),
    EarlyTomConfig(retain_ratio=0.1, method="none"),
    EarlyTomConfig(retain_ratio=1.0, method="post_encoder", prune_layers=(0, 1)),
    EarlyTomConfig(retain_ratio=1.0, method="evs"),
])
@pytest.mark.parametrize("video", ["redundant", "unrelated"])
def test_uncompressed_reproduces_the_stock_embeddings_exactly(tower, config, video):
    t = 5
    emb = embeddings_redundant(t) if video == "redundant" else embeddings_unrelated(t)
    expected = stock_tokens(tower, emb)
    tower.calls.clear()
    got = compress_video(emb, tower, config)
    assert torch.equal(got.tokens, expected)
    assert got.tokens.dtype == expected.dtype
    assert torch.equal(got.index, torch.arange(t * POOLED))
    assert got.budget == t * POOLED == video_token_budget(t, 1.0, POOLED)
    assert got.frames_out == t
    assert got.frames_per_layer == [t] * tower.num_layers
    assert all(kind == "layer" for kind, *_ in tower.calls)  # no eager attention at all


# --- r < 1: exactly the budget -----------------------------------------------------------------

@pytest.mark.parametrize("method", ["earlytom", "post_encoder", "evs"])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 53 / 196, 0.6])
@pytest.mark.parametrize("video", ["redundant", "unrelated"])
def test_compressed_video_has_exactly_the_budget(tower, method, ratio, video):
    t = 9
    emb = embeddings_redundant(t) if video == "redundant" else embeddings_unrelated(t)
    out = compress_video(emb, tower, cfg(retain_ratio=ratio, method=method))
    budget = video_token_budget(t, ratio, POOLED)
    assert out.budget == budget
    assert out.tokens.shape == (budget, 12)
    assert out.index.shape == (budget,)
    idx = out.index.tolist()
    assert all(a < b for a, b in itertools.pairwise(idx))
    assert idx[0] >= 0 and idx[-1] < out.frames_out * POOLED
    # the rows are the pooled features of the surviving frames, at the returned indices
    pooled = tower.last_pooled
    assert pooled is not None and pooled.shape[0] == out.frames_out
    assert torch.equal(out.tokens, pooled.reshape(-1, pooled.shape[-1])[out.index])
    # no frame holds more than 196 tokens; Stage I leaves at least ceil(budget / 196) frames
    assert out.frames_out >= -(-budget // POOLED)
    if method in ("post_encoder", "evs"):
        assert out.frames_out == t and out.frames_per_layer == [t] * tower.num_layers


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.6])
def test_earlytom_spreads_the_budget_over_refined_groups(tower, ratio):
    t = 11
    out = compress_video(embeddings_redundant(t), tower, cfg(retain_ratio=ratio))
    groups = out.groups
    assert groups is not None
    flat = [i for a, b in groups for i in range(a, b + 1)]
    assert flat == list(range(out.frames_out))
    counts = torch.bincount(out.index // POOLED, minlength=out.frames_out).tolist()
    assert counts == ref_quota(out.budget, ref_dynamic(groups, out.frames_out))


def test_stage_one_merges_a_redundant_video_and_keeps_unrelated_frames(tower):
    t = 12
    red = compress_video(embeddings_redundant(t), tower, cfg(retain_ratio=0.1))
    # frames entering each layer: all T up to and including the first prune layer, fewer after
    assert red.frames_per_layer[: PRUNE[0] + 1] == [t] * (PRUNE[0] + 1)
    assert red.frames_per_layer[PRUNE[0] + 1] < t
    assert red.frames_out < t
    assert red.frames_per_layer == sorted(red.frames_per_layer, reverse=True)

    unrel = compress_video(embeddings_unrelated(t), tower, cfg(retain_ratio=0.1))
    assert unrel.frames_per_layer == [t] * tower.num_layers
    assert unrel.frames_out == t
    assert unrel.groups == [(i, i) for i in range(t)]  # every frame its own group: all dynamic


def test_stage_one_respects_ceil_budget_over_196(tower):
    t = 10
    # r = 0.6: 118 per frame, budget 1180 -> at least ceil(1180/196) = 7 frames must survive
    out = compress_video(embeddings_redundant(t), tower, cfg(retain_ratio=0.6))
    assert out.frames_out >= 7
    assert min(out.frames_per_layer) >= 7
    # r = 0.9: 177 per frame, budget 1770 -> ceil(1770/196) = 10 = T: no merging at all
    out = compress_video(embeddings_redundant(t), tower, cfg(retain_ratio=0.9))
    assert out.frames_per_layer == [t] * tower.num_layers


def test_received_attention_is_computed_once_at_the_last_prune_layer(tower):
    t = 8
    tower.calls.clear()
    out = compress_video(embeddings_redundant(t), tower,
                         cfg(retain_ratio=0.1, attention_chunk_frames=3))
    eager = [c for c in tower.calls if c[0] == "received"]
    assert len(eager) == 1
    _kind, layer, frames, chunk = eager[0]
    assert layer == PRUNE[-1] and chunk == 3
    assert frames == out.frames_per_layer[PRUNE[-1]]  # the frames that enter that layer
    assert [c[1] for c in tower.calls] == list(range(tower.num_layers))


def test_post_encoder_and_evs_run_the_full_encoder(tower):
    t = 6
    tower.calls.clear()
    compress_video(embeddings_redundant(t), tower, cfg(retain_ratio=0.2, method="post_encoder"))
    assert [c[0] for c in tower.calls] == ["layer"] * (tower.num_layers - 1) + ["received"]
    assert all(c[2] == t for c in tower.calls)
    tower.calls.clear()
    emb = embeddings_redundant(t)
    out = compress_video(emb, tower, cfg(retain_ratio=0.2, method="evs"))
    assert [c[0] for c in tower.calls] == ["layer"] * tower.num_layers
    full = stock_tokens(tower, emb)
    assert torch.equal(out.tokens, full[out.index])


def test_evs_keeps_the_first_frame_whole_when_budget_allows(tower):
    t = 6
    out = compress_video(embeddings_unrelated(t), tower, cfg(retain_ratio=0.25, method="evs"))
    assert out.index[:POOLED].tolist() == list(range(POOLED))


# --- videos never mix ---------------------------------------------------------------------------

def test_videos_never_mix(tower):
    a = embeddings_redundant(9, seed=11)
    b = embeddings_unrelated(7, seed=12)
    c = cfg(retain_ratio=0.15)
    a1 = compress_video(a, tower, c)
    b1 = compress_video(b, tower, c)
    a2 = compress_video(a, tower, c)
    b2 = compress_video(b, tower, c)
    fresh = ToyTower(num_layers=4, seed=0)
    b3 = compress_video(b, fresh, c)
    a3 = compress_video(a, fresh, c)
    for x, y in [(a1, a2), (a1, a3), (b1, b2), (b1, b3)]:
        assert torch.equal(x.tokens, y.tokens)
        assert torch.equal(x.index, y.index)
        assert x.groups == y.groups and x.frames_per_layer == y.frames_per_layer
    # a's result does not depend on anything about b: change b completely
    compress_video(torch.zeros_like(b), tower, c)
    a4 = compress_video(a, tower, c)
    assert torch.equal(a1.tokens, a4.tokens)
    # and the inputs are not modified in place
    assert torch.equal(a, embeddings_redundant(9, seed=11))


def test_per_video_functions_do_not_keep_state():
    a = angle_video([0, 10, 15, 35, 40, 50])
    b = angle_video([90, 0, 45, 180, 3, 7, 200])
    ga = segment_frames(a, 0.5, 6, 0.9)
    ha, _ = merge_frames(a, ga)
    segment_frames(b, 0.1, 3, 0.5)
    merge_frames(b, [(0, 6)])
    assert segment_frames(a, 0.5, 6, 0.9) == ga
    assert torch.equal(merge_frames(a, ga)[0], ha)


# --- dtypes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["earlytom", "post_encoder", "evs"])
def test_compress_video_dtypes(dtype, method):
    tower = ToyTower(num_layers=4, seed=0, dtype=dtype)
    t = 6
    emb = embeddings_redundant(t, dtype=dtype)
    out = compress_video(emb, tower, cfg(retain_ratio=0.25, method=method))
    assert out.tokens.dtype == dtype
    assert out.tokens.shape == (video_token_budget(t, 0.25, POOLED), 12)
    assert torch.isfinite(out.tokens.float()).all()
    stock = compress_video(emb, tower, cfg(retain_ratio=1.0, method=method))
    assert torch.equal(stock.tokens, stock_tokens(tower, emb))


# --- run_encoder directly -------------------------------------------------------------------------

def test_run_encoder_transforms_received_like_hidden_and_refines():
    """Identity layers; received = hidden[..., 0] at the last prune layer: after the merge it must
    still be hidden[..., 0] (same keep/merge/drop ops and weights)."""
    x = angle_video([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]).float()
    seen = []

    def layer(i, h):
        return h.clone()

    def layer_rec(i, h):
        seen.append((i, h.shape[0]))
        return h.clone(), h[..., 0].clone()

    run = run_encoder(x, layer, 3, run_layer_with_received=layer_rec, prune_layers=(0, 2),
                      tau=0.5, max_window=6, ema=0.9)
    assert seen == [(2, run.frames_per_layer[2])]
    assert run.frames_per_layer[0] == 14 and run.frames_per_layer[1] < 14
    torch.testing.assert_close(run.received, run.hidden[..., 0], atol=1e-6, rtol=0)
    # refinement: the surviving frames segmented once more with the same rule (no merging)
    assert run.groups == segment_frames(run.hidden, 0.5, 6, 0.9)
    # the hidden states are exactly two rounds of segment + merge
    h = x
    for _ in range(2):
        h, _ = merge_frames(h, segment_frames(h, 0.5, 6, 0.9))
    torch.testing.assert_close(run.hidden, h)


def test_run_encoder_without_prune_layers_is_the_plain_loop():
    x = torch.randn(4, 9, 3)
    run = run_encoder(x, lambda i, h: h * 2 + i, 3)
    assert torch.equal(run.hidden, ((x * 2) * 2 + 1) * 2 + 2)
    assert run.received is None and run.groups is None
    assert run.frames_per_layer == [4, 4, 4]


def test_run_encoder_rejects_prune_layers_beyond_depth():
    x = torch.randn(4, 9, 3)
    with pytest.raises(ValueError, match="prune_layers"):
        run_encoder(x, lambda i, h: h, 3, run_layer_with_received=lambda i, h: (h, h[..., 0]),
                    prune_layers=(1, 3))


def test_compress_video_rejects_bad_embeddings(tower):
    with pytest.raises(ValueError, match="embeddings"):
        compress_video(torch.zeros(729, 16), tower, cfg())


@pytest.mark.parametrize("overrides", [
    {},
    {"keep_last_middle": True},
    {"tau": 0.0, "max_window": 4, "ema": 0.5},
    {"tau": 0.95, "max_window": 3},
    {"prune_layers": (0, 3), "attention_chunk_frames": 1},
    {"prune_layers": (2,), "retain_ratio": 0.5},
])
def test_compress_video_earlytom_is_stage_one_then_stage_two(tower, overrides):
    """compress_video(earlytom) == run_encoder with the config's Stage I settings and
    min_frames = ceil(budget / 196), then project+pool, pool the received attention with the same
    bilinear 27 -> 14 resize, and select over the refined groups."""
    from earlytom_vllm.core import pool_received, select_tokens

    c = cfg(**{"retain_ratio": 0.1, **overrides})
    t = 10
    emb = embeddings_redundant(t, seed=21)
    out = compress_video(emb, tower, c)
    budget = video_token_budget(t, c.retain_ratio, POOLED)
    run = run_encoder(
        emb, tower.layer, tower.num_layers,
        run_layer_with_received=lambda i, h: tower.layer_with_received(
            i, h, c.attention_chunk_frames),
        prune_layers=c.prune_layers, tau=c.tau, max_window=c.max_window, ema=c.ema,
        min_frames=-(-budget // POOLED), keep_last_middle=c.keep_last_middle,
    )
    pooled = tower.project_and_pool(run.hidden)
    tokens, index = select_tokens(pooled, pool_received(run.received, 27, 14), run.groups, budget)
    assert out.frames_per_layer == run.frames_per_layer
    assert out.groups == run.groups
    assert out.frames_out == run.hidden.shape[0]
    assert torch.equal(out.index, index)
    assert torch.equal(out.tokens, tokens)


@pytest.mark.parametrize("t", [1, 2, 3, 32])
@pytest.mark.parametrize("method", ["earlytom", "post_encoder", "evs"])
def test_compressed_video_budget_for_short_and_long_videos(tower, t, method):
    emb = embeddings_redundant(t, seed=31)
    out = compress_video(emb, tower, cfg(retain_ratio=0.1, method=method))
    budget = video_token_budget(t, 0.1, POOLED)
    assert out.tokens.shape == (budget, 12) and out.index.shape == (budget,)
    counts = torch.bincount(out.index // POOLED, minlength=out.frames_out)
    assert int(counts.max()) <= POOLED
    if method == "earlytom" and t == 32:
        # max_window = 6 after the first prune layer: at most 5 frames per segment, and every
        # segment of 4-5 near-identical frames loses at least one frame
        assert out.frames_per_layer[PRUNE[0] + 1] <= 32 - 6


class RowProjectingTower(ToyTower):
    """The toy tower with a per-token projector (no pooling mixes tokens), so it may declare
    ``project_rows``; ``rows_projected`` counts the rows its projector saw."""

    def __init__(self, *, per_row: bool, **kw) -> None:
        super().__init__(**kw)
        self.rows_projected = 0
        if per_row:
            self.project_rows = self._project_rows

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_projected += x.shape[0]
        return torch.nn.functional.gelu(x @ self.proj_w + self.proj_b)

    @staticmethod
    def _grid(hidden: torch.Tensor) -> torch.Tensor:
        f, _, c = hidden.shape  # every other row and column of 27 x 27: 14 x 14
        return hidden.reshape(f, 27, 27, c)[:, ::2, ::2].reshape(f * POOLED, c)  # -> [F*196, C]

    def project_and_pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._mlp(self._grid(hidden)).reshape(hidden.shape[0], POOLED, -1)  # [F, 196, D]

    def _project_rows(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self._mlp(self._grid(hidden).index_select(0, index))  # [K, C] -> [K, D]

    def pool_received(self, received: torch.Tensor) -> torch.Tensor:
        f = received.shape[0]
        return received.reshape(f, 27, 27)[:, ::2, ::2].reshape(f, POOLED)


@pytest.mark.parametrize("method", ["earlytom", "post_encoder"])
def test_a_tower_projecting_per_row_projects_only_the_kept_rows(method):
    """Stage II chooses the rows from received attention alone, so a tower whose projector works
    per output token (``project_rows``) gets the same tokens and index while its projector sees
    ``budget`` rows instead of every row of every surviving frame."""
    t = 12
    emb = embeddings_redundant(t, seed=41)
    c = cfg(retain_ratio=0.1, method=method)
    whole = RowProjectingTower(per_row=False, seed=3)
    rows = RowProjectingTower(per_row=True, seed=3)
    a, b = compress_video(emb, whole, c), compress_video(emb, rows, c)
    assert torch.equal(a.index, b.index)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-6, rtol=0)
    assert whole.rows_projected == a.frames_out * POOLED
    assert rows.rows_projected == b.budget == video_token_budget(t, 0.1, POOLED)
