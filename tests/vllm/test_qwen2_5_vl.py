"""EarlyTom on Qwen2.5-VL (method.md section 7) on the real vLLM 0.32 CPU engine.

One in-process EarlyTom engine serves the module; the stock architecture (for equivalence), vLLM's
own EVS (the CPU-runner fix), tensor parallelism and chunked prefill each run once in their own
engine process (``run_engine``), their results shared by the tests that read them.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import pytest
import torch
from qwen_support import chat_prompt, exact_count, plugin_overrides
from vllm import SamplingParams

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.plan import VideoPlan
from tests.vllm._runner import medium

pytestmark = pytest.mark.engine

ARCH = "EarlyTomQwen2_5_VLForConditionalGeneration"
STOCK_ARCH = "Qwen2_5_VLForConditionalGeneration"
DEFAULT_RATIO = 0.1
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
GREEDY = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
TOKENS_PER_SECOND = 2  # the tiny checkpoint's vision_config.tokens_per_second
FPS = 2.0  # second_per_grid_t = temporal patch 2 / fps = 1.0, so a slice is 2 time steps

# Videos as run_engine specs (the same builder in-process): A is 8 frames of 224 x 224, i.e.
# grid (4, 16, 16), 64 merged tokens per slice; B is 12 frames of 280 x 392 (grid (6, 20, 28),
# 140 tokens per slice, windows padded at the edges); STATIC is one frame repeated.
A = {"kind": "scene_video", "args": {"num_frames": 8, "size": 224, "seed": 1}, "fps": FPS}
B = {"kind": "scene_video", "args": {"num_frames": 12, "size": 392, "seed": 2},
     "crop": [280, 392], "fps": FPS}
STATIC = {"kind": "static_video", "args": {"num_frames": 16, "size": 224, "seed": 3}, "fps": FPS}
PICTURE = {"kind": "scene_video", "args": {"num_frames": 1, "size": 336, "seed": 4},
           "crop": [336, 252], "frame": 0}
GRID = {"A": (4, 8, 8), "B": (6, 10, 14), "STATIC": (8, 8, 8)}  # merged (t, rows, columns)


def seeded(spec: dict, seed: int) -> dict:
    """The same kind of medium with other pixels. vLLM caches encoder outputs by content, so a
    test that reads the model's trace of a video uses a video no other test sent."""
    return {**spec, "args": {**spec["args"], "seed": seed}}


prompt, expected_count = chat_prompt, exact_count


def overrides(**earlytom):
    return plugin_overrides(ARCH, DEFAULT_RATIO, **earlytom)


@pytest.fixture(scope="module")
def qwen_checkpoint():
    from earlytom_vllm.checkpoints import ensure

    return ensure("qwen2_5_vl")


@pytest.fixture(scope="module")
def qllm(qwen_checkpoint):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine
    from vllm import LLM

    engine = LLM(model=str(qwen_checkpoint), enforce_eager=True, dtype="float32",
                 max_model_len=8192, limit_mm_per_prompt={"video": 2, "image": 1}, seed=0,
                 hf_overrides=overrides())
    yield engine
    del engine


@pytest.fixture(scope="module")
def engine_job(run_engine, qwen_checkpoint):
    """``engine_job(name)``: the results of one of the module's engine processes, run once."""

    @functools.cache
    def job(name: str):
        if name == "stock":  # the stock architecture, no overrides
            reqs = [{"prompt": prompt(VIDEO), "videos": [A]},
                    {"prompt": prompt(IMAGE), "images": [PICTURE]},
                    {"prompt": prompt(IMAGE, VIDEO), "images": [PICTURE], "videos": [A]}]
            return run_engine(reqs, model=qwen_checkpoint)
        if name == "evs":  # vLLM's own EVS on the CPU engine
            return run_engine([{"prompt": prompt(VIDEO), "videos": [A]}], model=qwen_checkpoint,
                              engine_kwargs={"video_pruning_rate": 0.75})
        if name == "tp2":
            return run_engine([{"prompt": prompt(VIDEO), "videos": [seeded(B, 50)]}],
                              model=qwen_checkpoint, hf_overrides=overrides(),
                              tensor_parallel_size=2, trace=True)
        if name == "chunked":  # prefill in chunks of 32 tokens, chunk edges inside the videos
            reqs = [{"prompt": prompt(VIDEO), "videos": [A],
                     "mm_processor_kwargs": {"earlytom": {"retain_ratio": 0.25}}},
                    {"prompt": prompt(VIDEO, VIDEO), "videos": [A, B]}]
            return run_engine(reqs, model=qwen_checkpoint, hf_overrides=overrides(), trace=True,
                              engine_kwargs={"max_num_batched_tokens": 32, "max_num_seqs": 4})
        raise KeyError(name)

    return job


def generate(llm, text, videos=(), images=(), kwargs=None, params=GREEDY):
    data = {}
    if videos:
        data["video"] = [medium(v) for v in videos]
        data["video"] = data["video"][0] if len(videos) == 1 else data["video"]
    if images:
        data["image"] = medium(images[0])
    req = {"prompt": text, "multi_modal_data": data}
    if kwargs is not None:
        req["mm_processor_kwargs"] = kwargs
    return llm.generate(req, params, use_tqdm=False)[0]


def text_tokens(llm, text: str) -> int:
    """Prompt tokens besides the media placeholders (each placeholder is one token)."""
    return len(llm.get_tokenizer().encode(text)) - text.count("_pad|>")


def first_logprobs(out) -> dict[str, float]:
    return {str(k): v.logprob for k, v in out.outputs[0].logprobs[0].items()}


def model_read(llm, name: str):
    from earlytom_vllm.vllm import observe

    return llm.apply_model(getattr(observe, name))[0]


def token_ids(llm) -> tuple[int, int]:
    tok = llm.get_tokenizer()
    return tok.convert_tokens_to_ids("<|image_pad|>"), tok.convert_tokens_to_ids("<|video_pad|>")


def image_positions(rows: int, cols: int) -> list[list[int]]:
    """A stock image's EVS position channels: time 0, its rows and columns, text at max side."""
    return [[0, r, c, max(rows, cols)] for r in range(rows) for c in range(cols)]


def prompt_positions(ids: list[int], media: list[list[list[int]]], pads: tuple[int, ...]):
    """The M-RoPE positions ``[3][N]`` of a prompt whose media runs (in order) have the given
    ``(t, h, w, text offset)`` channels: text counts up by one, a medium sits at ``base + (t, h,
    w)`` with ``base`` one past the text before it, and text resumes at ``base + offset``.
    (An independent statement of the stock rule; checked against vLLM's below.)"""
    out: list[list[int]] = [[], [], []]
    nxt, i, runs = 0, 0, iter(media)
    while i < len(ids):
        if ids[i] in pads:
            run = next(runs)
            for t, h, w, _ in run:
                for axis, v in enumerate((t, h, w)):
                    out[axis].append(nxt + v)
            i, nxt = i + len(run), nxt + run[0][3]
            continue
        for axis in range(3):
            out[axis].append(nxt)
        nxt, i = nxt + 1, i + 1
    return out


def dict_feature(feature, kwargs):
    """The same video feature as the runner hands it to the model, with its EarlyTom plan."""
    from earlytom_vllm.vllm.processing import PLAN_FIELD

    config = EarlyTomConfig(prune_layers=(7, 15, 23), retain_ratio=DEFAULT_RATIO).merged(
        kwargs["earlytom"])
    plan = torch.tensor(VideoPlan(4, 64, 0, config).encode())
    return SimpleNamespace(modality=feature.modality, mm_position=SimpleNamespace(
        offset=feature.mm_position.offset, length=4 * 64),
        data={**feature.data, PLAN_FIELD: SimpleNamespace(data=plan)})


def rule_positions(trace: dict, t_factor: float = FPS / 2 * TOKENS_PER_SECOND):
    """The positions section 7 gives a trace's kept tokens: time of the earliest original slice
    of the frame (x second_per_grid_t x tokens_per_second), row and column in the merged grid."""
    t, h, w = trace["grid_thw"]
    rows, cols = h // 2, w // 2
    extent = max(int((t - 1) * t_factor), rows - 1, cols - 1) + 1
    origins = trace["origins"] if trace["origins"] is not None else list(range(t))
    index = trace["index"] if trace["index"] is not None else range(t * rows * cols)
    per = rows * cols
    return [[int(origins[i // per] * t_factor), (i % per) // cols, (i % per) % cols, extent]
            for i in index]


# --------------------------------------------------------------------------------------------------
# Counts


def test_plugin_registers_the_qwen_architecture():
    from vllm import ModelRegistry

    from earlytom_vllm.families import architectures, family_for_config, get
    from earlytom_vllm.vllm.plugin import register

    register()
    register()
    assert get("qwen2_5_vl").architecture == ARCH and ARCH in architectures()
    assert family_for_config({"model_type": "qwen2_5_vl"}).architecture == ARCH
    assert ARCH in ModelRegistry.get_supported_archs()


@pytest.mark.parametrize("ratio", [DEFAULT_RATIO, 0.25])
def test_video_prompt_length_follows_the_budget_of_its_grid(qllm, ratio):
    kwargs = None if ratio == DEFAULT_RATIO else {"earlytom": {"retain_ratio": ratio}}
    for name, spec in (("A", seeded(A, 10)), ("B", seeded(B, 11))):
        t, h, w = GRID[name]
        out = generate(qllm, prompt(VIDEO), [spec], kwargs=kwargs)
        rows = expected_count(t, h * w, ratio)
        assert len(out.prompt_token_ids) == text_tokens(qllm, prompt(VIDEO)) + rows, name
        trace = model_read(qllm, "last_trace")
        assert trace["rows"] == rows == len(trace["index"]) == len(trace["positions"])
        assert trace["grid_thw"] == [t, 2 * h, 2 * w]
        assert len(out.outputs[0].token_ids) == 1
    # A: 4 x ceil(6.4) = 28 at 10%, 4 x 16 = 64 at 25%; B: 6 x 14 = 84, 6 x 35 = 210.


def test_kept_tokens_take_the_earliest_slice_time_and_their_grid_position(qllm):
    text = prompt(VIDEO)
    out = generate(qllm, text, [seeded(STATIC, 20)])
    trace = model_read(qllm, "last_trace")
    assert len(trace["origins"]) < 8  # slices merged, so time is remapped
    assert trace["origins"][0] == 0 and trace["origins"] == sorted(trace["origins"])
    assert trace["positions"] == rule_positions(trace)
    # ... and the prompt's M-RoPE positions the LLM used are those, placed after the text.
    ids = list(out.prompt_token_ids)
    assert model_read(qllm, "last_positions") == prompt_positions(
        ids, [trace["positions"]], token_ids(qllm))


def test_static_video_runs_fewer_slices_after_block_7(qllm):
    generate(qllm, prompt(VIDEO), [seeded(STATIC, 21)])
    frames = model_read(qllm, "last_trace")["frames_per_layer"]
    assert len(frames) == 32
    assert frames[:8] == [8] * 8  # blocks 0..7 (7: the first prune layer) see all 8 slices
    assert frames[8] < 8  # block 8 onwards runs on merged slices
    assert frames[-1] <= frames[16] <= frames[8]
    totals = model_read(qllm, "layer_frames")
    assert totals["videos"] >= 1 and totals["layer_frames"][0] >= 8


@pytest.mark.parametrize("kwargs", [{"earlytom": {"retain_ratio": 1.0}},
                                    {"earlytom": {"enabled": False}},
                                    {"earlytom": {"method": "none"}}])
def test_uncompressed_requests_give_the_stock_prompt_positions_and_logprobs(qllm, engine_job,
                                                                            kwargs):
    stock = engine_job("stock")[0]
    out = generate(qllm, prompt(VIDEO), [A], kwargs=kwargs)
    assert len(out.prompt_token_ids) == stock["prompt_len"]
    ours = first_logprobs(out)
    assert ours.keys() == stock["logprobs"].keys()
    for k, v in ours.items():
        assert v == pytest.approx(stock["logprobs"][k], abs=1e-5)
    # Positions: exactly what vLLM's own Qwen2.5-VL rule computes for the full prompt.
    ids = list(out.prompt_token_ids)
    _, video_id = token_ids(qllm)
    feature = SimpleNamespace(
        modality="video", mm_position=SimpleNamespace(offset=ids.index(video_id)),
        data={"video_grid_thw": SimpleNamespace(data=torch.tensor([4, 16, 16])),
              "second_per_grid_ts": SimpleNamespace(data=torch.tensor(2 / FPS))})
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as Stock

    stock_positions, ours_before = qllm.apply_model(lambda m: (
        Stock.get_mrope_input_positions(m, ids, [feature])[0].tolist(),
        m.get_mrope_input_positions(ids, [dict_feature(feature, kwargs)])[0].tolist()))[0]
    assert model_read(qllm, "last_positions") == stock_positions  # what the LLM used
    assert ours_before == stock_positions  # ... and already before the video was encoded
    # The test's own statement of the rule agrees with vLLM's.
    trace = model_read(qllm, "last_trace")
    assert trace["index"] is None and trace["rows"] == 4 * 64
    assert prompt_positions(ids, [rule_positions(trace)], token_ids(qllm)) == stock_positions


def test_a_repeated_request_served_from_the_prefix_cache_keeps_its_positions(qllm):
    """The second identical request computes only its last tokens (the video's KV comes from the
    prefix cache, its embeddings are never gathered): the text after the video must already
    have its final positions, and does, since they do not depend on which tokens were kept."""
    # long enough that whole KV blocks (128 tokens on CPU) past the video are cached
    text = prompt(VIDEO, question="What happens in this video? Describe it step by step. " * 30)
    video = seeded(A, 60)
    first = generate(qllm, text, [video])
    positions = model_read(qllm, "last_positions")
    again = generate(qllm, text, [video])
    ids = list(again.prompt_token_ids)
    video_end = len(ids) - ids[::-1].index(token_ids(qllm)[1])  # one past the last video token
    assert again.num_cached_tokens >= video_end  # the whole video came from the cache
    # The video's own positions there are provisional (never read: its KV is cached); the
    # text's, which the new tokens attend from, are the final ones.
    assert [axis[video_end:] for axis in model_read(qllm, "last_positions")] == [
        axis[video_end:] for axis in positions]
    first_lp, again_lp = first_logprobs(first), first_logprobs(again)
    assert first_lp.keys() == again_lp.keys()
    for k, v in first_lp.items():
        assert v == pytest.approx(again_lp[k], abs=1e-5)


def test_an_image_next_to_a_video_is_untouched(qllm, engine_job):
    _, stock_image, stock_both = engine_job("stock")
    img = generate(qllm, prompt(IMAGE), images=[PICTURE])
    assert len(img.prompt_token_ids) == stock_image["prompt_len"]
    n_image = stock_image["prompt_len"] - text_tokens(qllm, prompt(IMAGE))
    assert n_image == (336 // 28) * (252 // 28)  # 12 x 9 merged tokens, stock count
    for k, v in first_logprobs(img).items():
        assert v == pytest.approx(stock_image["logprobs"][k], abs=1e-5)
    image_pos = image_positions(12, 9)  # stock image positions (text resumes at 12, not 9)
    assert model_read(qllm, "last_positions") == prompt_positions(
        list(img.prompt_token_ids), [image_pos], token_ids(qllm))

    both = generate(qllm, prompt(IMAGE, VIDEO), [seeded(A, 30)], images=[PICTURE])
    budget = expected_count(4, 64, DEFAULT_RATIO)
    assert len(both.prompt_token_ids) == text_tokens(qllm, prompt(IMAGE, VIDEO)) + n_image + budget
    assert stock_both["prompt_len"] - len(both.prompt_token_ids) == 4 * 64 - budget
    trace = model_read(qllm, "last_trace")
    assert model_read(qllm, "last_positions") == prompt_positions(
        list(both.prompt_token_ids), [image_pos, rule_positions(trace)], token_ids(qllm))


def test_two_videos_of_different_lengths_and_resolutions_in_one_prompt(qllm):
    text = prompt(VIDEO, VIDEO, question="Compare.")
    out = generate(qllm, text, [seeded(A, 40), seeded(B, 41)])
    rows_a, rows_b = expected_count(4, 64, DEFAULT_RATIO), expected_count(6, 140, DEFAULT_RATIO)
    assert len(out.prompt_token_ids) == text_tokens(qllm, text) + rows_a + rows_b
    a, b = model_read(qllm, "recent_traces")[-2:]
    assert (a["grid_thw"], a["rows"]) == ([4, 16, 16], rows_a)
    assert (b["grid_thw"], b["rows"]) == ([6, 20, 28], rows_b)
    assert model_read(qllm, "last_positions") == prompt_positions(
        list(out.prompt_token_ids), [rule_positions(a), rule_positions(b)], token_ids(qllm))


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(("bad", "field", "message"), [
    ({"prune_layers": [7, 15, 22]}, "earlytom.prune_layers", "full-attention block"),
    ({"prune_layers": [7, 15, 32]}, "earlytom.prune_layers", "depth 32"),
    ({"retain_ratio": 0}, "earlytom.retain_ratio", "must be in"),
    ({"max_frames": 64}, "earlytom.max_frames", "server-wide"),
    ({"unknown_key": 1}, "earlytom.unknown_key", "not a known setting"),
])
def test_bad_request_settings_are_rejected_naming_the_field(qllm, bad, field, message):
    with pytest.raises(ValueError, match=message) as info:
        generate(qllm, prompt(VIDEO), [A], kwargs={"earlytom": bad})
    assert getattr(info.value, "parameter", None) == f"mm_processor_kwargs.{field}"
    assert len(generate(qllm, prompt(VIDEO), [A]).outputs[0].token_ids) == 1  # still serving


def test_bad_server_wide_prune_layers_fail_at_start_up(qwen_checkpoint):
    """A last prune layer that is not a full-attention block, in --hf-overrides, stops the engine
    when it starts, naming the field."""
    import json
    import subprocess
    import sys

    script = ("import json, sys\nfrom vllm import LLM\n"
              "LLM(model=sys.argv[1], enforce_eager=True, dtype='float32', max_model_len=4096,"
              " hf_overrides=json.loads(sys.argv[2]))\n")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    bad = overrides(prune_layers=[7, 15, 22])
    proc = subprocess.run([sys.executable, "-c", script, str(qwen_checkpoint), json.dumps(bad)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "hf_overrides.earlytom.prune_layers" in proc.stderr, proc.stderr[-3000:]
    assert "full-attention block (7, 15, 23, 31)" in proc.stderr


def test_family_defaults_and_profiling_dummy(qllm):
    from vllm.multimodal import MULTIMODAL_REGISTRY

    processor = MULTIMODAL_REGISTRY.create_processor(qllm.llm_engine.model_config)
    info = processor.info
    assert info.earlytom_defaults.prune_layers == (7, 15, 23)
    assert info.family.full_attention_blocks(info.get_hf_config()) == (7, 15, 23, 31)
    assert info.get_num_frames_with_most_features(8192, {"video": 1}) == 32  # max_frames
    dummy = processor.get_dummy_mm_inputs({"video": 1})
    (placeholder,) = dummy["mm_placeholders"]["video"]
    assert placeholder.length == 16 * 16 * 16  # 32 frames of 448 x 448 at full count
    # The dummy encode itself (the CPU runner never profiles), compressed at the default.
    pixels = torch.zeros(16 * 32 * 32, 3 * 2 * 14 * 14)
    plan = VideoPlan(16, 256, 0, EarlyTomConfig(prune_layers=(7, 15, 23)))
    rows = qllm.apply_model(
        lambda m: m._embed_videos({"type": "pixel_values_videos", "pixel_values_videos": pixels,
                                   "video_grid_thw": torch.tensor([[16, 32, 32]]),
                                   "second_per_grid_ts": torch.tensor([1.0])},
                                  torch.tensor([plan.encode()]))[0].shape)[0]
    assert tuple(rows) == (16 * 26, 128 + 4)  # 16 x ceil(25.6) rows, D + 4 position channels


# --------------------------------------------------------------------------------------------------
# The encoder, driven slice-batched


def test_slice_batched_blocks_equal_the_stock_encoder(qllm):
    """vLLM's blocks driven on [F, N, C] slices (window order, tables rebuilt per slice count)
    give the stock encoder's output, also when slices leave after block 7 (the remaining ones
    must then equal a stock run of those slices alone: attention never crosses slices)."""
    from earlytom_vllm.core import compress_video
    from earlytom_vllm.vllm.qwen2_5_vl import VllmQwenVisionTower

    g = torch.Generator().manual_seed(7)
    h, w = 20, 28  # not a whole number of windows: padded windows at the edges
    pixels = torch.randn(4 * h * w, 3 * 2 * 14 * 14, generator=g)

    def compare(model):
        v = model.visual
        with torch.inference_mode():
            stock = v(pixels, grid_thw=[[4, h, w]])  # [4*10*14, D]
            tower = VllmQwenVisionTower(v, h, w)
            none = compress_video(tower.embed(pixels, 4), tower, EarlyTomConfig(method="none"))
            x = tower.embed(pixels, 4)
            for i in range(8):
                x = tower.layer(i, x)
            x = x[[0, 2]]  # slices 0 and 2 go on
            for i in range(8, tower.num_layers):
                x = tower.layer(i, x)
            pair = tower.project_and_pool(x).reshape(-1, stock.shape[-1])
            # the kept rows alone through the merger (window order inside) = those raster rows
            kept = torch.tensor([0, 1, 13, 14, 77, 139, 140, 200, 279])
            rows = tower.project_rows(x, kept)
            per = h * w
            keep = torch.cat((pixels[:per], pixels[2 * per:3 * per]))
            stock_pair = v(keep, grid_thw=[[2, h, w]])
        return ((none.tokens - stock).abs().max().item(),
                (pair - stock_pair).abs().max().item(), none.tokens.shape[0],
                (rows - pair[kept]).abs().max().item(), rows.shape[0])

    diff, diff_pair, rows, diff_rows, kept_rows = qllm.apply_model(compare)[0]
    assert rows == 4 * 10 * 14
    assert diff < 1e-5 and diff_pair < 1e-5
    assert kept_rows == 9 and diff_rows < 1e-5


def test_hand_written_block_matches_the_vllm_block(qllm):
    """The one hand-written block (softmax in slice chunks, for received attention) is vLLM
    0.32's Qwen2_5_VisionBlock; received attention is a mean over heads and queries per slice."""
    from earlytom_vllm.vllm.qwen2_5_vl import VllmQwenVisionTower

    hidden = torch.randn(3, 16 * 16, 64, generator=torch.Generator().manual_seed(5))

    def compare(model):
        tower = VllmQwenVisionTower(model.visual, 16, 16)
        with torch.inference_mode():
            ours, received = tower.layer_with_received(23, hidden, chunk_frames=2)
            stock = tower.layer(23, hidden)  # vLLM's own block
            pooled = tower.pool_received(received)
        return ((ours - stock).abs().max().item(), received.sum(dim=1).tolist(),
                tuple(pooled.shape), pooled.sum(dim=1).tolist())

    diff, sums, pooled_shape, pooled_sums = qllm.apply_model(compare)[0]
    assert diff < 1e-5
    assert sums == pytest.approx([1.0] * 3, abs=1e-5)
    assert pooled_shape == (3, 64)  # one value per merged token
    assert pooled_sums == pytest.approx([0.25] * 3, abs=1e-5)  # mean of 4 per merge unit


# --------------------------------------------------------------------------------------------------
# Other engines: stock EVS on CPU, tensor parallelism, chunked prefill


def test_stock_evs_answers_a_video_on_the_cpu_engine(qllm, engine_job):
    """vLLM 0.32's CPU runner never enables its pruning plumbing; the plugin's register() hook
    fixes that in every engine process, so stock --video-pruning-rate serves (it crashed)."""
    from vllm.multimodal.video_prune.evs import compute_retained_tokens_count

    (evs,) = engine_job("evs")
    kept = compute_retained_tokens_count(64, 4, 0.75)  # max(64, int(256 * 0.25)) = 64
    assert evs["prompt_len"] == text_tokens(qllm, prompt(VIDEO)) + kept
    assert len(evs["logprobs"]) >= 1


def test_tensor_parallel_ranks_keep_the_same_tokens_as_one_rank(qllm, engine_job):
    (tp2,) = engine_job("tp2")
    out = generate(qllm, prompt(VIDEO), [seeded(B, 50)])
    one = model_read(qllm, "last_trace")
    assert tp2["prompt_len"] == len(out.prompt_token_ids)
    rank0, rank1 = tp2["traces"]
    assert rank0["index"] == rank1["index"] == one["index"]
    assert rank0["frames_per_layer"] == one["frames_per_layer"]
    assert tp2["positions"][0] == tp2["positions"][1] == model_read(qllm, "last_positions")
    ours = first_logprobs(out)
    assert max(ours, key=ours.get) == max(tp2["logprobs"], key=tp2["logprobs"].get)
    for k in ours.keys() & tp2["logprobs"].keys():
        assert ours[k] == pytest.approx(tp2["logprobs"][k], abs=1e-4)


def test_chunked_prefill_gives_the_same_first_token_and_positions(qllm, engine_job):
    chunked = engine_job("chunked")
    for res, (text, videos, kwargs) in zip(chunked, [
            (prompt(VIDEO), [A], {"earlytom": {"retain_ratio": 0.25}}),
            (prompt(VIDEO, VIDEO), [A, B], None)], strict=True):
        out = generate(qllm, text, videos, kwargs=kwargs)
        assert res["prompt_len"] == len(out.prompt_token_ids) > 32 * 2  # 3+ chunks, split in videos
        assert res["positions"][0] == model_read(qllm, "last_positions")
        ours = first_logprobs(out)
        assert max(ours, key=ours.get) == max(res["logprobs"], key=res["logprobs"].get)
        for k in ours.keys() & res["logprobs"].keys():
            assert ours[k] == pytest.approx(res["logprobs"][k], abs=1e-4)


def test_visual_token_counters_count_this_family(qllm, qwen_checkpoint):
    """earlytom_visual_tokens_{before,after}_total: t * (h/2)(w/2) before, the budget after."""
    from prometheus_client import REGISTRY

    labels = {"model_name": str(qwen_checkpoint), "method": "earlytom"}

    def totals():
        return tuple(REGISTRY.get_sample_value(f"earlytom_visual_tokens_{k}_total", labels) or 0
                     for k in ("before", "after"))

    start = totals()
    generate(qllm, prompt(VIDEO, VIDEO), [seeded(A, 70), seeded(B, 71)],
             kwargs={"earlytom": {"retain_ratio": 0.25}})
    before, after = (b - a for a, b in zip(start, totals(), strict=True))
    assert before == 4 * 64 + 6 * 140
    assert after == expected_count(4, 64, 0.25) + expected_count(6, 140, 0.25)


def test_a_calls_videos_of_one_grid_are_encoded_together(qllm):
    """Two videos of one grid (not a whole number of windows) and settings in one encoder call
    are one batch, each coming out as it does alone; a third of another grid stays apart."""
    from earlytom_vllm.vllm.qwen2_5_vl import VllmQwenVisionTower

    g = torch.Generator().manual_seed(11)
    config = EarlyTomConfig(prune_layers=(7, 15, 23), tau=0.3, retain_ratio=0.25)
    items = []
    for t, h, w in ((6, 20, 28), (4, 20, 28), (4, 8, 8)):
        base = torch.randn(h * w, 3 * 2 * 14 * 14, generator=g)
        pixels = torch.cat([base + 0.02 * i * torch.randn(base.shape, generator=g)
                            for i in range(t)])  # drifting slices: Stage I merges some
        items.append((pixels, [t, h, w], VideoPlan(num_frames=t, extra_rows=0, config=config,
                                                   tokens_per_frame=(h // 2) * (w // 2))))

    def run(model):
        together = model._encode_all(items, VllmQwenVisionTower)
        alone = [model._encode_all([item], VllmQwenVisionTower)[0] for item in items]
        return [((f2 - f1).abs().max().item(), torch.equal(p2, p1), r2.batch,
                 torch.equal(r2.index, r1.index), r2.frames_per_layer == r1.frames_per_layer)
                for (f2, r2, _, p2), (f1, r1, _, p1) in zip(together, alone, strict=True)]

    result = qllm.apply_model(run)[0]
    assert [r[2] for r in result] == [2, 2, 1]
    for diff, same_positions, _, same_index, same_frames in result:
        assert diff < 1e-5 and same_positions and same_index and same_frames
