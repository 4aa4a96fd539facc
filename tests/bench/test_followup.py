"""benchmarks/followup.py: the pure helpers, and one ``--quick`` run against a real earlytom-serve
(tiny checkpoint, 4 frames, one three-turn conversation per method) checking the JSON's structure,
that the follow-up turns are served from vLLM's caches and that the prompt grows by exactly the
history. No timed assertion: on 2 shared cores the numbers say nothing."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import followup as fu  # noqa: E402
from benchmarks.harness import counters  # noqa: E402

METHODS = list(fu.METHODS)

EXPOSITION = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 800.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 50.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 768.0
# HELP vllm:mm_cache_queries_total mm queries.
# TYPE vllm:mm_cache_queries_total counter
vllm:mm_cache_queries_total{engine="0",model_name="m"} 2.0
# HELP vllm:mm_cache_hits_total mm hits.
# TYPE vllm:mm_cache_hits_total counter
vllm:mm_cache_hits_total{engine="0",model_name="m"} 1.0
# HELP vllm:num_requests_running running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 0.0
"""


def test_counters_sum_over_engines_and_default_to_zero():
    got = counters.parse_counters(EXPOSITION)
    assert got["prefix_queries"] == 850.0 and got["prefix_hits"] == 768.0
    assert got["mm_queries"] == 2.0 and got["mm_hits"] == 1.0
    assert got["prompt_tokens"] == 0.0 and set(got) == set(counters.COUNTERS)


def test_order_alternates():
    assert fu.order(["a", "b", "c"], 3) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"),
                                            (1, "a"), (2, "a"), (2, "b"), (2, "c")]


def test_bad_input_is_refused():
    for argv in (["--methods", "nope"], ["--ratio", "0"], ["--turns", "4"],
                 ["--conversations", "0"], ["--url", "http://x:1"]):
        with pytest.raises(SystemExit):
            fu.parse_args(argv)
    quick = fu.parse_args(["--quick"])
    assert (quick.frames, quick.max_tokens, quick.conversations, quick.warmup,
            quick.block_size) == (4, 4, 1, 0, 32)


def test_the_expected_prompt_follows_the_chat_template(tiny_checkpoint):
    video = {"type": "video_url", "video_url": {"url": "file:///v.mp4"}}
    first = [{"role": "user", "content": [video, {"type": "text", "text": fu.QUESTIONS[0]}]}]
    n1 = fu.expected_prompt_tokens(str(tiny_checkpoint), first, 785)
    n1_small = fu.expected_prompt_tokens(str(tiny_checkpoint), first, 80)
    assert n1 - n1_small == 785 - 80
    second = [*first, {"role": "assistant", "content": "a b"},
              {"role": "user", "content": fu.QUESTIONS[1]}]
    assert fu.expected_prompt_tokens(str(tiny_checkpoint), second, 785) > n1


@pytest.mark.engine
def test_quick_run(tmp_path):
    js, png = tmp_path / "fu.json", tmp_path / "fu.png"
    code = fu.main(["--quick", "--json", str(js), "--plot", str(png),
                    "--server-log", str(tmp_path / "serve.log")])
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    report = json.loads(js.read_text())
    assert png.stat().st_size > 1000
    for key in ("settings", "model", "backends", "machine", "loadavg", "cells",
                "speedup_vs_turn1", "checks", "turns", "warmup"):
        assert key in report, key
    s = report["settings"]
    assert s["methods"] == METHODS and s["turns"] == 3 and s["frames"] == 4
    assert len(report["cells"]) == 4 * 3 and len(report["turns"]) == 4 * 3
    assert len(report["backends"]) == 1
    block = report["engine_cache"]["block_size"]
    assert block == 32 and report["engine_cache"]["enable_prefix_caching"]
    c = report["checks"]
    assert c["errors"] == 0 and c["turns_ok"] == c["turns_expected"] == 12
    assert c["ignore_eos_honored"]
    assert c["prompt_tokens_exact"], c["prompt_tokens_mismatches"]
    assert c["prompt_tokens_grow"]
    assert c["followups_hit_mm_cache"] and c["followups_hit_prefix_cache"], report["turns"]
    assert c["prefix_hits_short"] == []
    visual = report["model"]["visual_tokens"]
    assert visual["none"] == 4 * 196 + 1 and visual["earlytom"] < visual["none"]
    seeds = {t["seed"] for t in report["turns"]}
    assert len(seeds) == 4  # one fresh video per method
    for m in METHODS:
        turns = sorted((t for t in report["turns"] if t["method"] == m), key=lambda t: t["turn"])
        assert [t["messages"] for t in turns] == [1, 3, 5]
        assert len({t["seed"] for t in turns}) == 1  # the same video every turn
        assert turns[0]["cache"]["mm_hits"] == 0  # a new video: processed once, on turn 1
        for t in turns:
            assert t["ok"] and t["ttft_s"] > 0 and t["latency_s"] >= t["ttft_s"]
            assert t["prompt_tokens"] == t["prompt_tokens_expected"]
            assert t["cache"]["prompt_tokens"] == t["prompt_tokens"]
        for prev, t in itertools.pairwise(turns):
            assert t["cache"]["mm_hits"] >= 1
            # the prefix cache serves at least every whole KV block of the earlier prompt
            assert t["cache"]["prefix_hits"] >= prev["prompt_tokens"] // block * block > 0
        # the video's tokens are the same on every turn: the text alone grows
        growth = [b["prompt_tokens"] - a["prompt_tokens"] for a, b in itertools.pairwise(turns)]
        assert all(g > 0 for g in growth)
        assert turns[0]["prompt_tokens"] - visual[m] == \
            next(t for t in report["turns"] if t["method"] == "none" and t["turn"] == 1)[
                "prompt_tokens"] - visual["none"]
