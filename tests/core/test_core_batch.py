"""Several videos encoded in one call (``compress_videos`` / ``run_encoder_batch``): every layer
runs once over all their frames, Stage I and Stage II stay per video, and each video comes out
as it does alone. Toy towers, no vLLM."""

from __future__ import annotations

import pytest
import torch
from core_reference import POOLED, ToyTower, embeddings_redundant, embeddings_unrelated
from test_core_encoder import RowProjectingTower
from test_core_follow_merge import TappingTower

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import (
    batch_key,
    compress_video,
    compress_videos,
    run_encoder,
    run_encoder_batch,
)
from earlytom_vllm.core.encoder import concat_plans
from earlytom_vllm.core.temporal import MergePlan

PRUNE = (1, 2)


def videos() -> list[torch.Tensor]:
    """Three videos of different length and content: redundant, unrelated, redundant."""
    return [embeddings_redundant(12, seed=51), embeddings_unrelated(5, seed=52),
            embeddings_redundant(9, seed=53, noise=1e-2)]


def configs(method: str) -> list[EarlyTomConfig]:
    return [EarlyTomConfig(method=method, prune_layers=PRUNE, retain_ratio=r,
                           attention_chunk_frames=3) for r in (0.1, 0.25, 0.15)]


@pytest.mark.parametrize("make", [
    lambda: ToyTower(num_layers=4, seed=0),
    lambda: RowProjectingTower(per_row=True, num_layers=4, seed=0),
    lambda: TappingTower((0, 2), num_layers=4, seed=0),
], ids=["pooling projector", "per-row projector", "deepstack-like taps"])
@pytest.mark.parametrize("method", ["earlytom", "post_encoder", "evs", "none"])
def test_a_batch_gives_each_video_what_it_gets_alone(make, method):
    vids, cfgs = videos(), configs(method)
    alone = [compress_video(v, make(), c) for v, c in zip(vids, cfgs, strict=True)]
    tower = make()
    together = compress_videos(vids, tower, cfgs)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.index, b.index)
        assert torch.allclose(a.tokens, b.tokens, atol=1e-5, rtol=0)
        assert (a.budget, a.frames_out, a.groups, a.origins, a.frames_per_layer) == (
            b.budget, b.frames_out, b.groups, b.origins, b.frames_per_layer)
        assert b.batch == 3
    # every layer ran once for the whole batch, on every video's frames at once
    assert [i for _, i, _, _ in tower.calls] == [0, 1, 2, 3]
    entering = [f for _, _, f, _ in tower.calls]
    assert entering == [sum(r.frames_per_layer[i] for r in together) for i in range(4)]
    if method == "earlytom":
        assert together[0].frames_out < 12 and together[1].frames_out == 5  # unrelated: kept


def test_deepstack_like_taps_follow_each_videos_merge_in_a_batch():
    tower = TappingTower((0, 2), num_layers=4, seed=0)
    out = compress_videos(videos(), tower, configs("earlytom"))
    total = sum(r.frames_out for r in out)
    assert all(tap.shape[0] == total for tap in tower.taps.values())
    # the batch's plans never mix two videos' frames
    bounds = [0, 12, 17, 26]
    assert [i for i, _ in tower.merges] == list(PRUNE)
    first = tower.merges[0][1]
    for a, b in zip(first.first, first.second, strict=True):
        assert next(v for v in range(3) if bounds[v] <= a < bounds[v + 1]) == \
            next(v for v in range(3) if bounds[v] <= b < bounds[v + 1])


def test_run_encoder_is_a_batch_of_one():
    tower = ToyTower(num_layers=4, seed=0)
    emb = embeddings_redundant(10, seed=61)
    kw = {"run_layer_with_received": lambda i, h: tower.layer_with_received(i, h, 3),
          "prune_layers": PRUNE, "min_frames": 2}
    one = run_encoder(emb, tower.layer, 4, **kw)
    kw["min_frames"] = [2]
    batch = run_encoder_batch(emb, [10], tower.layer, 4, **kw)
    assert torch.equal(one.hidden, batch.runs[0].hidden)
    assert torch.equal(one.hidden, batch.hidden)
    assert (one.groups, one.origins, one.frames_per_layer) == (
        batch.runs[0].groups, batch.runs[0].origins, batch.runs[0].frames_per_layer)


def test_concat_plans_offsets_each_video():
    a = MergePlan([0, 1, 3], [0, 2, 3], [1.0, 0.5, 1.0])
    b = MergePlan([0, 1], [0, 1], [1.0, 1.0])
    plan = concat_plans([a, b], [4, 2])
    assert plan.first == [0, 1, 3, 4, 5] and plan.second == [0, 2, 3, 4, 5]
    assert plan.weight == [1.0, 0.5, 1.0, 1.0, 1.0]
    assert concat_plans([b, b], [2, 2]).identity


def test_batch_settings_must_agree_but_the_ratio():
    assert batch_key(EarlyTomConfig(retain_ratio=0.1)) == batch_key(EarlyTomConfig(retain_ratio=0.5))
    assert batch_key(EarlyTomConfig(tau=0.4)) != batch_key(EarlyTomConfig(tau=0.5))
    tower = ToyTower(num_layers=4, seed=0)
    vids = videos()[:2]
    with pytest.raises(ValueError, match="share every setting"):
        compress_videos(vids, tower, [EarlyTomConfig(prune_layers=PRUNE),
                                      EarlyTomConfig(prune_layers=(1, 3))])
    with pytest.raises(ValueError, match="2 videos for 1 configs"):
        compress_videos(vids, tower, [EarlyTomConfig(prune_layers=PRUNE)])
    with pytest.raises(ValueError, match="same N and C"):
        compress_videos([vids[0], vids[1][:, :100]], tower, [EarlyTomConfig(prune_layers=PRUNE)] * 2)
    with pytest.raises(ValueError, match="sum to"):
        run_encoder_batch(vids[0], [5, 5], tower.layer, 4)
    assert POOLED == 196
