"""benchmarks/compress_overhead.py: a tiny-shape smoke run (structure and positive timings only;
no timed assertion: this machine's timings say nothing)."""

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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("co")
    js, png = out / "co.json", out / "co.png"
    assert co.main([*TINY, "--json", str(js), "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000
    return json.loads(js.read_text())


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


def test_committed_results_have_the_real_shapes():
    path = co.DEFAULT_JSON
    if not path.exists():
        pytest.skip("results/compress_overhead.json not generated yet")
    rep = json.loads(path.read_text())
    assert rep["shapes"] == {"frames": 32, "tokens_per_frame": 729, "grid": 27, "width": 1152,
                             "heads": 16, "head_dim": 72, "mlp": 4304,
                             "pooled_tokens_per_frame": 196, "llm_width": 3584}
    assert rep["settings"]["repeats"] >= 5 and rep["settings"]["retain_ratio"] == 0.1
