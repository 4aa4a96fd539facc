"""place_media: the Qwen2.5-VL adapter's use of vLLM's recompute_mrope_positions, without an
engine: any chunking of a prompt with several media gives the positions of the documented rule,
where vLLM 0.32's function called once per chunk (as its own Qwen2.5-VL model does) does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from earlytom_vllm.vllm.qwen2_5_vl import media_positions, media_runs, place_media

START, END, IMAGE, VIDEO = 5, 6, 7, 8
CONFIG = SimpleNamespace(vision_start_token_id=START, image_token_id=IMAGE, video_token_id=VIDEO)


def _prompt(prefix: int):
    """text (prefix tokens), video 0 (6 kept tokens), text, image (2 x 3), text."""
    video = media_positions(torch.tensor([[0, 0, 1], [0, 1, 2], [2, 0, 0], [4, 1, 1], [4, 2, 2],
                                          [6, 0, 2]]), 2.0, 4, 3, 3)  # [6, 4], extent 7
    grid = torch.tensor([[0, r, c] for r in range(2) for c in range(3)])
    image = media_positions(grid, 1.0, 1, 2, 3)  # [6, 4], extent 3
    ids = ([1] * prefix + [START] + [VIDEO] * 6 + [END, 2, 2, START] + [IMAGE] * 6 + [END]
           + [3] * 4)
    return ids, [video, image]


def _expected(ids, media):
    """The rule, stated directly: text counts up; a medium sits at base + (t, h, w) with base
    one past the text before it; the text after it starts at base + its offset channel."""
    out, nxt, i, runs = [[], [], []], 0, 0, iter(media)
    while i < len(ids):
        if ids[i] in (IMAGE, VIDEO):
            run = next(runs)
            for row in run.tolist():
                for axis in range(3):
                    out[axis].append(nxt + row[axis])
            i, nxt = i + run.shape[0], nxt + int(run[0, 3])
        else:
            for axis in range(3):
                out[axis].append(nxt)
            i, nxt = i + 1, nxt + 1
    return out


def _run_chunked(ids, media, chunk: int, one_call_per_chunk) -> list[list[int]]:
    """What the runner does: per prefill chunk, the slices of the media it overlaps."""
    n = len(ids)
    ids_t = torch.tensor(ids)
    positions = torch.arange(n).expand(3, n).clone()
    runs = media_runs(ids, (IMAGE, VIDEO))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        pieces = [m[max(s, a) - a:min(e, b) - a].T for (a, b), m in zip(runs, media, strict=True)
                  if a < e and b > s]
        if pieces:
            positions = one_call_per_chunk(ids_t, ids, positions, pieces, s)
    return positions.tolist()


def _ours(ids_t, ids, positions, pieces, start):
    return place_media(ids_t, ids, positions, pieces, start, CONFIG)


def _vllm_alone(ids_t, ids, positions, pieces, start):
    from vllm.multimodal.video_prune.evs import recompute_mrope_positions

    return recompute_mrope_positions(ids_t, pieces, positions, start, START, IMAGE, VIDEO)[0]


def test_media_runs_finds_each_placeholder_run():
    ids, _ = _prompt(3)
    assert media_runs(ids, (IMAGE, VIDEO)) == [(4, 10), (14, 20)]


@pytest.mark.parametrize("prefix", [2, 9])  # a text before video 0 shorter / longer than it
@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 10, 64])
def test_any_chunking_gives_the_rule(prefix, chunk):
    ids, media = _prompt(prefix)
    assert _run_chunked(ids, media, chunk, _ours) == _expected(ids, media)


def test_vllm_0_32_alone_misplaces_a_medium_after_an_earlier_one():
    """Why place_media calls vLLM's function per medium: called per chunk, a chunk that starts
    in the text after video 0 takes the image for the rest of video 0 (and, unchunked, a text
    prefix longer than video 0 sends the image onto video 0)."""
    ids, media = _prompt(2)
    expected = _expected(ids, media)
    assert _run_chunked(ids, media, 12, _vllm_alone) != expected  # chunk 2 starts at token 12
    long_ids, long_media = _prompt(9)
    assert _run_chunked(long_ids, long_media, 64, _vllm_alone) != _expected(long_ids, long_media)
    assert _run_chunked(ids, media, 64, _vllm_alone) == expected  # one chunk, short prefix: fine
