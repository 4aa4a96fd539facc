"""Where each kept token sits: its source frame, row and column (method.md section 7).

A kept token of output frame ``f`` at raster position ``p`` of that frame's grid keeps the row and
column of ``p`` and the time of the EARLIEST original frame merged into ``f`` (``origins[f]``).
Model families turn this into their own position ids (Qwen2.5-VL: M-RoPE time, row, column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def kept_grid_positions(index: torch.Tensor, origins: Sequence[int], tokens_per_frame: int,
                        grid_width: int) -> torch.Tensor:
    """``[K]`` flat indices into ``T' * tokens_per_frame`` (raster order within a frame) ->
    ``[K, 3]`` int64 ``(original frame, row, column)`` on ``index``'s device.

    Args:
        index: kept tokens, e.g. :attr:`VideoCompression.index`.
        origins: ``[T']`` earliest original frame of each output frame
            (:attr:`VideoCompression.origins`); ``range(T)`` when nothing merged.
        grid_width: columns of a frame's token grid (``tokens_per_frame`` must be a multiple).
    """
    if index.ndim != 1:
        raise ValueError(f"index must be 1-D, got {tuple(index.shape)}")
    if grid_width < 1 or tokens_per_frame % grid_width:
        raise ValueError(f"tokens_per_frame {tokens_per_frame} is not a whole number of rows of "
                         f"{grid_width}")
    index = index.long()
    frame = torch.div(index, tokens_per_frame, rounding_mode="floor")  # output frame of each token
    pos = index - frame * tokens_per_frame  # raster position within its frame
    source = torch.as_tensor(list(origins), dtype=torch.long, device=index.device)[frame]
    row = torch.div(pos, grid_width, rounding_mode="floor")
    return torch.stack((source, row, pos - row * grid_width), dim=1)  # [K, 3]
