"""kept_grid_positions: the (original frame, row, column) rule of method.md section 7."""

from __future__ import annotations

import pytest
import torch

from earlytom_vllm.core import kept_grid_positions


def test_each_kept_token_takes_its_row_column_and_the_earliest_source_frame():
    # 3 output frames of a 2 x 3 grid; output frame 1 merged original frames 2..4, frame 2 is 5.
    index = torch.tensor([0, 5, 6, 10, 12, 17])
    got = kept_grid_positions(index, [0, 2, 5], tokens_per_frame=6, grid_width=3)
    assert got.dtype == torch.long
    assert got.tolist() == [[0, 0, 0], [0, 1, 2], [2, 0, 0], [2, 1, 1], [5, 0, 0], [5, 1, 2]]


def test_uncompressed_video_gives_the_full_grid_in_raster_order():
    t, h, w = 2, 2, 4
    got = kept_grid_positions(torch.arange(t * h * w), range(t), h * w, w)
    expect = [[f, r, c] for f in range(t) for r in range(h) for c in range(w)]
    assert got.tolist() == expect


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        kept_grid_positions(torch.zeros(2, 2, dtype=torch.long), [0], 4, 2)
    with pytest.raises(ValueError, match="rows"):
        kept_grid_positions(torch.arange(3), [0], 6, 4)
