"""The locally built Qwen2.5-VL checkpoints: real vision geometry, determinism, their own cache
entries, and the LLaVA-OneVision builder's keys untouched by the shared cache code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from earlytom_vllm import checkpoints as ck
from earlytom_vllm.families import get

SMALL = {"vision_layers": 8, "text_layers": 1, "text_intermediate": 64,
         "vision_intermediate": 64}


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file()}


@pytest.fixture(scope="module")
def tiny_qwen() -> Path:
    return ck.ensure("qwen2_5_vl")


def test_llava_onevision_keys_are_unchanged():
    """The cache key of every LLaVA-OneVision checkpoint is what it was before the Qwen2.5-VL
    builder shared the cache code (existing caches stay valid)."""
    assert ck.checkpoint_key() == "ed0ed72e73ccd5c4"
    assert ck.checkpoint_key(vision_layers=2) == "3df0857e2313403b"
    assert ck.checkpoint_key("qwen2_5_vl") != ck.checkpoint_key()


def test_qwen_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    a = ck.build("qwen2_5_vl", tmp_path / "a", **SMALL)
    b = ck.build("qwen2_5_vl", tmp_path / "b", **SMALL)
    assert _digests(a) == _digests(b)
    assert _digests(ck.build("qwen2_5_vl", tmp_path / "c", **SMALL, seed=1))[
        "model.safetensors"] != _digests(a)["model.safetensors"]
    p = ck.ensure("qwen2_5_vl", tmp_path / "cache", **SMALL)
    name = get("qwen2_5_vl").checkpoint.name
    assert p.name == f"{name}-{ck.checkpoint_key('qwen2_5_vl', **SMALL)}"
    assert _digests(p).items() >= _digests(a).items()
    marker = json.loads((p / ck.COMPLETE_MARKER).read_text())
    assert marker["family"] == "qwen2_5_vl" and marker["args"]["vision_layers"] == 8

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(ck, "build", no_build)
    assert ck.ensure("qwen2_5_vl", tmp_path / "cache", **SMALL, seed=0) == p


def test_qwen_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        ck.build("qwen2_5_vl", tmp_path / "x", text_hidden=96, text_heads=4)  # heads of 24
    with pytest.raises(ValueError, match="multiple of 16"):
        ck.build("qwen2_5_vl", tmp_path / "x", vision_hidden=72, vision_heads=3)
    with pytest.raises(TypeError, match="unknown"):
        ck.ensure("qwen2_5_vl", tmp_path, window=3)


def test_qwen_geometry_tokenizer_and_template(tiny_qwen):
    from transformers import AutoConfig, AutoProcessor

    cfg = AutoConfig.from_pretrained(tiny_qwen)
    assert cfg.model_type == "qwen2_5_vl"
    assert cfg.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    v = cfg.vision_config
    assert v.depth == 32 and list(v.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (v.window_size, v.patch_size, v.spatial_merge_size) == (112, 14, 2)
    assert (v.temporal_patch_size, v.tokens_per_second) == (2, 2)
    assert v.hidden_size // v.num_heads == 32 and v.out_hidden_size == cfg.text_config.hidden_size
    t = cfg.text_config
    assert t.hidden_size // t.num_attention_heads == 64  # a head size vLLM's CPU attention takes
    assert t.rope_parameters["mrope_section"] == [8, 12, 12]

    proc = AutoProcessor.from_pretrained(tiny_qwen)
    size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    assert proc.image_processor.size == proc.video_processor.size == size
    tok = proc.tokenizer
    for name in ("vision_start", "vision_end", "image_pad", "video_pad"):
        assert getattr(cfg, f"{name}_token_id", None) in (None, tok.convert_tokens_to_ids(
            f"<|{name}|>"))
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hi"},
                                             {"type": "image"}]}]
    assert proc.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Hi"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")


def test_benchmark_sizes_are_valid_arguments():
    resolved = ck.sizes("qwen2_5_vl", bench=True)
    assert resolved["vision_layers"] == 32  # the real depth and full-attention blocks
    assert ck.checkpoint_key("qwen2_5_vl", **get("qwen2_5_vl").checkpoint.bench_sizes) != ck.checkpoint_key("qwen2_5_vl")
