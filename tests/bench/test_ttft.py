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
from earlytom_vllm import checkpoints  # noqa: E402
from earlytom_vllm import families as registry  # noqa: E402
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
# The families vLLM prunes itself (Qwen2.5-VL: EVS; Qwen3-VL: EVS and VidCom2): full tokens and
# EarlyTom on the plugin engine, each of vLLM's own methods on an engine of its own (stock
# architecture, --video-pruning-method/-rate at the rate whose count is EarlyTom's). r = 0.5
# keeps EVS above its floor of one slice, so every arm keeps exactly 4 x ceil(tokens / 2).

QWEN_RATIO = 0.5
QWEN_SLICES = FRAMES // 2
QWEN_FAMILIES = [f.name for f in registry.all_families() if f.vllm_pruning]


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def qwen_report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ttft_{request.param}")
    js = out / "ttft.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ttft", "--family", request.param, "--quick",
         "--videos", "scene", "--ratios", str(QWEN_RATIO), "--extra-prune-layers", "",
         "--json", str(js), "--plot", "", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return registry.get(request.param), json.loads(js.read_text())


def test_qwen_cells_engines_and_exact_counts(qwen_report):
    fam, report = qwen_report
    cfg = report["config"]
    size = fam.benchmark.video_size
    per_frame = cfg["tokens_per_frame"]
    depth = checkpoints.sizes(fam)["vision_layers"]  # the tiny checkpoint's encoder
    assert cfg["family"] == fam.name and cfg["architecture"] == fam.architecture
    assert cfg["stage1_frames"] == QWEN_SLICES
    assert per_frame == (size // 28 if fam.name == "qwen2_5_vl" else size // 32) ** 2
    assert tuple(cfg["earlytom_default"]["prune_layers"]) == fam.defaults.prune_layers
    arms = [f"vllm_{m}@{QWEN_RATIO:.2f}" for m in fam.vllm_pruning]
    for method, arm in zip(fam.vllm_pruning, arms, strict=True):
        engine = cfg["engines"][arm]
        assert engine["video_pruning_method"] == method
        assert engine["video_pruning_rate"] == families.vllm_pruning_rate(
            fam, FRAMES, per_frame, QWEN_RATIO, method)
    assert cfg["engines"]["plugin"]["video_pruning_rate"] is None
    cells = report["videos"]["scene"]["cells"]
    assert set(cells) == {"none", *arms, f"earlytom@{QWEN_RATIO:.2f}"}
    # Qwen3-VL writes a timestamp and two markers per slice around the rows; vLLM's own pruning
    # lays them into the video's placeholder (its rows), EarlyTom keeps them as text
    video_text = cfg["video_text_tokens"]["scene"]
    assert (video_text == 0) == (fam.name == "qwen2_5_vl"), video_text
    text = cfg["text_tokens"] + video_text
    budget = video_token_budget(QWEN_SLICES, QWEN_RATIO, per_frame)  # no extra rows
    for label, c in cells.items():
        kept = QWEN_SLICES * per_frame if c["method"] == "none" else budget
        assert c["prompt_tokens"] == text + kept and c["prompt_tokens_ok"], label
        for s in c["samples"]:
            assert s["rows"] == kept + (video_text if c["method"].startswith("vllm_") else 0), (
                label, s["rows"])
            assert s["ttft"] > 0 and s["vision"] > 0 and s["prefill"] > 0, label
            assert sum(s[p] for p in PARTS) <= s["ttft"] + TOL, label
            assert len(s["frames_per_layer"]) == depth, label
    for arm in arms:
        assert cells[arm]["samples"][0]["tokens"] > 0, arm  # vLLM's selection was timed
    sp = report["videos"]["scene"]["speedups"][f"earlytom@{QWEN_RATIO:.2f}"]
    assert sp["vs_none"]["from_medians"] > 0
    for arm in arms:
        assert sp[f"vs_{arm.split('@')[0]}"]["from_medians"] > 0
