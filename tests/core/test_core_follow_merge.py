"""Stage I's merges reach other states of the same frames (``on_merge`` / a tower's
``follow_merge``): what Qwen3-VL's deepstack taps need. Toy tower, no vLLM."""

from __future__ import annotations

import torch
from core_reference import ToyTower, embeddings_redundant

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import compress_video, run_encoder
from earlytom_vllm.core.temporal import MergePlan

PRUNE = (1, 2)


class TappingTower(ToyTower):
    """Keeps each layer's output in ``taps`` and merges them as Stage I merges the frames."""

    def __init__(self, tap_layers, **kw) -> None:
        super().__init__(**kw)
        self.tap_layers = tuple(tap_layers)
        self.taps: dict[int, torch.Tensor] = {}
        self.merges: list[tuple[int, MergePlan]] = []

    def layer(self, i, hidden):
        out = super().layer(i, hidden)
        if i in self.tap_layers:
            self.taps[i] = out
        return out

    def layer_with_received(self, i, hidden, chunk_frames):
        out, received = super().layer_with_received(i, hidden, chunk_frames)
        if i in self.tap_layers:
            self.taps[i] = out
        return out, received

    def follow_merge(self, i, plan):
        self.merges.append((i, plan))
        for layer in self.taps:
            self.taps[layer] = _plain_merge(self.taps[layer], plan)


def _plain_merge(x: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """The merge written out frame by frame (the reference for apply_plan)."""
    rows = [w * x[a] + (1.0 - w) * x[b] if w != 1.0 else x[a]
            for a, b, w in zip(plan.first, plan.second, plan.weight, strict=True)]
    return torch.stack(rows)


def test_on_merge_gets_every_prune_layer_plan_and_origins_follow_it():
    tower = TappingTower((0,), num_layers=4, seed=0)
    seen = []
    run = run_encoder(embeddings_redundant(12), tower.layer, 4,
                      run_layer_with_received=lambda i, h: tower.layer_with_received(i, h, 3),
                      prune_layers=PRUNE, on_merge=lambda i, plan: seen.append((i, plan)))
    assert [i for i, _ in seen] == list(PRUNE)
    assert any(not plan.identity for _, plan in seen)  # redundant frames: something merged
    origins = list(range(12))
    for _, plan in seen:
        origins = [origins[k] for k in plan.first]
    assert origins == run.origins
    assert [len(plan) for _, plan in seen] == run.frames_per_layer[2:4]


def test_a_tap_followed_through_the_merges_is_the_merged_state():
    """A tap taken at the last prune layer, merged by that layer's plan, IS the state the next
    layer receives; a tap taken earlier has every later merge applied, in order."""
    tower = TappingTower((0, 2), num_layers=4, seed=0)
    result = compress_video(embeddings_redundant(12), tower,
                            EarlyTomConfig(prune_layers=PRUNE, retain_ratio=0.25))
    assert [i for i, _ in tower.merges] == list(PRUNE)
    frames_out = result.frames_out
    assert frames_out < 12
    assert all(tap.shape[0] == frames_out for tap in tower.taps.values())
    # the state entering layer 3 (recorded by the toy tower's calls) has frames_out frames
    assert ("layer", 3, frames_out, None) in tower.calls
    # re-run the layers without merging, then merge the captured states with the same plans
    plain = TappingTower((0, 2), num_layers=4, seed=0)
    h = embeddings_redundant(12)
    captured = {}
    for i in range(3):
        h = plain.layer(i, h)
        captured[i] = h
        for layer, plan in tower.merges:
            if layer == i:
                h = _plain_merge(h, plan)
    expect0 = captured[0]
    for _, plan in tower.merges:  # layer 0 precedes both merges
        expect0 = _plain_merge(expect0, plan)
    assert torch.allclose(tower.taps[0], expect0, atol=1e-6)
    assert torch.allclose(tower.taps[2], h, atol=1e-6)  # the state layer 3 receives


def test_identity_plans_are_reported_as_identity():
    assert MergePlan([0, 1, 2], [0, 1, 2], [1.0, 1.0, 1.0]).identity
    assert not MergePlan([0, 2], [0, 2], [1.0, 1.0]).identity
    assert not MergePlan([0, 1], [0, 2], [1.0, 0.5]).identity
