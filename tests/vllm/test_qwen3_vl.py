"""EarlyTom on Qwen3-VL (docs/method.md, "EarlyTom on Qwen3-VL") on the real vLLM 0.32 CPU engine.

One in-process EarlyTom engine serves the module; the stock architecture (for equivalence) and a
chunked-prefill engine each run once in their own process (``run_engine``). Expected positions
are vLLM's own Qwen3-VL rule applied to the UNPRUNED prompt, read at the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from qwen_support import chat_prompt, exact_count, plugin_overrides
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Stock

from earlytom_vllm import EarlyTomConfig
from tests.vllm.test_qwen2_5_vl import first_logprobs, generate, model_read, seeded

pytestmark = pytest.mark.engine

ARCH = "EarlyTomQwen3VLForConditionalGeneration"
ARCHITECTURES = {
    "EarlyTomQwen3VLForConditionalGeneration": "Qwen3VLForConditionalGeneration",
    "EarlyTomQwen3VLMoeForConditionalGeneration": "Qwen3VLMoeForConditionalGeneration",
    "EarlyTomQwen3_5ForConditionalGeneration": "Qwen3_5ForConditionalGeneration",
    "EarlyTomQwen3_5MoeForConditionalGeneration": "Qwen3_5MoeForConditionalGeneration",
}
DEFAULT_RATIO = 0.1
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"  # the chat template's (outer markers)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
SYSTEM = "You are a helpful assistant."
FPS = 2.0
CHUNK = 32  # max_num_batched_tokens of the chunked engine

# A: 8 frames of 128 x 128 -> grid (4, 8, 8), 16 merged tokens per slice; B: 12 frames of
# 160 x 224 -> (6, 10, 14), 35 per slice; STATIC: one frame repeated (Stage I merges).
A = {"kind": "scene_video", "args": {"num_frames": 8, "size": 128, "seed": 1}, "fps": FPS}
B = {"kind": "scene_video", "args": {"num_frames": 12, "size": 224, "seed": 2},
     "crop": [160, 224], "fps": FPS}
STATIC = {"kind": "static_video", "args": {"num_frames": 16, "size": 128, "seed": 3}, "fps": FPS}
PICTURE = {"kind": "scene_video", "args": {"num_frames": 1, "size": 256, "seed": 4},
           "crop": [256, 192], "frame": 0}  # 16 x 12 patches -> 8 x 6 tokens
GRID = {"A": (4, 4, 4), "B": (6, 5, 7), "STATIC": (8, 4, 4)}  # merged (t, rows, columns)


prompt, count = chat_prompt, exact_count


def overrides(**earlytom):
    return plugin_overrides(ARCH, DEFAULT_RATIO, **earlytom)


@pytest.fixture(scope="module")
def checkpoint():
    from earlytom_vllm.checkpoints import ensure

    return ensure("qwen3_vl")


KWARGS_025 = {"earlytom": {"retain_ratio": 0.25}}


def expansion(tok, per_slot: list[int]) -> list[int]:
    """vLLM's Qwen3-VL expansion of video A with ``per_slot`` pads in each slot: slice i holds
    frames 2i, 2i+1 at FPS, its timestamp their mean time."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor

    cfg = ids_of(tok)
    stamps = [(2 * i + 0.5) / FPS for i in range(len(per_slot))]
    return list(Qwen3VLMultiModalProcessor.get_video_repl(
        tokens_per_frame=per_slot, timestamps=stamps, tokenizer=tok,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id, video_token_id=cfg.video_token_id).full)


def aligned_prompt(checkpoint) -> str:
    """A one-video prompt whose video's first row sits at a multiple of CHUNK, so that a prefill
    chunk starts exactly there (a system prompt of the right length in front)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    repl = expansion(tok, [1] * GRID["A"][0])
    into = repl.index(ids_of(tok).video_token_id)  # expansion tokens before the first row

    def first_row(text: str) -> int:
        return tok.encode(text).index(ids_of(tok).video_token_id) + into

    fillers = ("note " * n + "!" * m for n in range(1, 32) for m in range(CHUNK))
    return next(prompt(VIDEO, system=s) for s in fillers
                if first_row(prompt(VIDEO, system=s)) % CHUNK == 0)


CHUNKED_CASES = (("aligned", [A], KWARGS_025),
                 (prompt(VIDEO, VIDEO, question="Compare."), [A, B], None))


@pytest.fixture(scope="module")
def reference_jobs(run_engine, checkpoint):
    """The module's two engine processes, started at once and run in parallel with the
    in-process engine: the stock architecture, and EarlyTom with chunked prefill."""
    aligned = aligned_prompt(checkpoint)
    chunked = [{"prompt": aligned if p == "aligned" else p, "videos": v,
                **({"mm_processor_kwargs": k} if k else {})} for p, v, k in CHUNKED_CASES]
    stock = [{"prompt": prompt(VIDEO), "videos": [A]},
             {"prompt": prompt(VIDEO, system=SYSTEM), "videos": [A]},
             {"prompt": prompt(IMAGE), "images": [PICTURE]}]
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {"stock": pool.submit(run_engine, stock, model=checkpoint),
            "chunked": pool.submit(run_engine, chunked, model=checkpoint,
                                   hf_overrides=overrides(), trace=True,
                                   engine_kwargs={"max_num_batched_tokens": CHUNK,
                                                  "max_num_seqs": 4}),
            "aligned": aligned}
    yield jobs
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def qllm(checkpoint, reference_jobs):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine
    from vllm import LLM

    engine = LLM(model=str(checkpoint), enforce_eager=True, dtype="float32",
                 max_model_len=8192, limit_mm_per_prompt={"video": 2, "image": 1}, seed=0,
                 hf_overrides=overrides())
    yield engine
    del engine


@pytest.fixture(scope="module")
def stock(reference_jobs):
    """The stock architecture's results (its own process)."""
    return reference_jobs["stock"].result()


@functools.cache
def ids_of(tokenizer) -> SimpleNamespace:
    def tid(t: str) -> int:
        return tokenizer.convert_tokens_to_ids(t)

    return SimpleNamespace(vision_start_token_id=tid("<|vision_start|>"),
                           vision_end_token_id=tid("<|vision_end|>"),
                           image_token_id=tid("<|image_pad|>"),
                           video_token_id=tid("<|video_pad|>"),
                           vision_config=SimpleNamespace(spatial_merge_size=2))


def runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(ids):
        if ids[i] == token:
            j = i
            while j < len(ids) and ids[j] == token:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def stock_positions(tok, ids: list[int], videos: list[tuple[int, int, int, list]],
                    image_grid: tuple[int, int] | None = None) -> list[list[int]]:
    """The positions vLLM's own Qwen3-VL rule gives each token of ``ids`` in the UNPRUNED prompt.

    ``videos``: per video in prompt order ``(t, rows, columns, channels)`` with the trace's row
    channels ``(slice, row, column, slot, index)``. The unpruned prompt has ``rows * columns``
    pads in every slot; a kept row is the unpruned pad of (its slice, row, column)."""
    cfg = ids_of(tok)
    slots = runs(ids, cfg.video_token_id)
    full, where, stock_slots, features = [], [], [], []
    slot_iter = iter(slots)
    video_of_slot = []
    for v, (t, _, _, _) in enumerate(videos):
        for _ in range(t):
            video_of_slot.append((v, next(slot_iter)))
    slot_at = {a: (v, b) for v, (a, b) in video_of_slot}
    i = 0
    while i < len(ids):
        if i in slot_at:
            v, b = slot_at[i]
            h, w = videos[v][1], videos[v][2]
            stock_slots.append((v, len(full)))
            full += [cfg.video_token_id] * (h * w)
            where += [None] * (b - i)
            i = b
            continue
        where.append(len(full))
        full.append(ids[i])
        i += 1
    for v, (t, h, w, _) in enumerate(videos):
        first = next(s for vv, s in stock_slots if vv == v)
        outer = max(j for j in range(first - 1) if full[j] == cfg.vision_start_token_id)
        features.append(SimpleNamespace(
            modality="video", mm_position=SimpleNamespace(offset=outer + 1),
            data={"video_grid_thw": SimpleNamespace(data=torch.tensor([t, 2 * h, 2 * w]))}))
    if image_grid is not None:
        features.append(SimpleNamespace(
            modality="image", mm_position=SimpleNamespace(offset=full.index(cfg.image_token_id)),
            data={"image_grid_thw": SimpleNamespace(
                data=torch.tensor([1, 2 * image_grid[0], 2 * image_grid[1]]))}))
    positions, _ = Stock._get_mrope_input_positions(full, features, cfg)
    rows = iter([(v, ch) for v, video in enumerate(videos) for ch in video[3]])
    out = []
    for j in where:
        if j is None:
            v, (o, r, c, _, _) = next(rows)
            starts = [s for vv, s in stock_slots if vv == v]
            j = starts[o] + r * videos[v][2] + c
        out.append(positions[:, j].tolist())
    return [list(axis) for axis in zip(*out, strict=True)]


# --------------------------------------------------------------------------------------------------
# Registration and settings (no engine)


def test_the_plugin_registers_every_architecture_on_this_encoder():
    from vllm import ModelRegistry

    from earlytom_vllm.families import architecture_for_config, family_for_config
    from earlytom_vllm.vllm.plugin import register

    register()
    supported = ModelRegistry.get_supported_archs()
    for name, base in ARCHITECTURES.items():
        assert name in supported
        assert architecture_for_config({"architectures": [base]}) == name
        assert family_for_config({"architectures": [name]}).name == "qwen3_vl"
    for model_type in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        assert family_for_config({"model_type": model_type}).name == "qwen3_vl"


def test_default_prune_layers_follow_the_encoder_depth():
    from earlytom_vllm.families import get

    family = get("qwen3_vl")
    assert family.defaults_for({"vision_config": {"depth": 27}}).prune_layers == (10, 22, 24)
    assert family.defaults_for({"vision_config": {"depth": 24}}).prune_layers == (9, 19, 21)
    config = family.server_defaults({"vision_config": {"depth": 24}})
    assert config.prune_layers == (9, 19, 21)
    with pytest.raises(ValueError, match="depth 24"):
        family.server_defaults({"vision_config": {"depth": 24},
                                "earlytom": {"prune_layers": [10, 22, 24]}})
    # the benchmark's alternatives: the paper's earliest SigLIP placements at the same depth
    assert family.benchmark.extra_prune_layers == ((4, 15, 25), (6, 15, 21))
    model = {"vision_config": {"depth": 27}}
    for layers in family.benchmark.extra_prune_layers:
        config = family.request_config(family.server_defaults(model),
                                       {"prune_layers": list(layers)}, model)
        assert config.prune_layers == layers


# --------------------------------------------------------------------------------------------------
# Counts, layout, positions


def test_counts_and_the_per_slice_layout(qllm, stock):
    text = prompt(VIDEO)
    cfg = ids_of(qllm.get_tokenizer())
    for name, spec, r in (("A", seeded(A, 10), DEFAULT_RATIO), ("B", seeded(B, 11), 0.25)):
        t, h, w = GRID[name]
        out = generate(qllm, text, [spec], kwargs={"earlytom": {"retain_ratio": r}})
        ids = list(out.prompt_token_ids)
        rows = count(t, h * w, r)
        assert ids.count(cfg.video_token_id) == rows
        slots = runs(ids, cfg.video_token_id)
        assert len(slots) == t and {b - a for a, b in slots} == {rows // t}  # one slot per slice
        # the timestamps and markers of every slice stay: the outer pair plus one per slice
        assert ids.count(cfg.vision_start_token_id) == ids.count(cfg.vision_end_token_id) == t + 1
        trace = model_read(qllm, "last_trace")
        assert trace["rows"] == rows == len(trace["index"]) == len(trace["positions"])
        assert trace["grid_thw"] == [t, 2 * h, 2 * w]
    # A: 4 x ceil(1.6) = 8; B: 6 x ceil(8.75) = 54. Text (timestamps included) is stock's:
    a = generate(qllm, text, [A])
    assert len(a.prompt_token_ids) == stock[0]["prompt_len"] - 4 * 16 + 8


@pytest.mark.parametrize(("kwargs", "system"), [
    ({"retain_ratio": 1.0}, False), ({"enabled": False}, False), ({"method": "none"}, False),
    ({"retain_ratio": 1.0}, True)])
def test_uncompressed_requests_give_the_stock_prompt_positions_and_logprobs(qllm, stock, kwargs,
                                                                            system):
    ref = stock[1 if system else 0]
    out = generate(qllm, prompt(VIDEO, system=SYSTEM if system else None), [A],
                   kwargs={"earlytom": kwargs})
    assert len(out.prompt_token_ids) == ref["prompt_len"]
    ours = first_logprobs(out)
    assert ours.keys() == ref["logprobs"].keys()
    for k, v in ours.items():
        assert v == pytest.approx(ref["logprobs"][k], abs=1e-5)
    full = [[o, r, c, o, r * 4 + c] for o in range(4) for r in range(4) for c in range(4)]
    expected = stock_positions(qllm.get_tokenizer(), list(out.prompt_token_ids),
                               [(4, 4, 4, full)])
    assert model_read(qllm, "last_positions") == expected  # what the LLM used


def _video_feature(llm, ids: list[int], grid: list[int], config: EarlyTomConfig):
    """The video's mm feature as the runner hands it to get_mrope_input_positions."""
    from earlytom_vllm.plan import VideoPlan
    from earlytom_vllm.vllm.processing import PLAN_FIELD

    cfg = ids_of(llm.get_tokenizer())
    start = ids.index(cfg.vision_start_token_id) + 1  # after the outer vision_start
    end = len(ids) - ids[::-1].index(cfg.vision_end_token_id) - 1  # the outer vision_end
    plan = VideoPlan(grid[0], (grid[1] // 2) * (grid[2] // 2), 0, config)
    return SimpleNamespace(modality="video",
                           mm_position=SimpleNamespace(offset=start, length=end - start),
                           data={"video_grid_thw": SimpleNamespace(data=torch.tensor(grid)),
                                 PLAN_FIELD: SimpleNamespace(data=torch.tensor(plan.encode()))})


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_kept_tokens_take_their_stock_positions_and_text_keeps_its_own(qllm, system):
    """Stage I merges a static video's slices, so kept tokens come from fewer, earlier slices;
    every token of the compressed prompt is where the stock model puts it."""
    out = generate(qllm, prompt(VIDEO, system=system), [seeded(STATIC, 20 if system else 21)])
    trace = model_read(qllm, "last_trace")
    assert len(trace["origins"]) < 8 and trace["frames_per_layer"][:11] == [8] * 11
    assert trace["frames_per_layer"][11] < 8  # blocks after the first prune layer (10)
    ids = list(out.prompt_token_ids)
    final = model_read(qllm, "last_positions")
    assert final == stock_positions(qllm.get_tokenizer(), ids, [(8, 4, 4, trace["positions"])])
    # When the request was added (before encoding) every text position was already final.
    config = EarlyTomConfig(prune_layers=(10, 22, 24), retain_ratio=DEFAULT_RATIO)
    feature = _video_feature(qllm, ids, [8, 8, 8], config)
    before = qllm.apply_model(
        lambda m: m.get_mrope_input_positions(ids, [feature])[0].tolist())[0]
    text = [i for i, tok in enumerate(ids) if tok != ids_of(qllm.get_tokenizer()).video_token_id]
    assert [[axis[i] for i in text] for axis in before] == [[axis[i] for i in text]
                                                            for axis in final]


def test_two_videos_of_different_lengths_and_resolutions_in_one_prompt(qllm):
    text = prompt(VIDEO, VIDEO, question="Compare.", system=SYSTEM)
    out = generate(qllm, text, [seeded(A, 40), seeded(B, 41)])
    ids = list(out.prompt_token_ids)
    cfg = ids_of(qllm.get_tokenizer())
    rows_a, rows_b = count(4, 16, DEFAULT_RATIO), count(6, 35, DEFAULT_RATIO)
    assert ids.count(cfg.video_token_id) == rows_a + rows_b
    a, b = model_read(qllm, "recent_traces")[-2:]
    assert (a["grid_thw"], a["rows"]) == ([4, 8, 8], rows_a)
    assert (b["grid_thw"], b["rows"]) == ([6, 10, 14], rows_b)
    assert model_read(qllm, "last_positions") == stock_positions(
        qllm.get_tokenizer(), ids, [(4, 4, 4, a["positions"]), (6, 5, 7, b["positions"])])


def test_an_image_next_to_a_video_is_untouched(qllm, stock):
    img = generate(qllm, prompt(IMAGE), images=[PICTURE])
    assert len(img.prompt_token_ids) == stock[2]["prompt_len"]
    for k, v in first_logprobs(img).items():
        assert v == pytest.approx(stock[2]["logprobs"][k], abs=1e-5)
    both = generate(qllm, prompt(IMAGE, VIDEO), [seeded(A, 30)], images=[PICTURE])
    ids = list(both.prompt_token_ids)
    assert ids.count(ids_of(qllm.get_tokenizer()).image_token_id) == 8 * 6
    trace = model_read(qllm, "last_trace")
    assert model_read(qllm, "last_positions") == stock_positions(
        qllm.get_tokenizer(), ids, [(4, 4, 4, trace["positions"])], image_grid=(8, 6))


def test_a_follow_up_served_from_the_prefix_cache_keeps_its_positions(qllm):
    """The second identical request computes only its last tokens: the whole video comes from
    the prefix cache, and the text after it must already have its final positions."""
    text = prompt(VIDEO, question="What happens in this video? Describe it step by step. " * 30,
                  system=SYSTEM)
    video = seeded(A, 60)
    first = generate(qllm, text, [video])
    positions = model_read(qllm, "last_positions")
    again = generate(qllm, text, [video])
    ids = list(again.prompt_token_ids)
    video_end = runs(ids, ids_of(qllm.get_tokenizer()).video_token_id)[-1][1]
    assert again.num_cached_tokens >= video_end  # the whole video came from the cache
    assert [axis[video_end:] for axis in model_read(qllm, "last_positions")] == [
        axis[video_end:] for axis in positions]
    first_lp, again_lp = first_logprobs(first), first_logprobs(again)
    assert first_lp.keys() == again_lp.keys()
    for k, v in first_lp.items():
        assert v == pytest.approx(again_lp[k], abs=1e-5)


def test_chunked_prefill_gives_the_unchunked_positions_and_logprobs(qllm, reference_jobs):
    """Prefill in chunks of 32 tokens: one request aligned so that a chunk starts exactly on
    its video's first row (where vLLM's own EVS crashes, vLLM issue 48833), chunk edges inside
    every slot, and two videos in one request."""
    cfg = ids_of(qllm.get_tokenizer())
    chunked = reference_jobs["chunked"].result()
    for res, (text, videos, kw) in zip(chunked, CHUNKED_CASES, strict=True):
        aligned = text == "aligned"
        out = generate(qllm, reference_jobs["aligned"] if aligned else text, videos, kwargs=kw)
        ids = list(out.prompt_token_ids)
        assert res["prompt_len"] == len(ids) > CHUNK * 2  # 3+ chunks
        if aligned:
            assert ids.index(cfg.video_token_id) % CHUNK == 0  # a chunk starts on row 0
        assert res["positions"][0] == model_read(qllm, "last_positions")
        ours = first_logprobs(out)
        assert ours.keys() == res["logprobs"].keys()
        for k, v in ours.items():
            assert v == pytest.approx(res["logprobs"][k], abs=1e-4)


def test_bad_request_settings_are_rejected_naming_the_field(qllm):
    with pytest.raises(ValueError, match="depth 27") as info:
        generate(qllm, prompt(VIDEO), [A], kwargs={"earlytom": {"prune_layers": [10, 22, 27]}})
    assert getattr(info.value, "parameter", None) == "mm_processor_kwargs.earlytom.prune_layers"
    processor_defaults = qllm.llm_engine.model_config.hf_config
    assert processor_defaults.vision_config.deepstack_visual_indexes == [8, 16, 24]


# --------------------------------------------------------------------------------------------------
# The encoder, driven slice-batched, and deepstack


def _pixels(t: int, h: int, w: int, seed: int, drift: float) -> torch.Tensor:
    """``[t*h*w, 3*2*16*16]`` patches of one picture that drifts a little per slice (so Stage I
    merges with weights other than 1)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(h * w, 3 * 2 * 16 * 16, generator=g)
    return torch.cat([base + drift * i * torch.randn(h * w, base.shape[1], generator=g)
                      for i in range(t)])


def test_driven_blocks_equal_the_stock_encoder(qllm):
    """vLLM's blocks driven on [F, N, C] slices give the stock encoder's output (main and
    deepstack columns), and slices that leave mid-encoder equal a stock run of the others."""
    from earlytom_vllm.core import compress_video
    from earlytom_vllm.vllm.qwen3_vl import VllmQwen3VisionTower

    h, w = 10, 14
    pixels = _pixels(4, h, w, seed=7, drift=1.0)

    def compare(model):
        v = model.visual
        with torch.inference_mode():
            stock_out = v(pixels, grid_thw=[[4, h, w]])  # [4*5*7, 4*D]
            tower = VllmQwen3VisionTower(v, h, w)
            none = compress_video(tower.embed(pixels, 4), tower, EarlyTomConfig(method="none"))
            tower = VllmQwen3VisionTower(v, h, w)
            x = tower.embed(pixels, 4)
            for i in range(5):
                x = tower.layer(i, x)
            x = x[[0, 2]]  # slices 0 and 2 go on (deepstack taps all come later)
            for i in range(5, tower.num_layers):
                x = tower.layer(i, x)
            pair = tower.project_and_pool(x).reshape(-1, stock_out.shape[-1])
            # the kept rows alone through every merger = those rows of the whole projection
            kept = torch.tensor([0, 3, 4, 17, 34, 35, 50, 69])
            rows = tower.project_rows(x, kept)
            per = h * w
            stock_pair = v(torch.cat((pixels[:per], pixels[2 * per:3 * per])),
                           grid_thw=[[2, h, w]])
        return ((none.tokens - stock_out).abs().max().item(),
                (pair - stock_pair).abs().max().item(), tuple(none.tokens.shape),
                (rows - pair[kept]).abs().max().item(), tuple(rows.shape))

    diff, diff_pair, shape, diff_rows, rows_shape = qllm.apply_model(compare)[0]
    assert shape == (4 * 5 * 7, 4 * 128)  # main + 3 deepstack levels of D = 128
    assert diff < 1e-5 and diff_pair < 1e-5
    assert rows_shape == (8, 4 * 128) and diff_rows < 1e-5


def test_hand_written_block_matches_the_vllm_block(qllm):
    from earlytom_vllm.vllm.qwen3_vl import VllmQwen3VisionTower

    hidden = torch.randn(3, 8 * 8, 64, generator=torch.Generator().manual_seed(5))

    def compare(model):
        tower = VllmQwen3VisionTower(model.visual, 8, 8)
        with torch.inference_mode():
            ours, received = tower.layer_with_received(24, hidden, chunk_frames=2)
            stock_out = tower.layer(24, hidden)
            pooled = tower.pool_received(received)
        return ((ours - stock_out).abs().max().item(), received.sum(dim=1).tolist(),
                tuple(pooled.shape), pooled.sum(dim=1).tolist())

    diff, sums, pooled_shape, pooled_sums = qllm.apply_model(compare)[0]
    assert diff < 1e-5
    assert sums == pytest.approx([1.0] * 3, abs=1e-5)
    assert pooled_shape == (3, 16) and pooled_sums == pytest.approx([0.25] * 3, abs=1e-5)


def test_deepstack_follows_the_kept_tokens(qllm):
    """Against a plain reference on captured features: every block's output is captured on a
    run without merging decisions of its own; the reference merges each deepstack tap with
    every later Stage I merge (frame by frame, with its weights), runs the tap's own merger,
    and takes the rows Stage II kept. The model's rows must be [main | tap 8 | tap 16 | tap 24]
    of the same tokens, exactly ``count`` of each."""
    from earlytom_vllm.core import compress_video
    from earlytom_vllm.vllm.qwen3_vl import VllmQwen3VisionTower

    t, h, w = 12, 8, 8
    pixels = _pixels(t, h, w, seed=3, drift=0.02)
    config = EarlyTomConfig(prune_layers=(8, 16, 24), retain_ratio=0.25, tau=0.3)

    def run(model):
        v = model.visual
        with torch.inference_mode():
            tower = VllmQwen3VisionTower(v, h, w)
            outputs, merges = {}, []
            layer, layer_r, follow = tower.layer, tower.layer_with_received, tower.follow_merge

            def capture(i, x):
                outputs[i] = layer(i, x)
                return outputs[i]

            def capture_r(i, x, chunk):
                out, rec = layer_r(i, x, chunk)
                outputs[i] = out
                return out, rec

            def record(i, plan):
                merges.append((i, plan))
                follow(i, plan)

            tower.layer, tower.layer_with_received, tower.follow_merge = capture, capture_r, record
            result = compress_video(tower.embed(pixels, t), tower, config)

            def plain(x, plan):  # frame by frame
                return torch.stack([wt * x[a] + (1 - wt) * x[b] if wt != 1.0 else x[a]
                                    for a, b, wt in zip(plan.first, plan.second, plan.weight,
                                                        strict=True)])

            c = v.hidden_size
            levels = [v.merger(outputs[len(v.blocks) - 1].reshape(-1, 1, c))]
            for k, layer_i in enumerate(v.deepstack_visual_indexes):
                x = outputs[layer_i]
                for merged_at, plan in merges:
                    if merged_at >= layer_i:
                        x = plain(x, plan)
                levels.append(v.deepstack_merger_list[k](x.reshape(-1, 1, c)))
            reference = torch.cat(levels, dim=1)[result.index]  # [count, 4*D]
            blended = any(wt != 1.0 for _, plan in merges for wt in plan.weight)
            return ((result.tokens - reference).abs().max().item(), tuple(result.tokens.shape),
                    result.frames_out, blended, [i for i, _ in merges])

    diff, shape, frames_out, blended, merged_at = qllm.apply_model(run)[0]
    d = qllm.llm_engine.model_config.hf_config.vision_config.out_hidden_size
    assert merged_at == [8, 16, 24]
    assert frames_out < t and blended  # Stage I merged slices, with real blends
    assert shape == (count(t, 16, 0.25), 4 * d)
    assert diff < 1e-5


def test_the_qwen3_5_encoder_without_deepstack(qllm):
    """Qwen3.5 and Qwen3.5-MoE run the same encoder class without deepstack levels: the tower
    equals the stock encoder at full count and returns exactly ``count`` rows of width D."""
    from transformers import Qwen3_5VisionConfig
    from vllm.model_executor.models.qwen3_vl import Qwen3_VisionTransformer

    from earlytom_vllm.core import compress_video
    from earlytom_vllm.vllm.qwen3_vl import VllmQwen3VisionTower

    vc = Qwen3_5VisionConfig(depth=27, hidden_size=64, intermediate_size=128, num_heads=2,
                             out_hidden_size=128, num_position_embeddings=48 * 48)
    t, h, w = 6, 8, 8
    pixels = _pixels(t, h, w, seed=9, drift=0.02)

    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    vllm_config = qllm.llm_engine.vllm_config  # the in-process engine's

    def run(model):
        torch.manual_seed(0)
        with set_current_vllm_config(vllm_config):
            v = Qwen3_VisionTransformer(vc).to(model.visual.device)
        with torch.no_grad():
            for p in v.parameters():
                p.normal_(0.0, 0.05)
        # what the loader does after loading weights (the CPU linear kernels are set up there)
        process_weights_after_loading(v, vllm_config.model_config, model.visual.device)
        with torch.inference_mode():
            stock_out = v(pixels, grid_thw=[[t, h, w]])
            tower = VllmQwen3VisionTower(v, h, w)
            none = compress_video(tower.embed(pixels, t), tower, EarlyTomConfig(method="none"))
            tower = VllmQwen3VisionTower(v, h, w)
            kept = compress_video(tower.embed(pixels, t), tower,
                                  EarlyTomConfig(prune_layers=(10, 22, 24), retain_ratio=0.25))
        return ((none.tokens - stock_out).abs().max().item(), tuple(kept.tokens.shape),
                list(v.deepstack_visual_indexes))

    diff, shape, deepstack = qllm.apply_model(run)[0]
    assert deepstack == [] and diff < 1e-5
    assert shape == (count(t, 16, 0.25), 128)


def test_a_calls_videos_of_one_grid_are_encoded_together(qllm):
    """The videos of one encoder call that share a grid and settings go through the encoder as
    one batch (every block once over all their slices, Stage I and II per video, deepstack taps
    following each video's merges), and each comes out as it does alone: same rows, positions
    and kept tokens. Another grid, other settings, and a video that compresses nothing stay
    apart."""
    from earlytom_vllm.plan import VideoPlan
    from earlytom_vllm.vllm.qwen3_vl import VllmQwen3VisionTower

    base = EarlyTomConfig(prune_layers=(8, 16, 24), tau=0.3, retain_ratio=0.25)
    videos = [  # (t, h, w, seed, config)
        (12, 8, 8, 3, base),
        (8, 8, 8, 4, dataclasses.replace(base, retain_ratio=0.15)),  # same batch, other ratio
        (6, 10, 14, 5, base),  # another grid: its own batch
        (4, 8, 8, 6, dataclasses.replace(base, tau=0.5)),  # other settings: its own batch
        (4, 8, 8, 7, dataclasses.replace(base, retain_ratio=1.0)),  # stock path
    ]
    items = [(_pixels(t, h, w, seed=seed, drift=0.02), [t, h, w],
              VideoPlan(num_frames=t, tokens_per_frame=(h // 2) * (w // 2), extra_rows=0,
                        config=cfg)) for t, h, w, seed, cfg in videos]

    def run(model):
        together = model._encode_all(items, VllmQwen3VisionTower)
        alone = [model._encode_all([item], VllmQwen3VisionTower)[0] for item in items]
        out = []
        for (f2, r2, _, pos2), (f1, r1, _, pos1) in zip(together, alone, strict=True):
            out.append(((f2 - f1).abs().max().item(), torch.equal(pos2, pos1),
                        None if r2 is None else (r2.batch, torch.equal(r2.index, r1.index),
                                                 r2.frames_per_layer == r1.frames_per_layer,
                                                 r2.frames_out < r2.frames_per_layer[0])))
        return out

    result = qllm.apply_model(run)[0]
    assert [r[2][0] if r[2] else None for r in result] == [2, 2, 1, 1, None]
    for diff, same_positions, record in result:
        assert diff < 1e-5 and same_positions
        if record is not None:
            assert record[1] and record[2]
    assert result[0][2][3]  # the long drifting video merged slices inside the batch
