"""benchmarks/throughput.py: the pure helpers, and a ``--quick`` run against a real earlytom-serve
(tiny checkpoint, 4 frames, concurrency 1 and 2) checking the JSON's structure and that every rate
is positive. No timed assertion: on 2 shared cores the numbers say nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import throughput as tp  # noqa: E402

METHODS = list(tp.METHODS)


def test_requests_formula():
    assert [tp.parse_requests("2c+2", c) for c in (1, 2, 4, 8)] == [4, 6, 10, 18]
    assert tp.parse_requests("c", 3) == 3
    assert tp.parse_requests("7", 8) == 7
    assert tp.parse_requests("3c-1", 2) == 5
    with pytest.raises(ValueError):
        tp.parse_requests("c-5", 2)


def test_percentile():
    assert tp.percentile([], 50) is None
    assert tp.percentile([3.0], 95) == 3.0
    assert tp.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert tp.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_schedule_interleaves_and_rotates():
    args = tp.build_parser().parse_args(["--requests", "2c+2", "--rounds", "2"])
    plan = tp.schedule(METHODS, [1, 2, 4, 8], args)
    # every (method, concurrency) cell gets exactly its 2c+2 requests, over two rounds
    for c in (1, 2, 4, 8):
        for m in METHODS:
            cell = [n for cc, _, mm, n in plan if cc == c and mm == m]
            assert len(cell) == 2 and sum(cell) == 2 * c + 2
    # within a level: ABCD then DCBA; the first method rotates with the level
    first = [[m for cc, r, m, _ in plan if cc == c and r == 0] for c in (1, 2, 4, 8)]
    assert first[0] == METHODS and first[1][0] == "post_encoder" and first[3][0] == "earlytom"
    second = [m for cc, r, m, _ in plan if cc == 1 and r == 1]
    assert second == METHODS[::-1]


def test_targets_and_ratios():
    def cell(m, c, tput, ttft):
        return {"method": m, "concurrency": c, "requests_per_s": tput / 10,
                "output_tokens_per_s": tput, "ttft_p50_s": ttft, "ttft_p95_s": ttft * 2}

    cells = {}
    for c in (1, 2):
        cells[("none", c)] = cell("none", c, 10.0, 4.0)
        cells[("post_encoder", c)] = cell("post_encoder", c, 12.0, 3.0)
        cells[("evs", c)] = cell("evs", c, 14.0 if c == 2 else 11.0, 3.0)
        cells[("earlytom", c)] = cell("earlytom", c, 13.5, 2.0)
    t = tp.targets(cells, [1, 2], METHODS)
    assert t["saturated_vs_full"]["met"] and t["saturated_vs_full"]["value"] == 1.35
    assert t["above_post_encoder_every_level"]["met"]
    assert not t["above_evs_every_level"]["met"]
    assert t["above_evs_every_level"]["missed_at"] == ["2"]
    r = tp.ratios(cells, [1, 2], METHODS)
    assert r["earlytom_vs_none"]["1"]["ttft_p50_speedup"] == 2.0
    assert r["earlytom_vs_none"]["1"]["output_tokens_per_s"] == 1.35


@pytest.mark.engine
def test_quick_run(tmp_path):
    js, png = tmp_path / "tp.json", tmp_path / "tp.png"
    code = tp.main(["--quick", "--json", str(js), "--plot", str(png), "--no-progress",
                    "--server-log", str(tmp_path / "serve.log")])
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    report = json.loads(js.read_text())
    assert png.stat().st_size > 1000
    for key in ("settings", "model", "machine", "loadavg", "cells", "ratios", "targets",
                "checks", "batches", "samples", "warmup"):
        assert key in report, key
    s = report["settings"]
    assert s["concurrency"] == [1, 2] and s["frames"] == 4 and s["methods"] == METHODS
    load = report["loadavg"]
    assert len(load["start"]) == 3 and len(load["end"]) == 3
    assert 0 <= load["min_1m"] <= load["max_1m"]
    assert all(len(b["loadavg_before"]) == 3 for b in report["batches"])
    for b in report["batches"]:  # CPU accounting (psutil): ours plus others = the machine
        assert b["our_cores"] > 0 and b["foreign_cores"] >= 0 and b["our_cpu_seconds"] > 0
        assert b["foreign_cores"] == pytest.approx(max(0.0, b["machine_cores"] - b["our_cores"]),
                                                   abs=0.02)
    assert len(report["cells"]) == 8
    for row in report["cells"]:
        assert row["ok"] == row["requests"] >= 1 and row["errors"] == 0
        assert row["requests_per_s"] > 0 and row["output_tokens_per_s"] > 0
        assert row["ttft_p50_s"] > 0 and row["ttft_p95_s"] >= row["ttft_p50_s"]
        assert row["all_max_tokens"], row  # ignore_eos reached vLLM through the front end
        assert len(row["prompt_tokens"]) == 1
    assert report["checks"]["errors"] == 0
    assert report["checks"]["ignore_eos_honored"]
    assert report["checks"]["budget_matches"], report["checks"]
    assert report["model"]["tokens_per_frame"] == 196  # the tiny checkpoint's, from its config
    assert report["model"]["sizes_from"] == "benchmarks.harness.TINY_SIZES"
    visual = {r["method"]: r["visual_tokens_expected"] for r in report["cells"]}
    assert visual["none"] == 4 * 196 + 1
    assert set(report["ratios"]) == {"earlytom_vs_none", "earlytom_vs_post_encoder",
                                     "earlytom_vs_evs"}
    for name in ("saturated_vs_full", "above_post_encoder_every_level",
                 "above_evs_every_level"):
        assert isinstance(report["targets"][name]["met"], bool)
    samples = report["samples"]
    assert len(samples) == sum(r["requests"] for r in report["cells"])
    assert len({s["seed"] for s in samples + report["warmup"]}) == \
        len(samples) + len(report["warmup"])  # a distinct video per request
    assert all(s["ok"] and s["ttft_s"] > 0 and s["latency_s"] >= s["ttft_s"] for s in samples)
