"""benchmarks/throughput.py: the pure helpers, and a ``--quick`` run against a real earlytom-serve
(tiny checkpoint, 4 frames, concurrency 1 and 2) checking the JSON's structure and that every rate
is positive. No timed assertion: on 2 shared cores the numbers say nothing."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks import throughput as tp  # noqa: E402
from benchmarks.harness import families, load  # noqa: E402
from benchmarks.harness import throughput_summary as summ  # noqa: E402

METHODS = list(harness.METHODS)


def test_requests_formula():
    assert [load.parse_requests("2c+2", c) for c in (1, 2, 4, 8)] == [4, 6, 10, 18]
    assert load.parse_requests("c", 3) == 3
    assert load.parse_requests("7", 8) == 7
    assert load.parse_requests("3c-1", 2) == 5
    with pytest.raises(ValueError):
        load.parse_requests("c-5", 2)


def test_percentile():
    assert summ.percentile([], 50) is None
    assert summ.percentile([3.0], 95) == 3.0
    assert summ.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert summ.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_schedule_interleaves_and_rotates():
    args = tp.build_parser().parse_args(["--requests", "2c+2", "--rounds", "2"])
    plan = load.schedule(METHODS, [1, 2, 4, 8], args)
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
    t = summ.targets(cells, [1, 2], METHODS)
    assert t["saturated_vs_full"]["met"] and t["saturated_vs_full"]["value"] == 1.35
    assert t["above_post_encoder_every_level"]["met"]
    assert not t["above_evs_every_level"]["met"]
    assert t["above_evs_every_level"]["missed_at"] == ["2"]
    r = summ.ratios(cells, [1, 2], METHODS)
    assert r["earlytom_vs_none"]["1"]["ttft_p50_speedup"] == 2.0
    assert r["earlytom_vs_none"]["1"]["output_tokens_per_s"] == 1.35


def sample(ttft, e2e, out, itl=(), prompt=100, ok=True):
    return load.Sample(method="earlytom", concurrency=1, round=0, index=0, seed=0, start_s=0.0,
                     ok=ok, ttft_s=ttft, latency_s=e2e, prompt_tokens=prompt,
                     completion_tokens=out, itl_s=list(itl))


def test_serve_metrics_names_and_definitions():
    """vllm bench serve's names; TPOT = (E2E - TTFT) / (out - 1); ITL pools every gap; goodput
    counts requests meeting every SLO (a one-token request's TPOT is 0)."""
    samples = [sample(1.0, 2.5, 4, itl=(0.5, 0.5, 0.5)),   # TPOT 0.5 s
               sample(2.0, 2.0, 1),                        # one token: TPOT 0 (goodput only)
               sample(3.0, 6.0, 4, itl=(1.0, 1.0, 1.0)),   # TPOT 1.0 s
               sample(None, 1.0, None, ok=False)]          # failed
    m = summ.serve_metrics(samples, 10.0, {"ttft": 2500, "tpot": 600}, (50, 90, 99))
    assert m["completed"] == 3 and m["failed"] == 1 and m["duration"] == 10.0
    assert m["total_input_tokens"] == 300 and m["total_output_tokens"] == 9
    assert m["request_throughput"] == 0.3 and m["output_throughput"] == 0.9
    assert m["total_token_throughput"] == 30.9
    assert m["request_goodput"] == 0.2  # the first two meet ttft <= 2.5 s and tpot <= 0.6 s
    assert m["mean_ttft_ms"] == 2000.0 and m["median_ttft_ms"] == 2000.0
    assert m["p90_ttft_ms"] == pytest.approx(2800.0) and m["p99_ttft_ms"] == pytest.approx(2980.0)
    assert m["std_ttft_ms"] == pytest.approx(816.497, abs=1e-3)  # population std, as np.std
    assert m["mean_tpot_ms"] == 750.0  # the one-token request has no TPOT
    assert m["mean_itl_ms"] == 750.0 and m["median_itl_ms"] == 750.0 and m["p99_itl_ms"] == 1000.0
    assert m["mean_e2el_ms"] == pytest.approx(3500.0) and m["p50_e2el_ms"] == 2500.0
    keys = {f"{s}_{n}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99")
            for n in ("ttft", "tpot", "itl", "e2el")}
    assert keys <= set(m)
    assert summ.serve_metrics(samples, 10.0)["request_goodput"] is None  # no SLO given
    assert summ.serve_metrics(samples, 10.0, {"e2el": 2000})["request_goodput"] == 0.1
    empty = summ.serve_metrics([], 0.0, None, (99.9,))
    assert empty["completed"] == 0 and empty["request_throughput"] is None
    assert empty["p99.9_ttft_ms"] is None and empty["mean_itl_ms"] is None


def test_parse_goodput():
    assert load.parse_goodput(["ttft:5000", "tpot:50.5", "e2el:0"]) == \
        {"ttft": 5000.0, "tpot": 50.5, "e2el": 0.0}
    assert load.parse_goodput(None) == {}
    for bad in ("ttft", "itl:5", "ttft:-1", "ttft:x"):
        with pytest.raises(ValueError):
            load.parse_goodput([bad])


def test_poisson_arrivals():
    a = load.arrival_offsets(400, 4.0, seed=7)
    assert a == load.arrival_offsets(400, 4.0, seed=7)  # seeded
    assert a != load.arrival_offsets(400, 4.0, seed=8)
    assert all(x < y for x, y in itertools.pairwise(a)) and a[0] > 0
    assert a[-1] == pytest.approx(100.0)  # rescaled so that n requests take n / rate s
    gaps = [y - x for x, y in zip([0.0, *a], a, strict=False)]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert 0.85 < cv < 1.15  # exponential intervals: coefficient of variation 1
    regular = load.arrival_offsets(50, 2.0, seed=0, burstiness=1e6)  # gamma -> constant gaps
    assert regular[0] == pytest.approx(0.5, rel=1e-2) and regular[-1] == pytest.approx(25.0)
    assert load.arrival_offsets(3, float("inf"), seed=0) == [0.0, 0.0, 0.0]
    assert load.arrival_offsets(0, 1.0, seed=0) == []


def test_levels_and_rate_schedule():
    assert load.parse_levels(None, None) == [1, 2, 4, 8]
    assert load.parse_levels(None, "2,inf") == ["rate=2", "rate=inf"]
    assert load.parse_levels("1", "0.5") == [1, "rate=0.5"]
    assert load.level_rate("rate=inf") == float("inf") and load.level_rate(4) is None
    args = tp.build_parser().parse_args(["--rate-requests", "5"])
    plan = load.schedule(["none", "earlytom"], [2, "rate=1.5"], args)
    rate_cells = [(lv, r, m, n) for lv, r, m, n in plan if lv == "rate=1.5"]
    assert rate_cells == [("rate=1.5", 0, "earlytom", 5), ("rate=1.5", 0, "none", 5)]


def test_qwen_arms_and_evs_servers():
    args = tp.parse_args(["--family", "qwen2_5_vl"])
    assert args.ratio_list == [0.15, 0.10] and args.video_size == 448
    assert [a.label for a in args.arms] == ["none", "vllm_evs@0.15", "earlytom@0.15",
                                            "vllm_evs@0.10", "earlytom@0.10"]
    assert {a.server for a in args.arms} == {"main", "vllm_evs@0.15", "vllm_evs@0.10"}
    evs_arm = args.arms[1]
    assert evs_arm.earlytom_field() is None  # the stock model gets no per-request field
    assert args.arms[2].earlytom_field() == {"method": "earlytom", "retain_ratio": 0.15}
    evs = harness.vllm_arm_servers(args.fam, args.arms, args.frames, 256)  # 16 slices x 256
    assert evs["vllm_evs@0.15"]["video_pruning_rate"] == 0.847653
    assert evs["vllm_evs@0.10"]["video_pruning_rate"] == 0.898435
    for spec, kept in ((evs["vllm_evs@0.15"], 624), (evs["vllm_evs@0.10"], 416)):
        assert spec["evs_tokens"] == spec["earlytom_tokens"] == kept
        assert spec["arch"] == "Qwen2_5_VLForConditionalGeneration"
        assert spec["serve_args"] == ["--no-earlytom-arch",
                                      "--backend-arg=--video-pruning-method=evs",
                                      "--backend-arg=--video-pruning-rate="
                                      f"{spec['video_pruning_rate']}"]
    visual = summ.expected_visual_tokens(args, 256, evs)
    assert visual == {"none": 4096, "vllm_evs@0.15": 624, "earlytom@0.15": 624,
                      "vllm_evs@0.10": 416, "earlytom@0.10": 416}
    pairs = summ.compared([a.label for a in args.arms])
    assert pairs == [("earlytom@0.15", "none"), ("earlytom@0.15", "vllm_evs@0.15"),
                     ("earlytom@0.10", "none"), ("earlytom@0.10", "vllm_evs@0.10")]
    quick = tp.parse_args(["--family", "qwen2_5_vl", "--quick"])
    assert (quick.frames, quick.video_size, quick.ratio_list) == (12, 112, [0.15])
    assert quick.levels == [1, "rate=4"]
    # defaults of the LLaVA-OV family are unchanged
    llava = tp.parse_args([])
    assert llava.ratio_list == [0.10] and llava.video_size == 384 and llava.levels == [1, 2, 4, 8]
    assert [a.label for a in llava.arms] == METHODS and llava.frames == 32
    with pytest.raises(SystemExit):
        tp.parse_args(["--methods", "none,vllm_evs"])  # vLLM's EVS: Qwen2.5-VL only


def test_batching_budget_keeps_every_compressed_prefill_of_a_step_in_one_chunk():
    """vLLM's EVS crashes when a prefill chunk starts on a video's first token (vLLM #48833):
    with EVS servers, every server gets a budget that holds the highest concurrency's compressed
    prompts in one step; without them vLLM's default stays."""
    args = tp.parse_args(["--family", "qwen2_5_vl"])
    evs = harness.vllm_arm_servers(args.fam, args.arms, args.frames, 256)
    budget = harness.batching_budget(evs, 8, args.max_tokens)  # concurrency 8
    assert budget >= 8 * (624 + 256 + args.max_tokens) and budget % 1024 == 0
    assert harness.batching_budget({}, 8, args.max_tokens) is None
    llava = tp.parse_args([])
    assert harness.vllm_arm_servers(llava.fam, llava.arms, 32, 196) == {}


def test_qwen_targets_per_ratio():
    def cell(m, c, tput):
        return {"method": m, "concurrency": c, "requests_per_s": tput / 10,
                "output_tokens_per_s": tput, "ttft_p50_s": 10 / tput, "ttft_p95_s": 20 / tput}

    labels = ["none", "vllm_evs@0.15", "earlytom@0.15", "vllm_evs@0.10", "earlytom@0.10"]
    speed = {"none": 2.0, "vllm_evs@0.15": 4.0, "earlytom@0.15": 5.0, "vllm_evs@0.10": 5.0,
             "earlytom@0.10": 4.5}
    cells = {(m, c): cell(m, c, v) for m, v in speed.items() for c in (1, 2)}
    t = summ.targets(cells, [1, 2], labels)
    assert t["earlytom@0.15_above_vllm_evs@0.15_every_level"]["met"]
    assert not t["earlytom@0.10_above_vllm_evs@0.10_every_level"]["met"]
    assert t["earlytom@0.15_saturated_vs_full"]["value"] == 2.5
    r = summ.ratios(cells, [1, 2], labels)
    assert set(r) == {"earlytom@0.15_vs_none", "earlytom@0.15_vs_vllm_evs@0.15",
                      "earlytom@0.10_vs_none", "earlytom@0.10_vs_vllm_evs@0.10"}
    assert r["earlytom@0.15_vs_vllm_evs@0.15"]["2"]["output_tokens_per_s"] == 1.25


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
    assert report["model"]["sizes_from"] == families.sizes_source(families.get(families.DEFAULT),
                                                                   quick=True)
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


@pytest.mark.engine
def test_quick_run_qwen(tmp_path):
    """Qwen2.5-VL, both tasks in one run: the plugin server and vLLM's own EVS on its own
    server (stock architecture), concurrency 1 and a Poisson level, vllm bench serve's metrics
    and goodput; exact prompt token counts (12 frames of 112 px: 6 slices x 16 = 96 visual
    tokens full, 6 x ceil(16 x 0.15) = 18 for EarlyTom and the same 18 for EVS)."""
    from transformers import AutoProcessor

    js, log = tmp_path / "tp.json", tmp_path / "serve.log"
    code = tp.main(["--family", "qwen2_5_vl", "--quick", "--json", str(js), "--plot",
                    str(tmp_path / "tp.png"), "--no-progress", "--server-log", str(log),
                    "--goodput", "ttft:600000", "e2el:600000"])
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("serve*.log"))
    assert code == 0, logs
    report = json.loads(js.read_text())
    s = report["settings"]
    assert s["family"] == "qwen2_5_vl" and s["methods"] == ["none", "vllm_evs", "earlytom"]
    assert (s["frames"], s["video_size"], s["ratios"]) == (12, 112, [0.15])
    assert s["levels"] == ["1", "rate=4"] and s["concurrency"] == [1]
    assert s["request_rates"] == [4.0] and s["goodput_slos_ms"] == {"ttft": 600000.0,
                                                                   "e2el": 600000.0}
    evs = s["servers"]["vllm_evs"]
    assert evs["evs_tokens"] == evs["earlytom_tokens"] == 18
    assert "--no-earlytom-arch" in evs["command"]
    assert f"--backend-arg=--video-pruning-rate={evs['video_pruning_rate']}" in evs["command"]
    assert "--no-earlytom-arch" not in s["servers"]["main"]["command"]
    assert report["model"]["tokens_per_frame"] == 16 and report["model"]["family"] == "qwen2_5_vl"

    processor = AutoProcessor.from_pretrained(report["model"]["checkpoint"])
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": tp.PROMPT}]}],
        add_generation_prompt=True, tokenize=False)
    text_tokens = len(processor.tokenizer(text)["input_ids"]) - 1  # the placeholder expands
    checks = report["checks"]
    assert checks["errors"] == 0 and checks["ignore_eos_honored"] and checks["budget_matches"]
    assert checks["prompt_tokens_by_method"] == {
        "none": [text_tokens + 96], "vllm_evs": [text_tokens + 18], "earlytom": [text_tokens + 18]}
    assert checks["vllm_evs_same_prompt_as_earlytom"]["vllm_evs"]["equal"]

    cells = {(c["method"], c["level"]): c for c in report["cells"]}
    assert len(cells) == 6
    for (m, level), c in cells.items():
        assert c["server"] == ("vllm_evs" if m == "vllm_evs" else "main")
        assert c["completed"] == c["requests"] == (1 if level == "1" else 2) and c["failed"] == 0
        assert c["request_goodput"] == c["request_throughput"] > 0  # the SLOs are loose
        assert c["total_output_tokens"] == c["requests"] * 4
        assert c["total_input_tokens"] == c["requests"] * c["prompt_tokens"][0]
        for name in ("ttft", "tpot", "itl", "e2el"):
            assert c[f"p50_{name}_ms"] <= c[f"p90_{name}_ms"] <= c[f"p99_{name}_ms"]
            assert c[f"mean_{name}_ms"] is not None and c[f"median_{name}_ms"] is not None
        assert c["p50_ttft_ms"] == pytest.approx(c["ttft_p50_s"] * 1000, abs=0.5)
        assert (c["concurrency"], c["request_rate"]) == ((1, None) if level == "1" else (None, 4.0))
    rate = [x for x in report["samples"] if x["level"] == "rate=4"]
    assert len(rate) == 6 and all(x["scheduled_s"] is not None and x["ok"] for x in rate)
    assert sorted({x["scheduled_s"] for x in rate if x["method"] == "none"}) == \
        sorted({x["scheduled_s"] for x in rate if x["method"] == "earlytom"})  # same arrivals
    assert set(report["ratios"]) == {"earlytom_vs_none", "earlytom_vs_vllm_evs"}
    assert isinstance(report["targets"]["above_vllm_evs_every_level"]["met"], bool)


def test_qwen3_arms_have_vllm_evs_and_vidcom2_servers():
    args = tp.parse_args(["--family", "qwen3_vl", "--ratios", "0.15"])
    assert [a.label for a in args.arms] == ["none", "vllm_evs", "vllm_vidcom2", "earlytom"]
    servers = harness.vllm_arm_servers(args.fam, args.arms, args.frames, 196)  # 16 x 196
    assert set(servers) == {"vllm_evs", "vllm_vidcom2"}
    for key, method in (("vllm_evs", "evs"), ("vllm_vidcom2", "vidcom2")):
        spec = servers[key]
        assert spec["video_pruning_method"] == method
        assert f"--backend-arg=--video-pruning-method={method}" in spec["serve_args"]
        assert spec["evs_tokens"] == spec["earlytom_tokens"] == 16 * 30  # 16 x ceil(196 x 0.15)
