"""At most one device-to-host copy per segment_frames / merge_frames call (decisions run on host
floats copied once), and no .item() at all."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from core_reference import FAST, random_groups, walk_video
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm.core import merge_frames, segment_frames

# value-extracting Tensor methods: each one is a host sync on an accelerator
EXTRACTORS = ("tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__len__")


class SyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self._mp = monkeypatch
        self.active = False

    def install(self) -> None:
        def forbid_item(self_, *a, **k):
            if self.active:
                raise AssertionError("Tensor.item() called: a host sync per value")
            return orig["item"](self_, *a, **k)

        orig = {name: getattr(torch.Tensor, name) for name in ("item", "cpu", *EXTRACTORS)}
        self._mp.setattr(torch.Tensor, "item", forbid_item)
        for name in ("cpu", *EXTRACTORS):
            self._mp.setattr(torch.Tensor, name, self._counting(name, orig[name]))

    def _counting(self, name, fn):
        def wrapper(self_, *a, **k):
            if self.active:
                self.counts[name] += 1
            return fn(self_, *a, **k)

        return wrapper

    def __enter__(self):
        self.counts.clear()
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    @property
    def extractions(self) -> int:
        return sum(self.counts[n] for n in EXTRACTORS if n != "__len__")


@pytest.fixture
def syncs(monkeypatch):
    counter = SyncCounter(monkeypatch)
    counter.install()
    return counter


def test_counter_sees_syncs(syncs):
    x = torch.ones(3)
    with syncs:
        x.cpu().tolist()
        bool(x[0])
    assert syncs.counts["cpu"] == 1 and syncs.counts["tolist"] == 1 and syncs.extractions == 2
    with syncs, pytest.raises(AssertionError, match="item"):
        x[0].item()


@FAST
@given(st.integers(1, 24), st.integers(0, 2**10), st.integers(2, 9))
def test_segment_frames_syncs_at_most_once(t, seed, max_window):
    # (the fixture cannot be function-scoped under hypothesis: patch by hand)
    mp = pytest.MonkeyPatch()
    try:
        syncs = SyncCounter(mp)
        syncs.install()
        video = walk_video(t, step=0.4, seed=seed).float()
        with syncs:
            segment_frames(video, 0.5, max_window, 0.9)
        assert syncs.counts["cpu"] <= 1, syncs.counts
        assert syncs.extractions <= 1, syncs.counts
    finally:
        mp.undo()


@FAST
@given(st.integers(1, 24), st.integers(0, 2**10), st.lists(st.booleans(), min_size=23,
                                                            max_size=23),
       st.integers(1, 10), st.booleans())
def test_merge_frames_syncs_at_most_once(t, seed, cuts, min_frames, keep_last_middle):
    mp = pytest.MonkeyPatch()
    try:
        syncs = SyncCounter(mp)
        syncs.install()
        video = walk_video(t, step=0.1, seed=seed).float()
        groups = random_groups([c and i % 5 == 4 for i, c in enumerate(cuts[: t - 1])])
        received = torch.rand(t, video.shape[1])
        with syncs:
            merge_frames(video, groups, received, min_frames=min_frames,
                         keep_last_middle=keep_last_middle)
        assert syncs.counts["cpu"] <= 1, syncs.counts
        assert syncs.extractions <= 1, syncs.counts
    finally:
        mp.undo()


def test_segment_then_merge_on_identical_frames(syncs):
    video = torch.ones(32, 4, 3)
    with syncs:
        groups = segment_frames(video, 0.5, 6, 0.9)
    assert syncs.extractions <= 1 and syncs.counts["cpu"] <= 1
    with syncs:
        merge_frames(video, groups, torch.rand(32, 4))
    assert syncs.extractions <= 1 and syncs.counts["cpu"] <= 1
