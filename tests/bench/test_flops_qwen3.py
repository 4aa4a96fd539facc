"""FLOPs of Qwen3-VL-8B: every block attends over a whole slice, four mergers (main and three
deepstack levels), the family's default prune layers, and the vision share the benchmark
checkpoint is sized for."""

from __future__ import annotations

import pytest

from benchmarks import flops
from benchmarks.harness.flops_models import MODELS, QWEN3VL_VISION, paper_layer_macs
from earlytom_vllm.families import get

MODEL = MODELS["qwen3-vl-8b"]


def test_geometry_comes_from_the_family():
    v = QWEN3VL_VISION
    assert v.family is get("qwen3_vl")
    assert (v.grid_h, v.grid_w, v.tokens_per_frame) == (28, 28, 784)
    assert v.pooled_tokens_per_frame == 196  # (28/2)^2 LLM tokens per slice
    assert MODEL.units == 16  # 32 frames = 16 temporal slices
    assert v.mergers == 4


def test_a_block_is_the_paper_layer_over_one_slice():
    v = QWEN3VL_VISION
    for block in (0, 8, 26):
        assert v.layer_macs(block) == paper_layer_macs(784, 1152, 4304)


@pytest.fixture(scope="module")
def results():
    return flops.build_results(ratios=(1.0, 0.15, 0.10))["models"]["qwen3-vl-8b"]


def test_full_tokens_count_every_slice_through_every_block(results):
    full = results["correct"]["full"]["1.00"]
    v = QWEN3VL_VISION
    encoder = 16 * 27 * v.layer_macs(0) / 1e12
    assert full["llm_visual_tokens"] == 16 * 196
    assert abs(full["tflops"]["encoder"] - encoder) < 1e-3
    merger = 4 * 16 * 196 * (4608 * 4608 + 4608 * 4096) / 1e12
    assert abs(full["tflops"]["projector"] - merger) < 1e-3


def test_vision_share_of_full_tokens_is_about_a_fifth(results):
    """What the benchmark checkpoint is sized for (earlytom_vllm/families/qwen3_vl.py)."""
    t = results["correct"]["full"]["1.00"]["tflops"]
    share = t["vision_total"] / t["total"]
    assert 0.18 < share < 0.21, share


def test_earlytom_counts_the_served_budget(results):
    for key, kept in (("0.15", 16 * 30), ("0.10", 16 * 20)):  # 16 x ceil(196 r)
        assert results["correct"]["earlytom"][key]["llm_visual_tokens"] == kept
        assert results["correct"]["earlytom"][key]["tflops"]["total"] < (
            results["correct"]["post_encoder"][key]["tflops"]["total"])
