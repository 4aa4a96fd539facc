"""Qwen3-VL positions without an engine: the rows' integer channels survive any float dtype, and
place_rows (the model's recompute_mrope_positions) gives every token of a compressed prompt the
position vLLM's own Qwen3-VL rule gives the same token in the unpruned prompt, for any prefill
chunking, with the chat template's outer markers, several media, and text before the video."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Stock

from earlytom_vllm.vllm.qwen2_5_vl import media_runs
from earlytom_vllm.vllm.qwen3_vl import (
    decode_channels,
    encode_channels,
    place_rows,
    row_channels,
    unpruned_index,
)

START, END, IMAGE, VIDEO = 5, 6, 7, 8
CONFIG = SimpleNamespace(vision_start_token_id=START, vision_end_token_id=END,
                         image_token_id=IMAGE, video_token_id=VIDEO,
                         vision_config=SimpleNamespace(spatial_merge_size=2))
T, H, W = 3, 2, 3  # merged grid of the video: 3 slices of 2 x 3 tokens
STAMPS = ([20, 21], [22, 23, 24], [25])  # timestamp tokens of each slice (lengths differ)
KEPT = torch.tensor([[0, 0, 1], [0, 1, 2], [1, 1, 0], [2, 0, 0], [0, 1, 1], [2, 1, 2]])  # o, r, c
K = KEPT.shape[0] // T  # rows per slot


def _video(per_slot: int) -> list[int]:
    ids = [START]  # the chat template's outer marker
    for stamp in STAMPS:
        ids += stamp + [START] + [VIDEO] * per_slot + [END]
    return [*ids, END]


def _prompt(prefix: int, per_slot: int) -> tuple[list[int], int, int]:
    """text, <outer vs>(<t><vs>pads<ve>)x3<outer ve>, text, <vs>image 2x3<ve>, text."""
    video = _video(per_slot)
    ids = [1] * prefix + video + [2, 2, START] + [IMAGE] * (H * W) + [END] + [3] * 4
    video_at = prefix + 1  # the placeholder starts at the first timestamp token
    return ids, video_at, ids.index(IMAGE)


def _features(video_at: int, image_at: int):
    def feature(modality, offset, grid):
        return SimpleNamespace(modality=modality, mm_position=SimpleNamespace(offset=offset),
                               data={f"{modality}_grid_thw": SimpleNamespace(
                                   data=torch.tensor(grid))})
    return [feature("video", video_at, [T, 2 * H, 2 * W]),
            feature("image", image_at, [1, 2 * H, 2 * W])]


def _expected(prefix: int) -> list[list[int]]:
    """vLLM's rule on the unpruned prompt, read at each token of the compressed one: text at
    its own stock position, a kept row at the stock position of (its slice, row, column)."""
    full, v_at, i_at = _prompt(prefix, H * W)
    stock, _ = Stock._get_mrope_input_positions(full, _features(v_at, i_at), CONFIG)
    ids, _, _ = _prompt(prefix, K)
    runs = media_runs(full, (VIDEO,))  # the stock slots
    out, rows, shift = [], iter(KEPT.tolist()), 0
    for i, tok in enumerate(ids):
        if tok == VIDEO:
            o, r, c = next(rows)
            out.append(stock[:, runs[o][0] + r * W + c].tolist())
            continue
        while i + shift < len(full) and full[i + shift] != tok:  # skip the missing pads
            shift += 1
        out.append(stock[:, i + shift].tolist())
    return [list(axis) for axis in zip(*out, strict=True)]


def _chunked(prefix: int, chunk: int) -> list[list[int]]:
    """What the runner does: provisional positions, then per chunk the media rows in it."""
    ids, v_at, i_at = _prompt(prefix, K)
    stock_ids, index = unpruned_index(ids, [(v_at, len(_video(K)) - 2, H * W)], VIDEO)
    v_stock, i_stock = int(index[v_at]), int(index[i_at])
    provisional, _ = Stock._get_mrope_input_positions(stock_ids, _features(v_stock, i_stock),
                                                      CONFIG)
    positions = provisional[:, index].clone()
    video_rows = row_channels(KEPT, T)
    image_rows = row_channels(torch.tensor([[0, r, c] for r in range(H) for c in range(W)]), 1)
    pads = [i for i, t in enumerate(ids) if t == VIDEO] + [i for i, t in enumerate(ids)
                                                           if t == IMAGE]
    for s in range(0, len(ids), chunk):
        e = min(s + chunk, len(ids))
        pieces = []
        for rows, at in ((video_rows, pads[:T * K]), (image_rows, pads[T * K:])):
            inside = [j for j, p in enumerate(at) if s <= p < e]
            if inside:
                pieces.append(rows[inside[0]:inside[-1] + 1])
        if pieces:
            positions = place_rows(ids, positions, pieces, s, (IMAGE, VIDEO))
    return positions.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_channels_are_exact_in_every_float_dtype(dtype):
    values = torch.tensor([[0, 1, 255, 256, 65535], [383, 40, 63, 191, 4095]])
    assert torch.equal(decode_channels(encode_channels(values, dtype)), values)
    with pytest.raises(ValueError, match="position channels"):
        encode_channels(torch.tensor([[65536, 0, 0, 0, 0]]), dtype)


def test_rows_fill_equal_slots_in_order():
    ch = row_channels(KEPT, T)
    assert ch[:, 3].tolist() == [0, 0, 1, 1, 2, 2] and ch[:, 4].tolist() == [0, 1] * 3
    assert torch.equal(ch[:, :3], KEPT)


def test_unpruned_index_restores_the_stock_prompt():
    ids, v_at, _ = _prompt(4, K)
    stock_ids, index = unpruned_index(ids, [(v_at, len(_video(K)) - 2, H * W)], VIDEO)
    assert stock_ids == _prompt(4, H * W)[0]
    assert [stock_ids[i] for i in index.tolist()] == ids


@pytest.mark.parametrize("prefix", [1, 3, 30])  # text before the video shorter / longer than it
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 64])
def test_any_chunking_gives_the_stock_positions_of_the_same_tokens(prefix, chunk):
    assert _chunked(prefix, chunk) == _expected(prefix)


def test_a_chunk_starting_on_the_first_video_row():
    ids, _, _ = _prompt(7, K)
    first = ids.index(VIDEO)
    for chunk in range(2, first + 1):
        if first % chunk == 0:
            assert _chunked(7, chunk) == _expected(7), chunk
