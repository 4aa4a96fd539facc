"""The locally built tiny LLaVA-OneVision checkpoint: determinism, cache, geometry, tokenizer, chat
template, and that both transformers and the real vLLM engine (in-process, CPU) load and run it."""

from __future__ import annotations

import os

# The vLLM CPU engine on 2 cores: a small KV cache and no thread pinning (set before vllm is
# imported; the in-process switch is set by the ``llm`` fixture only, so it does not leak).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import gc
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from earlytom_vllm import checkpoints as ck
from earlytom_vllm.checkpoints import ensure_tiny_checkpoint
from earlytom_vllm.checkpoints import llava_onevision as recipe
from earlytom_vllm.checkpoints.llava_onevision import from_hub_key, to_hub_key
from earlytom_vllm.families import get

FAMILY = get("llava_onevision")
CHECKPOINT_NAME = FAMILY.checkpoint.name


def build_checkpoint(path, **sizes):
    return ck.build(FAMILY, path, **sizes)


def ensure_checkpoint(cache_dir=None, **sizes):
    return ck.ensure(FAMILY, cache_dir, **sizes)


TOKENS_PER_FRAME = 196
SMALL = {
    "vision_hidden": 32,
    "vision_layers": 2,
    "vision_heads": 1,
    "vision_intermediate": 64,
    "text_layers": 1,
    "text_intermediate": 64,
}
VIDEO_PROMPT = (
    "<|im_start|>user\n<video>\nWhat happens in this video?<|im_end|>\n<|im_start|>assistant\n"
)
IMAGE_PROMPT = "<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n"


def _frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 384, 384, 3), dtype=np.uint8)


def _tensor_digest(path: Path) -> str:
    """Hash of every tensor's name, dtype, shape and bytes."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_digests(path: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny() -> Path:
    return ensure_tiny_checkpoint()


# --------------------------------------------------------------------------------------------------
# Build and cache


def test_build_is_deterministic(tmp_path):
    t0 = time.perf_counter()
    a = build_checkpoint(tmp_path / "a")
    build_s = time.perf_counter() - t0
    b = build_checkpoint(tmp_path / "b", seed=0)
    assert a == tmp_path / "a"
    assert _tensor_digest(a) == _tensor_digest(b)
    # Every file, not only the weights, is byte-identical (tokenizer training included).
    assert _file_digests(a) == _file_digests(b)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(
        _file_digests(a)
    )
    c = build_checkpoint(tmp_path / "c", seed=1)
    assert _tensor_digest(c) != _tensor_digest(a)
    print(f"build_checkpoint (default sizes): {build_s:.2f} s")


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_checkpoint(tmp_path / "x", **SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_build_half_precision(tmp_path):
    from safetensors import safe_open

    p = build_checkpoint(tmp_path / "bf16", **SMALL, dtype="bfloat16")
    assert json.loads((p / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(p / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    # The same float32 draws, rounded.
    ref = build_checkpoint(tmp_path / "fp32", **SMALL)
    key = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    with (
        safe_open(str(p / "model.safetensors"), "pt") as f,
        safe_open(str(ref / "model.safetensors"), "pt") as g,
    ):
        assert torch.equal(f.get_tensor(key), g.get_tensor(key).to(torch.bfloat16))


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        build_checkpoint(tmp_path / "x", vision_hidden=65)
    with pytest.raises(ValueError, match="dtype"):
        build_checkpoint(tmp_path / "x", dtype="int8")
    with pytest.raises(TypeError, match="unknown"):
        ensure_checkpoint(tmp_path, vision_width=3)


def test_ensure_checkpoint_caches(tmp_path, monkeypatch):
    p = ensure_checkpoint(tmp_path, **SMALL)
    assert p.parent == tmp_path
    assert p.name.startswith(f"{CHECKPOINT_NAME}-")
    assert (p / "model.safetensors").is_file()
    # No temporary directories left behind.
    assert [q.name for q in tmp_path.iterdir()] == [p.name]

    # A second call (defaults spelled out or not) returns the same directory without building.
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(ck, "build", no_build)
    assert ensure_checkpoint(tmp_path, **SMALL, seed=0, dtype="float32") == p
    monkeypatch.undo()

    # Any argument, the seed included, changes the key.
    assert ck.checkpoint_key(FAMILY, **SMALL) != ck.checkpoint_key(FAMILY, **SMALL, seed=1)
    assert ck.checkpoint_key(FAMILY, **SMALL) != ck.checkpoint_key(FAMILY, **{**SMALL, "text_layers": 2})
    assert ck.checkpoint_key(FAMILY) == ck.checkpoint_key(FAMILY, vision_layers=26)


def test_ensure_checkpoint_default_location(tiny):
    assert tiny.parent == ck.DEFAULT_CACHE_DIR
    assert tiny == ensure_checkpoint() == ensure_tiny_checkpoint()
    expected = os.environ.get("EARLYTOM_CACHE") or Path.home() / ".cache/earlytom-vllm/checkpoints"
    assert Path(expected).expanduser() == ck.DEFAULT_CACHE_DIR


def test_ensure_checkpoint_loser_of_a_race_uses_the_winner(tmp_path, monkeypatch):
    winner = build_checkpoint(tmp_path / "winner", **SMALL)
    real_build = ck.build
    target = tmp_path / f"{CHECKPOINT_NAME}-{ck.checkpoint_key(FAMILY, **SMALL)}"

    def build_then_lose(family, path, **kwargs):
        real_build(family, path, **kwargs)
        # Another process finishes first and renames its complete build into place.
        other = tmp_path / "other"
        shutil.copytree(winner, other)
        (other / ck.COMPLETE_MARKER).write_text("{}")
        os.rename(other, target)
        return Path(path)

    monkeypatch.setattr(ck, "build", build_then_lose)
    assert ensure_checkpoint(tmp_path, **SMALL) == target
    assert (target / ck.COMPLETE_MARKER).read_text() == "{}"  # the winner's copy was kept
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(["winner", target.name])


def test_ensure_checkpoint_replaces_an_incomplete_directory(tmp_path):
    target = tmp_path / f"{CHECKPOINT_NAME}-{ck.checkpoint_key(FAMILY, **SMALL)}"
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert ensure_checkpoint(tmp_path, **SMALL) == target
    assert (target / ck.COMPLETE_MARKER).is_file()
    assert (target / "model.safetensors").is_file()
    assert [q.name for q in tmp_path.iterdir()] == [target.name]


def test_ensure_checkpoint_concurrent_threads(tmp_path, monkeypatch):
    """Racing threads share one build (processes race on the rename, tested above)."""
    real_build = ck.build
    builds: list[Path] = []

    def counting_build(family, path, **kwargs):
        builds.append(Path(path))
        return real_build(family, path, **kwargs)

    monkeypatch.setattr(ck, "build", counting_build)
    barrier = threading.Barrier(3)
    results: list[Path] = []
    errors: list[BaseException] = []

    def call():
        try:
            barrier.wait()
            results.append(ensure_checkpoint(tmp_path / "cache", **SMALL))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 3 and len(set(results)) == 1
    (path,) = set(results)
    assert [q.name for q in (tmp_path / "cache").iterdir()] == [path.name]
    assert len(builds) == 1
    # Concurrent builds in one process still draw the same weights as a lone build.
    assert _tensor_digest(path) == _tensor_digest(build_checkpoint(tmp_path / "alone", **SMALL))


# --------------------------------------------------------------------------------------------------
# Files


def test_config_geometry(tiny):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny)
    assert cfg.model_type == "llava_onevision"
    assert cfg.architectures == ["LlavaOnevisionForConditionalGeneration"]
    v = cfg.vision_config
    assert v.model_type == "siglip_vision_model"
    assert (v.image_size, v.patch_size) == (384, 14)
    assert (v.image_size // v.patch_size) ** 2 == 27 * 27 == recipe.NUM_IMAGE_TOKENS
    assert v.num_hidden_layers == 26 >= 24  # EarlyTom's default prune layers (10, 21, 23)
    assert v.vision_use_head is False
    assert v.hidden_size // v.num_attention_heads == 32
    t = cfg.text_config
    assert t.model_type == "qwen2"
    assert t.hidden_size // t.num_attention_heads == 64  # a head size vLLM's CPU attention accepts
    assert t.num_hidden_layers == 2 and t.num_key_value_heads == 1
    assert t.max_position_embeddings >= 8192
    assert cfg.vision_feature_select_strategy == "full"
    assert cfg.vision_feature_layer == -1
    assert cfg.image_grid_pinpoints == recipe.IMAGE_GRID_PINPOINTS
    assert cfg.tie_word_embeddings and t.tie_word_embeddings

    pcfg = json.loads((tiny / "processor_config.json").read_text())
    assert pcfg["num_image_tokens"] == 729
    assert pcfg["vision_feature_select_strategy"] == "full"
    for key in ("image_processor", "video_processor"):
        assert pcfg[key]["image_mean"] == [0.5, 0.5, 0.5]
        assert pcfg[key]["image_std"] == [0.5, 0.5, 0.5]
        assert pcfg[key]["size"] == {"height": 384, "width": 384}
    assert pcfg["image_processor"]["image_grid_pinpoints"] == recipe.IMAGE_GRID_PINPOINTS


def test_tokenizer_special_tokens(tiny):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_index
    assert tok.convert_tokens_to_ids("<video>") == cfg.video_token_index
    assert cfg.image_token_index != cfg.video_token_index
    ids = {t: tok.convert_tokens_to_ids(t) for t in recipe.SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(recipe.SPECIAL_TOKENS)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    assert cfg.text_config.eos_token_id == ids["<|im_end|>"]
    assert len(tok) <= cfg.text_config.vocab_size

    # Placeholders are single tokens, no BOS is added, and text round-trips.
    enc = tok("Hi <video> and <image>!").input_ids
    assert enc.count(ids["<video>"]) == 1 and enc.count(ids["<image>"]) == 1
    assert enc[0] != ids["<|endoftext|>"]
    text = "A man rides a bicycle through the café, 12:30!\n"
    assert tok.decode(tok(text).input_ids) == text

    gen = json.loads((tiny / "generation_config.json").read_text())
    assert ids["<|im_end|>"] in gen["eos_token_id"]


def test_chat_template(tiny):
    from transformers import AutoProcessor, AutoTokenizer

    proc = AutoProcessor.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    video_msg = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What happens?"}, {"type": "video"}],
        }
    ]
    expected = "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"
    assert proc.apply_chat_template(video_msg, add_generation_prompt=True) == expected
    assert (
        tok.apply_chat_template(video_msg, add_generation_prompt=True, tokenize=False) == expected
    )

    mixed = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"type": "text", "text": "Compare"},
                {"type": "image"},
                {"type": "text", "text": "these."},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        {"role": "user", "content": "Why?"},
    ]
    assert proc.apply_chat_template(mixed, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image><video>\nCompare\nthese.<|im_end|>\n"
        "<|im_start|>assistant\nSame.<|im_end|>\n"
        "<|im_start|>user\nWhy?<|im_end|>\n"
    )


def test_vision_keys_are_in_hub_layout(tiny):
    from safetensors import safe_open

    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)
    assert "vision_tower.vision_model.encoder.layers.25.self_attn.q_proj.weight" in keys
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any(k.startswith("lm_head.") for k in keys)  # tied to the embeddings
    for k in keys:
        assert to_hub_key(from_hub_key(k)) == k
    assert to_hub_key("vision_tower.encoder.layers.0.mlp.fc1.weight") == (
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    )
    assert (
        to_hub_key("model.vision_tower.embeddings.x")
        == "model.vision_tower.vision_model.embeddings.x"
    )
    assert to_hub_key("language_model.model.embed_tokens.weight") == (
        "language_model.model.embed_tokens.weight"
    )


def test_transformers_loads_renamed_weights_identically(tiny, tmp_path):
    """The renamed file loads into the same model as the layout transformers itself writes."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionForConditionalGeneration

    plain = tmp_path / "plain"
    shutil.copytree(tiny, plain)
    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        tensors = {from_hub_key(k): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert any(k.startswith("vision_tower.encoder.") for k in tensors)
    save_file(tensors, str(plain / "model.safetensors"), metadata={"format": "pt"})

    renamed, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(plain, dtype=torch.float32)
    sd_a, sd_b = renamed.state_dict(), reference.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k

    cfg = renamed.config
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    with torch.no_grad():
        out_a = renamed.eval()(input_ids=ids).logits
        out_b = reference.eval()(input_ids=ids).logits
        pix = torch.randn(1, 2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
        feat_a = renamed.model.vision_tower(pix[0]).last_hidden_state
        feat_b = reference.model.vision_tower(pix[0]).last_hidden_state
    assert torch.equal(out_a, out_b)
    assert torch.equal(feat_a, feat_b)
    assert feat_a.shape == (2, 729, cfg.vision_config.hidden_size)


def test_transformers_video_forward(tiny):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    inputs = proc(text=VIDEO_PROMPT, videos=[_frames(4)], return_tensors="pt")
    assert inputs["pixel_values_videos"].shape == (1, 4, 3, 384, 384)
    ids = inputs["input_ids"][0]
    n_video = int((ids == model.config.video_token_index).sum())
    assert n_video == 4 * TOKENS_PER_FRAME + 1
    n_text = len(proc.tokenizer(VIDEO_PROMPT).input_ids) - 1
    assert len(ids) == n_text + n_video
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    # Random weights at a sane scale: a near-uniform but not degenerate next-token distribution.
    probs = logits[0, -1].softmax(-1)
    assert 0 < probs.max() < 0.5


# --------------------------------------------------------------------------------------------------
# The real vLLM engine (in-process, CPU). Kept last: vLLM lowers torch's thread count for the process.


@pytest.fixture(scope="module")
def llm(tiny):
    set_here = "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    if set_here:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: fast start
    from vllm import LLM

    t0 = time.perf_counter()
    engine = LLM(
        model=str(tiny),
        enforce_eager=True,
        max_model_len=8192,
        limit_mm_per_prompt={"video": 1, "image": 1},
        # vLLM's CPU platform downcasts a float32 checkpoint to bfloat16 under dtype="auto".
        dtype="float32",
        seed=0,
    )
    print(f"vLLM LLM() start: {time.perf_counter() - t0:.2f} s")
    yield engine
    del engine
    gc.collect()
    if set_here:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)


def _hf_last_logprobs(tiny: Path, prompt: str, **mm) -> torch.Tensor:
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    inputs = proc(text=prompt, return_tensors="pt", **mm)
    with torch.no_grad():
        logits = model(**inputs).logits
    return logits[0, -1].log_softmax(-1)


@pytest.mark.engine
def test_vllm_generates_for_a_video(llm, tiny):
    from vllm import SamplingParams

    frames = _frames(8)
    params = SamplingParams(max_tokens=2, temperature=0.0, logprobs=5)
    t0 = time.perf_counter()
    (out,) = llm.generate({"prompt": VIDEO_PROMPT, "multi_modal_data": {"video": frames}}, params)
    first_s = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    video_id = tok.convert_tokens_to_ids("<video>")
    n_text = len(tok(VIDEO_PROMPT).input_ids) - 1
    assert len(out.prompt_token_ids) == n_text + 8 * TOKENS_PER_FRAME + 1
    assert out.prompt_token_ids.count(video_id) == 8 * TOKENS_PER_FRAME + 1
    assert len(out.outputs[0].token_ids) == 2

    # float32 vLLM agrees with transformers on the next-token distribution.
    hf = _hf_last_logprobs(tiny, VIDEO_PROMPT, videos=[frames])
    first = out.outputs[0].logprobs[0]
    assert len(first) >= 5
    for token_id, lp in first.items():
        assert abs(lp.logprob - hf[token_id].item()) < 1e-3, token_id
    assert abs(max(lp.logprob for lp in first.values()) - hf.max().item()) < 1e-3

    t0 = time.perf_counter()
    llm.generate(
        {"prompt": VIDEO_PROMPT, "multi_modal_data": {"video": frames[::-1].copy()}}, params
    )
    print(
        f"vLLM 8-frame video, 2 tokens: first {first_s:.2f} s, next {time.perf_counter() - t0:.2f} s"
    )


@pytest.mark.engine
def test_vllm_image_prompt_matches_hf_processor(llm, tiny):
    from PIL import Image
    from transformers import AutoProcessor
    from vllm import SamplingParams

    image = Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    )
    (out,) = llm.generate(
        {"prompt": IMAGE_PROMPT, "multi_modal_data": {"image": image}},
        SamplingParams(max_tokens=1, temperature=0.0),
    )
    hf_ids = AutoProcessor.from_pretrained(tiny)(text=IMAGE_PROMPT, images=[image])["input_ids"][0]
    assert list(out.prompt_token_ids) == list(hf_ids)
    assert len(out.outputs[0].token_ids) == 1


@pytest.mark.engine
def test_vllm_chat_with_video_url(llm):
    """The OpenAI-style path: a video_url part (JPEG frames in a data URL) through the template."""
    from vllm import SamplingParams
    from vllm.multimodal.utils import encode_video_url

    frames = _frames(4, seed=2)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What happens?"},
                {"type": "video_url", "video_url": {"url": encode_video_url(frames)}},
            ],
        }
    ]
    (out,) = llm.chat(messages, SamplingParams(max_tokens=1, temperature=0.0))
    tok = llm.get_tokenizer()
    video_id = tok.convert_tokens_to_ids("<video>")
    ids = list(out.prompt_token_ids)
    n_video = 4 * TOKENS_PER_FRAME + 1
    assert ids.count(video_id) == n_video
    head = tok("<|im_start|>user\n").input_ids
    tail = tok("\nWhat happens?<|im_end|>\n<|im_start|>assistant\n").input_ids
    assert ids == head + [video_id] * n_video + tail
