"""benchmarks/ttft.py: a ``--quick`` run in a subprocess (tiny checkpoint, 8 frames, 1 run, every
method, one extra EarlyTom setting). Structure and accounting only; no timed assertion: this
machine's timings say nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import families  # noqa: E402
from earlytom_vllm.core.budget import video_token_budget  # noqa: E402

pytestmark = pytest.mark.engine

FRAMES = 8
RATIOS = (0.25, 0.10)
METHODS = harness.METHODS
PARTS = ("frontend", "vision", "tokens", "prefill")
TOL = 0.005  # seconds: rounding between the engine's clocks and the model's


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttft")
    js, png = out / "ttft.json", out / "ttft.png"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ttft", "--quick", "--videos", "scene",
         "--extra-prune-layers", "4,14,24", "--json", str(js), "--plot", str(png),
         "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert png.stat().st_size > 1000
    return json.loads(js.read_text())


def test_structure(report):
    for key in ("benchmark", "config", "machine", "load_average", "videos", "targets",
                "targets_met", "paper"):
        assert key in report
    cfg = report["config"]
    assert cfg["quick"] and cfg["frames"] == FRAMES and cfg["runs"] == 1
    assert cfg["ratios"] == list(RATIOS) and cfg["methods"] == list(METHODS)
    m = report["machine"]
    for key in ("versions", "cpu_model", "logical_cpus", "torch_threads"):
        assert m[key]
    assert "torch" in m["versions"]
    assert report["load_average"]["start"] is not None
    assert set(report["videos"]) == {"scene"}
    cells = report["videos"]["scene"]["cells"]
    expected = {"none"} | {f"{m}@{r:.2f}" for r in RATIOS for m in METHODS if m != "none"} \
        | {f"earlytom[4,14,24]@{r:.2f}" for r in RATIOS}
    assert set(cells) == expected
    for t in report["targets"]:
        assert isinstance(t["met"], bool) and t["measured_from_medians"] > 0
        assert t["met"] or t["reason"]
    assert {t["name"] for t in report["targets"]} >= {
        "earlytom@0.10 vs none", "earlytom@0.10 vs post_encoder", "earlytom@0.10 vs evs"}


def test_prompt_tokens_are_text_plus_budget_plus_newline(report, tiny_checkpoint):
    text = report["config"]["text_tokens"]
    assert text > 0
    per_frame = report["config"]["tokens_per_frame"]
    llava = families.get(families.DEFAULT)
    assert per_frame == families.model_tokens_per_frame(llava, tiny_checkpoint) == 196
    for label, c in report["videos"]["scene"]["cells"].items():
        if c["method"] == "none":
            want = text + FRAMES * per_frame + 1
        else:
            want = text + video_token_budget(FRAMES, c["ratio"], per_frame) + 1
        assert c["prompt_tokens"] == want, label
        assert c["expected_prompt_tokens"] == want and c["prompt_tokens_ok"], label
        assert all(s["rows"] == want - text for s in c["samples"]), label


def test_timings_positive_and_breakdown_within_ttft(report):
    for label, c in report["videos"]["scene"]["cells"].items():
        assert len(c["samples"]) == 1, label
        for s in c["samples"]:
            assert s["ttft"] > 0 and s["wall"] > 0 and s["vision"] > 0 and s["tokens"] > 0
            assert s["prefill"] > 0 and s["frontend"] >= 0, label
            assert sum(s[p] for p in PARTS) <= s["ttft"] + TOL, label
            assert s["vision"] + s["tokens"] <= s["ttft"] + TOL, label
            assert len(s["frames_per_layer"]) == 26
        b = c["breakdown_median_seconds"]
        assert sum(b.values()) <= c["summary_seconds"]["ttft"]["median"] + TOL, label


def test_frames_and_speedups(report):
    v = report["videos"]["scene"]
    for label, c in v["cells"].items():
        fpl = c["frames"]["frames_per_layer_median"]
        if c["method"] == "earlytom":
            assert fpl[0] == FRAMES and fpl[-1] <= FRAMES, label
            assert set(c["frames"]["frames_after_prune_layer"]) == {
                str(p) for p in c["prune_layers"]}
        else:
            assert fpl == [FRAMES] * 26, label
    sp = v["speedups"]["earlytom@0.10"]
    for base in ("none", "post_encoder", "evs"):
        assert sp[f"vs_{base}"]["from_medians"] > 0
    share = v["vision_share_none"]
    assert 0 < share["vision_encoding_share"] < 1


# --------------------------------------------------------------------------------------------------
# Qwen2.5-VL: full tokens and EarlyTom on the plugin engine, vLLM's own EVS on an engine of its own
# (stock architecture, --video-pruning-rate at the rate whose count is EarlyTom's). r = 0.5 keeps
# EVS above its floor of one slice (256 tokens at 448 px), so both keep exactly 4 x 128 tokens.

QWEN_RATIO = 0.5
QWEN_SLICES = FRAMES // 2


@pytest.fixture(scope="module")
def qwen_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttft_qwen")
    js = out / "ttft_qwen.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ttft", "--family", "qwen2_5_vl", "--quick",
         "--videos", "scene", "--ratios", str(QWEN_RATIO), "--json", str(js), "--plot", "",
         "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(js.read_text())


def test_qwen_cells_engines_and_exact_counts(qwen_report):
    cfg = qwen_report["config"]
    fam = families.get("qwen2_5_vl")
    assert cfg["family"] == "qwen2_5_vl" and cfg["architecture"] == fam.architecture
    assert cfg["stage1_frames"] == QWEN_SLICES and cfg["tokens_per_frame"] == 256  # (448/28)^2
    assert cfg["earlytom_default"]["prune_layers"] == [7, 15, 23]  # the family's default
    per_frame = cfg["tokens_per_frame"]
    evs = cfg["engines"][f"vllm_evs@{QWEN_RATIO:.2f}"]
    assert evs["video_pruning_rate"] == families.vllm_pruning_rate(fam, FRAMES, per_frame,
                                                                   QWEN_RATIO)
    assert cfg["engines"]["plugin"]["video_pruning_rate"] is None
    cells = qwen_report["videos"]["scene"]["cells"]
    assert set(cells) == {"none", f"vllm_evs@{QWEN_RATIO:.2f}", f"earlytom@{QWEN_RATIO:.2f}"}
    text = cfg["text_tokens"]
    budget = video_token_budget(QWEN_SLICES, QWEN_RATIO, per_frame)  # no extra rows
    want = {"none": text + QWEN_SLICES * per_frame, "vllm_evs": text + budget,
            "earlytom": text + budget}
    for label, c in cells.items():
        assert c["prompt_tokens"] == want[c["method"]] and c["prompt_tokens_ok"], label
        for s in c["samples"]:
            assert s["rows"] == want[c["method"]] - text, label
            assert s["ttft"] > 0 and s["vision"] > 0 and s["prefill"] > 0, label
            assert sum(s[p] for p in PARTS) <= s["ttft"] + TOL, label
            assert len(s["frames_per_layer"]) == 32, label
    assert cells[f"vllm_evs@{QWEN_RATIO:.2f}"]["samples"][0]["tokens"] > 0  # EVS selection
    sp = qwen_report["videos"]["scene"]["speedups"][f"earlytom@{QWEN_RATIO:.2f}"]
    assert sp["vs_none"]["from_medians"] > 0 and sp["vs_vllm_evs"]["from_medians"] > 0
