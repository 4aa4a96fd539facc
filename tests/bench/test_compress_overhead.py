"""benchmarks/compress_overhead.py: tiny-shape smoke runs (structure and positive timings only;
no timed assertion: this machine's timings say nothing), for LLaVA-OneVision's scene video and
Qwen3-VL's motion video (where nothing merges)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import compress_overhead as co  # noqa: E402

TINY = ["--frames", "4", "--tokens", "49", "--width", "64", "--heads", "4", "--mlp", "128",
        "--llm-width", "32", "--repeats", "2", "--warmup", "1", "--threads", "1",
        "--no-progress"]

PARTS = ("encoder_layer_full", "stage1_layer_10", "stage1_layer_21", "stage1_layer_23",
         "sdpa_last_prune_layer", "attention_with_received_last_prune_layer",
         "received_attention_alone", "pool_received", "select_tokens")


def smoke_run(out: Path, args: list[str]) -> dict:
    """Run the benchmark with ``args``; the report it wrote (its plot checked)."""
    js, png = out / "co.json", out / "co.png"
    assert co.main([*args, "--json", str(js), "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000
    return json.loads(js.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return smoke_run(tmp_path_factory.mktemp("co"), TINY)


def test_structure(report):
    for key in ("shapes", "settings", "machine", "frames", "timings", "summary_ms", "overhead"):
        assert key in report
    m = report["machine"]
    assert m["versions"]["torch"] == co.torch.__version__
    assert m["torch_threads"] == 1
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert report["shapes"]["frames"] == 4 and report["shapes"]["pooled_tokens_per_frame"] == 16
    assert set(report["timings"]) == set(PARTS)
    assert report["settings"]["prune_layers"] == [10, 21, 23]
    assert report["family"] == "llava_onevision" and report["video"] == "scene"
    assert report["encoder"]["layers"] == 26 and "SigLIP" in report["encoder"]["reference_layer"]


def test_every_timing_is_positive(report):
    for name, t in report["timings"].items():
        assert len(t["samples_ms"]) == 2, name
        assert all(s > 0 for s in t["samples_ms"]), name
        assert t["median_ms"] > 0 and t["min_ms"] > 0, name
    s = report["summary_ms"]
    for key in ("encoder_layer_full", "stage1_total", "stage2_total", "logic_total",
                "select_tokens", "pool_received", "received_attention_alone"):
        assert s[key] > 0, key
    assert s["received_extra"] >= 0
    assert report["overhead"]["logic_over_26_full_layers_pct"] > 0
    parts = report["overhead"]["parts_over_encoder_pct"]
    assert sum(parts.values()) == pytest.approx(report["overhead"]["logic_over_26_full_layers_pct"],
                                                rel=1e-3, abs=1e-3)
    assert isinstance(report["overhead"]["meets_target"], bool)


def test_logic_total_is_the_sum_of_parts(report):
    s = report["summary_ms"]
    parts = s["stage1_total"] + s["received_extra"] + s["stage2_total"]
    assert s["logic_total"] == pytest.approx(parts, rel=1e-3, abs=1e-3)
    assert s["encoder_26_layers_full"] == pytest.approx(26 * s["encoder_layer_full"], rel=1e-3)


def test_frames_shrink_or_stay(report):
    fr = report["frames"]
    seq = [*fr["entering_prune_layers"], fr["after_last_prune_layer"]]
    assert seq == sorted(seq, reverse=True)
    assert fr["after_last_prune_layer"] >= report["settings"]["min_frames"]
    groups = fr["refined_groups"]
    assert groups[0][0] == 0 and groups[-1][1] == fr["after_last_prune_layer"] - 1


def test_bad_arguments():
    with pytest.raises(SystemExit):
        co.main([*TINY, "--tokens", "50", "--plot", ""])
    with pytest.raises(ValueError):
        co.run(frames=2, tokens=49, width=64, heads=4, mlp=64, llm_width=16, repeats=0,
               progress=False)
    with pytest.raises(SystemExit):  # Qwen: whole 2x2 merge units
        co.main([*TINY_QWEN, "--tokens", "49", "--plot", ""])


def test_committed_results_have_the_real_shapes():
    path = co.DEFAULT_JSON
    if not path.exists():
        pytest.skip("results/compress_overhead.json not generated yet")
    rep = json.loads(path.read_text())
    assert rep["shapes"] == {"frames": 32, "tokens_per_frame": 729, "grid": 27, "width": 1152,
                             "heads": 16, "head_dim": 72, "mlp": 4304,
                             "pooled_tokens_per_frame": 196, "llm_width": 3584}
    assert rep["settings"]["repeats"] >= 5 and rep["settings"]["retain_ratio"] == 0.1


# --------------------------------------------------------------------------------------------------
# Qwen3-VL on a video where nothing merges

TINY_QWEN = ["--family", "qwen3_vl", "--video", "motion", "--frames", "6", "--tokens", "64",
             "--width", "64", "--heads", "4", "--mlp", "128", "--llm-width", "32",
             "--repeats", "2", "--warmup", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def qwen_motion(tmp_path_factory):
    return smoke_run(tmp_path_factory.mktemp("coq"), TINY_QWEN)


def test_qwen_motion_merges_nothing(qwen_motion):
    rep = qwen_motion
    family = co.fam.get("qwen3_vl")
    layers = list(family.defaults.prune_layers)
    assert rep["family"] == "qwen3_vl" and rep["video"] == "motion"
    assert rep["settings"]["prune_layers"] == layers
    fr = rep["frames"]
    assert fr["entering_prune_layers"] == [6] * len(layers) and fr["after_last_prune_layer"] == 6
    assert fr["refined_groups"] == [[i, i] for i in range(6)]  # every frame its own segment
    # 8x8 patches -> 4x4 merge units; the features carry the main and the deepstack mergers
    assert rep["shapes"]["pooled_tokens_per_frame"] == 16
    assert rep["shapes"]["llm_width"] == 32 * (1 + len(rep["encoder"]["deepstack_taps"]))
    assert rep["encoder"]["layers"] == co.QWEN3VL_VISION.layers
    assert rep["encoder"]["deepstack_taps"] == list(co.QWEN3VL_VISION.deepstack)
    assert "rotary" in rep["encoder"]["reference_layer"]


def test_qwen_motion_fields(qwen_motion):
    rep = qwen_motion
    n = rep["encoder"]["layers"]
    expected = {"encoder_layer_full", "sdpa_last_prune_layer",
                "attention_with_received_last_prune_layer", "received_attention_alone",
                "pool_received", "select_tokens",
                *(f"stage1_layer_{i}" for i in rep["settings"]["prune_layers"])}
    assert set(rep["timings"]) == expected
    s, o = rep["summary_ms"], rep["overhead"]
    assert s[f"encoder_{n}_layers_full"] == pytest.approx(n * s["encoder_layer_full"], rel=1e-3)
    assert s["logic_total"] == pytest.approx(
        s["stage1_total"] + s["received_extra"] + s["stage2_total"], rel=1e-3, abs=1e-3)
    pct = 100 * s["logic_total"] / s[f"encoder_{n}_layers_full"]
    assert o[f"logic_over_{n}_full_layers_pct"] == pytest.approx(pct, rel=1e-3, abs=1e-3)
    # nothing merged: EarlyTom's encoder is the full one
    assert o["logic_over_earlytom_encoder_pct"] == pytest.approx(pct, rel=1e-3, abs=1e-3)
    assert set(o["parts_over_encoder_pct"]) == {"stage1", "received_extra", "stage2"}
    assert o["meets_target"] == (pct < o["target_pct"])


def test_default_paths_name_family_and_video():
    assert co.default_paths("llava_onevision", "scene") == (co.DEFAULT_JSON, co.DEFAULT_PLOT)
    js, png = co.default_paths("qwen3_vl", "motion")
    assert js.name == "compress_overhead_qwen3_vl_motion.json" and png.suffix == ".png"


def test_windowed_reference_layer_matches_per_window_attention():
    """Qwen2.5-VL's windowed reference layer attends within each window, as SDPA per window."""
    from benchmarks.harness.reference_layer import windowed_sdpa

    gen = co.torch.Generator().manual_seed(0)
    q, k, v = (co.torch.randn(2, 3, 10, 4, generator=gen) for _ in range(3))
    windows = [4, 4, 2]
    out = windowed_sdpa(q, k, v, windows)
    at = 0
    for w in windows:
        ref = co.F.scaled_dot_product_attention(q[:, :, at:at + w], k[:, :, at:at + w],
                                                v[:, :, at:at + w])
        assert co.torch.allclose(out[:, :, at:at + w], ref, atol=1e-6)
        at += w


def test_committed_qwen_motion_results_merge_nothing_at_the_real_shapes():
    path, _ = co.default_paths("qwen3_vl", "motion")
    rep = json.loads(path.read_text())
    v = co.QWEN3VL_VISION
    assert rep["shapes"] == {"frames": 16, "tokens_per_frame": 784, "grid": 28, "width": 1152,
                             "heads": 16, "head_dim": 72, "mlp": 4304,
                             "pooled_tokens_per_frame": 196, "llm_width": 4096 * v.mergers}
    assert rep["frames"]["entering_prune_layers"] == [16, 16, 16]
    assert rep["frames"]["after_last_prune_layer"] == 16
    assert rep["encoder"]["layers"] == 27 and rep["settings"]["repeats"] >= 5
