"""The EarlyTom vLLM plugin on the real vLLM 0.32 CPU engine with the tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.core import video_token_budget
from earlytom_vllm.plan import VideoPlan
from earlytom_vllm.synthetic import random_video, scene_video, static_video
from tests.vllm.conftest import ARCH, DEFAULT_RATIO, PROMPT, overrides

pytestmark = pytest.mark.engine
GREEDY = SamplingParams(max_tokens=2, temperature=0.0, logprobs=5)
IMAGE_PROMPT = "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n"
BOTH_PROMPT = "<|im_start|>user\n<image><video>\nCompare.<|im_end|>\n<|im_start|>assistant\n"
TWO_VIDEOS = "<|im_start|>user\n<video><video>\nCompare.<|im_end|>\n<|im_start|>assistant\n"


def text_tokens(llm, prompt: str) -> int:
    """Prompt tokens besides the media placeholders (each placeholder is one token)."""
    tok = llm.get_tokenizer()
    n = len(tok.encode(prompt))
    return n - prompt.count("<video>") - prompt.count("<image>")


def generate(llm, prompt, videos=None, images=None, kwargs=None, params=GREEDY):
    data = {}
    if videos is not None:
        data["video"] = videos
    if images is not None:
        data["image"] = images
    req = {"prompt": prompt, "multi_modal_data": data}
    if kwargs is not None:
        req["mm_processor_kwargs"] = kwargs
    return llm.generate(req, params, use_tqdm=False)[0]


def last_trace(llm):
    from earlytom_vllm.vllm.observe import last_trace as trace

    return llm.apply_model(trace)[0]


def test_plugin_registers_architecture_idempotently():
    from vllm import ModelRegistry

    from earlytom_vllm.families import get
    from earlytom_vllm.vllm.plugin import register

    register()
    register()
    assert get("llava_onevision").architecture == ARCH
    assert ARCH in ModelRegistry.get_supported_archs()


def test_video_prompt_length_follows_budget(llm):
    video = scene_video(8, seed=1)
    text = text_tokens(llm, PROMPT)
    out = generate(llm, PROMPT, video)
    assert len(out.prompt_token_ids) == text + video_token_budget(8, DEFAULT_RATIO, 196) + 1
    assert len(out.outputs[0].token_ids) == 2  # generation completed
    out25 = generate(llm, PROMPT, video, kwargs={"earlytom": {"retain_ratio": 0.25}})
    assert len(out25.prompt_token_ids) == text + video_token_budget(8, 0.25, 196) + 1
    assert len(out25.prompt_token_ids) - len(out.prompt_token_ids) == 8 * (49 - 20)
    # The override applied to that request only: the next one is back at the default.
    again = generate(llm, PROMPT, video)
    assert len(again.prompt_token_ids) == len(out.prompt_token_ids)


def test_two_ratios_in_one_batch(llm):
    video = scene_video(8, seed=2)
    reqs = [{"prompt": PROMPT, "multi_modal_data": {"video": video},
             "mm_processor_kwargs": {"earlytom": {"retain_ratio": r}}} for r in (0.1, 0.15)]
    outs = llm.generate(reqs, GREEDY, use_tqdm=False)
    text = text_tokens(llm, PROMPT)
    assert [len(o.prompt_token_ids) for o in outs] == [
        text + video_token_budget(8, r, 196) + 1 for r in (0.1, 0.15)
    ]
    assert all(len(o.outputs[0].token_ids) == 2 for o in outs)


@pytest.mark.parametrize("kwargs", [{"earlytom": {"retain_ratio": 1.0}},
                                    {"earlytom": {"enabled": False}},
                                    {"earlytom": {"method": "none"}}])
def test_uncompressed_requests_match_stock_model(llm, run_engine, kwargs):
    stock = _stock_results(run_engine)
    out = generate(llm, PROMPT, scene_video(8, seed=3), kwargs=kwargs,
                   params=SamplingParams(max_tokens=1, temperature=0.0, logprobs=5))
    assert len(out.prompt_token_ids) == stock["prompt_len"]
    ours = {str(k): v.logprob for k, v in out.outputs[0].logprobs[0].items()}
    assert ours.keys() == stock["logprobs"].keys()
    for k, v in ours.items():
        assert v == pytest.approx(stock["logprobs"][k], abs=1e-5)


_STOCK: dict = {}


def _stock_results(run_engine):
    if not _STOCK:
        req = {"prompt": PROMPT, "videos": [{"kind": "scene_video", "args": {"num_frames": 8,
                                                                                "seed": 3}}]}
        _STOCK.update(run_engine([req])[0])  # stock architecture, no overrides
    return _STOCK


def test_image_only_video_only_and_both(llm):
    image = scene_video(1, size=500, seed=4)[0]
    video = scene_video(8, seed=5)
    img = generate(llm, IMAGE_PROMPT, images=image)
    n_image = len(img.prompt_token_ids) - text_tokens(llm, IMAGE_PROMPT)
    assert n_image > 729  # anyres image: base tile + higher-resolution tiles, stock count
    vid = generate(llm, PROMPT, video)
    assert len(vid.prompt_token_ids) == text_tokens(llm, PROMPT) + video_token_budget(8, 0.1, 196) + 1
    both = generate(llm, BOTH_PROMPT, video, images=image)
    assert len(both.prompt_token_ids) == (text_tokens(llm, BOTH_PROMPT) + n_image
                                          + video_token_budget(8, 0.1, 196) + 1)
    assert all(len(o.outputs[0].token_ids) == 2 for o in (img, vid, both))


def test_two_videos_of_different_lengths_in_one_prompt(llm):
    # Stock vLLM 0.32 fails this (3-D outputs for a list of videos); we return 2-D per video.
    a, b = scene_video(8, seed=6), scene_video(12, seed=7)
    out = generate(llm, TWO_VIDEOS, [a, b])
    expect = text_tokens(llm, TWO_VIDEOS) + video_token_budget(8, 0.1, 196) + video_token_budget(12, 0.1, 196) + 2
    assert len(out.prompt_token_ids) == expect
    assert len(out.outputs[0].token_ids) == 2
    # both videos went through the encoder in one batch, and each keeps what it keeps alone
    together = last_trace(llm)  # the last video of the call: b
    assert together["batch"] == 2
    # the same settings spelled out: another cache key, so b is encoded again, alone
    generate(llm, PROMPT, b, kwargs={"earlytom": {"retain_ratio": 0.1}})
    alone = last_trace(llm)
    assert alone["batch"] == 1
    assert together["index"] == alone["index"] and together["groups"] == alone["groups"]
    assert together["frames_per_layer"] == alone["frames_per_layer"]


def test_redundant_video_runs_later_layers_on_fewer_frames(llm):
    generate(llm, PROMPT, static_video(16, seed=8))
    trace = last_trace(llm)
    frames = trace["frames_per_layer"]
    assert len(frames) == 26
    assert frames[:11] == [16] * 11  # up to and including the first prune layer (10)
    assert frames[11] < 16  # layer 11 onwards runs on merged frames
    assert frames[-1] <= frames[11]
    assert trace["rows"] == video_token_budget(16, 0.1, 196) + 1


def test_unrelated_frames_keep_all_frames(llm):
    # The tiny checkpoint's random-weight encoder rates independent noise frames ~0.65 similar
    # at layer 10 (position embeddings dominate), so "unrelated" is stated with tau = 0.9: no
    # pair of noise frames reaches it, while identical frames (similarity 1.0) still merge.
    strict = {"earlytom": {"tau": 0.9}}
    generate(llm, PROMPT, random_video(8, seed=9), kwargs=strict)
    assert last_trace(llm)["frames_per_layer"] == [8] * 26
    generate(llm, PROMPT, static_video(8, seed=9), kwargs=strict)
    assert last_trace(llm)["frames_per_layer"][11] < 8


@pytest.mark.parametrize("bad", [{"retain_ratio": 0}, {"retain_ratio": 1.5},
                                 {"retain_ratio": "abc"}, {"retain_ratio": math.nan},
                                 {"unknown_key": 1}, {"prune_layers": [23, 21]},
                                 {"prune_layers": [30]}, {"max_frames": 64}, "0.5"])
def test_invalid_request_values_are_rejected_with_a_message(llm, bad):
    with pytest.raises(ValueError, match="earlytom"):
        generate(llm, PROMPT, scene_video(4, seed=10), kwargs={"earlytom": bad})
    # The engine is still serving.
    ok = generate(llm, PROMPT, scene_video(4, seed=10))
    assert len(ok.outputs[0].token_ids) == 2


def test_profiling_dummy_uses_max_frames_and_full_count(llm):
    from vllm.multimodal import MULTIMODAL_REGISTRY

    model_config = llm.llm_engine.model_config
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    assert processor.info.get_num_frames_with_most_features(8192, {"video": 1}) == 32
    dummy = processor.get_dummy_mm_inputs({"video": 1})
    (placeholder,) = dummy["mm_placeholders"]["video"]
    assert placeholder.length == 32 * 196 + 1  # the largest count a request may ask for
    # The dummy encode itself (the CPU runner never profiles): 32 frames, then compressed.
    pixels = torch.zeros(32, 3, 384, 384)
    rows = llm.apply_model(
        lambda m: m._embed_video_batch([pixels], [VideoPlan(32, 196, 1, EarlyTomConfig())])[0].shape[0])[0]
    assert rows == video_token_budget(32, 0.1, 196) + 1


def test_tensor_parallel_ranks_agree(llm, run_engine):
    req = {"prompt": PROMPT, "mm_processor_kwargs": None,
           "videos": [{"kind": "scene_video", "args": {"num_frames": 8, "seed": 11}}]}
    (tp2,) = run_engine([req], hf_overrides=overrides(), tensor_parallel_size=2, trace=True)
    out = generate(llm, PROMPT, scene_video(8, seed=11),
                   params=SamplingParams(max_tokens=1, temperature=0.0, logprobs=5))
    assert tp2["prompt_len"] == len(out.prompt_token_ids)
    rank0, rank1 = tp2["traces"]
    assert rank0["index"] == rank1["index"]  # both ranks kept the same tokens
    assert rank0["index"] == last_trace(llm)["index"]  # ... and the same as one worker
    ours = {str(k): v.logprob for k, v in out.outputs[0].logprobs[0].items()}
    top = max(ours, key=ours.get)
    assert top == max(tp2["logprobs"], key=tp2["logprobs"].get)
    for k in ours.keys() & tp2["logprobs"].keys():
        assert ours[k] == pytest.approx(tp2["logprobs"][k], abs=1e-4)


def test_vllm_and_transformers_adapter_agree(llm, tiny_checkpoint):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from earlytom_vllm.hf import apply_earlytom, compress_hf_video, last_compression

    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tiny_checkpoint),
                                                                dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(tiny_checkpoint))
    video = scene_video(12, seed=12)
    pixels = processor.video_processor(videos=[video], return_tensors="pt")[
        "pixel_values_videos"][0]  # [T, 3, 384, 384]
    config = EarlyTomConfig(retain_ratio=0.1)
    with torch.inference_mode():
        ours = compress_hf_video(hf, pixels, config)
    plan = VideoPlan(12, 196, 1, EarlyTomConfig(retain_ratio=0.1, trace=True))
    vllm_rows = llm.apply_model(lambda m: m._embed_video_batch([pixels], [plan])[0].cpu())[0]
    vllm_trace = last_trace(llm)
    assert vllm_trace["index"] == ours.index.tolist()
    assert vllm_trace["frames_per_layer"] == ours.frames_per_layer
    hf_rows = torch.cat((ours.tokens, hf.model.image_newline[None]))
    torch.testing.assert_close(vllm_rows, hf_rows, atol=1e-4, rtol=1e-4)

    # The same through a whole request: vLLM's processor produces the same pixels.
    generate(llm, PROMPT, video, kwargs={"earlytom": {"retain_ratio": 0.1}})
    assert last_trace(llm)["index"] == ours.index.tolist()

    # The adapter on the instance: reversible, and HF generate runs with the short prompt.
    apply_earlytom(hf, config)
    inputs = processor(text=PROMPT, videos=[video], return_tensors="pt")
    from earlytom_vllm.hf import remove_earlytom, shrink_video_placeholders

    ids, mask = shrink_video_placeholders(inputs["input_ids"], hf.config.video_token_id, [12],
                                          config, inputs["attention_mask"],
                                          tokens_per_frame=196)
    with torch.inference_mode():
        logits = hf(input_ids=ids, attention_mask=mask,
                    pixel_values_videos=inputs["pixel_values_videos"]).logits
    assert logits.shape[1] == ids.shape[1] == text_tokens(llm, PROMPT) + plan.rows
    assert torch.isfinite(logits).all()
    assert last_compression(hf).index.tolist() == ours.index.tolist()
    remove_earlytom(hf)
    assert "get_video_features" not in vars(hf.model)
    np.testing.assert_array_equal(ids[0, :3].numpy(), inputs["input_ids"][0, :3].numpy())


def test_default_request_adds_no_sync_or_host_copy_to_the_core(llm, monkeypatch):
    """The serving path does only serving: with ``trace`` off, embedding a video makes exactly
    the host copies the core itself makes (one similarity band per prune layer, and one for the
    refinement), no ``.item()``, no clock and no trace record."""
    from collections import Counter

    from earlytom_vllm.core import compress_video
    from earlytom_vllm.vllm import llava_onevision as ov
    from earlytom_vllm.vllm import processing

    def forbidden(*args, **kwargs):
        raise AssertionError("trace machinery on the serving path")

    monkeypatch.setattr(processing, "trace_clock", forbidden)
    monkeypatch.setattr(ov, "record_trace", forbidden)
    pixels = torch.rand(8, 3, 384, 384, generator=torch.Generator().manual_seed(3)) * 2 - 1
    plan = VideoPlan(8, 196, 1, EarlyTomConfig(retain_ratio=0.1))
    assert not plan.config.trace

    def measure(model):
        names = ("cpu", "tolist", "item", "numpy")
        orig = {n: getattr(torch.Tensor, n) for n in names}
        counts: dict[str, Counter] = {"model": Counter(), "core": Counter()}
        current = {"key": None}

        def counting(name):
            def wrapper(self, *args, **kwargs):
                if current["key"] is not None:
                    counts[current["key"]][name] += 1
                return orig[name](self, *args, **kwargs)
            return wrapper

        with pytest.MonkeyPatch.context() as mp:
            for n in names:
                mp.setattr(torch.Tensor, n, counting(n))
            with torch.inference_mode():
                current["key"] = "model"
                rows = model._embed_video_batch([pixels], [plan])[0].shape[0]
                tower = ov.VllmSiglipTower(model)
                current["key"] = "core"
                compress_video(tower.embed(pixels), tower, plan.config)
                current["key"] = None
        return rows, {k: dict(v) for k, v in counts.items()}

    rows, counts = llm.apply_model(measure)[0]
    assert rows == plan.rows
    assert counts["model"] == counts["core"], counts
    assert counts["model"].get("item", 0) == 0
    # the core's own: one band per prune layer (3) and one for the refinement, at most
    assert counts["core"].get("cpu", 0) <= len(plan.config.prune_layers) + 1, counts


def test_server_wide_setting_that_does_not_fit_the_model_fails_at_start_up(tiny_checkpoint):
    """A prune layer at or past the encoder depth in --hf-overrides stops the engine when it
    starts (the model is built), naming the field; it does not wait for the first request."""
    import json
    import os
    import subprocess
    import sys

    bad = overrides(prune_layers=[10, 21, 26])  # the tiny SigLIP has 26 layers: 0..25
    script = ("import json, sys\nfrom vllm import LLM\n"
              "LLM(model=sys.argv[1], enforce_eager=True, dtype='float32', max_model_len=8192,"
              " hf_overrides=json.loads(sys.argv[2]))\n")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_checkpoint), json.dumps(bad)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "hf_overrides.earlytom.prune_layers" in proc.stderr, proc.stderr[-3000:]
    assert "below the vision encoder depth 26" in proc.stderr


def test_hand_written_siglip_layers_match_the_upstream_layers(llm, tiny_checkpoint):
    """The one hand-written layer per adapter (softmax in frame chunks, for received attention)
    is the upstream encoder layer: vLLM 0.32's SiglipEncoderLayer and transformers 5.x's."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from earlytom_vllm.hf import HFSiglipTower
    from earlytom_vllm.vllm.llava_onevision import VllmSiglipTower

    hidden = torch.randn(3, 729, 64, generator=torch.Generator().manual_seed(5))

    def compare(model):
        tower = VllmSiglipTower(model)
        with torch.inference_mode():
            ours, received = tower.layer_with_received(7, hidden, chunk_frames=2)
            stock = tower.layer(7, hidden)  # vLLM's own module
        return (ours - stock).abs().max().item(), received.sum(dim=1).tolist()

    diff, received_sums = llm.apply_model(compare)[0]
    assert diff < 1e-5
    # mean over heads and queries of a softmax over keys: each frame's received sums to 1
    assert received_sums == pytest.approx([1.0] * 3, abs=1e-5)

    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tiny_checkpoint),
                                                                dtype=torch.float32).eval()
    tower = HFSiglipTower(hf)
    with torch.inference_mode():
        ours, _ = tower.layer_with_received(7, hidden, chunk_frames=2)
        stock = tower.layer(7, hidden)  # transformers' own module
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


def test_llava_video_shape_serves_64_frames(run_engine):
    """LLaVA-Video-7B-Qwen2-hf is a LLaVA-OneVision checkpoint in vLLM (same class, same SigLIP
    geometry) served with 64 frames: with ``max_frames: 64`` the same architecture takes a
    64-frame video compressed and uncompressed (the encoder cache is sized for the full count)."""
    video = {"kind": "scene_video", "args": {"num_frames": 64, "size": 384, "seed": 64}}
    reqs = [{"prompt": PROMPT, "videos": [video],
             "mm_processor_kwargs": {"earlytom": {"retain_ratio": r}}} for r in (0.15, 1.0)]
    compressed, full = run_engine(reqs, hf_overrides=overrides(max_frames=64),
                                  max_model_len=16384, trace=True)
    assert full["prompt_len"] - compressed["prompt_len"] == (
        64 * 196 - video_token_budget(64, 0.15, 196))
    (trace,) = compressed["traces"]
    assert trace["rows"] == video_token_budget(64, 0.15, 196) + 1
    assert trace["frames_per_layer"][0] == 64
    assert trace["frames_per_layer"][-1] < 64  # a redundant 64-frame video merges frames
