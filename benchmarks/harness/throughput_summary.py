"""The throughput benchmark's summaries: ``vllm bench serve``'s metrics per cell, EarlyTom's
ratios over every other arm, the targets, and the checks that each arm got its token count."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.harness import families
from benchmarks.harness.arms import VLLM_ARMS, split_label
from benchmarks.harness.load import Sample, level_rate, parse_requests

#: EarlyTom's saturated output tokens/s over full tokens'.
TARGET_SATURATED_SPEEDUP = 1.3


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_word(p: float) -> str:
    """vllm bench serve's spelling of a percentile in a key: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def serve_metrics(samples: Sequence[Sample], duration: float, slos: dict[str, float] | None = None,
                  percentiles: Sequence[float] = (50, 90, 99)) -> dict[str, Any]:
    """``vllm bench serve``'s metrics of one cell (``calculate_metrics``, same names and
    definitions): counts, throughputs over ``duration`` seconds, and mean / median / std /
    ``pNN`` of TTFT, TPOT (E2E - TTFT over output tokens - 1, for requests with more than one),
    ITL (every chunk gap) and E2E in milliseconds (None without values). ``request_goodput``:
    ok requests meeting every SLO in ``slos`` (ms; a one-token request's TPOT counts as 0) per
    second; None without SLOs."""
    ok = [s for s in samples if s.ok]
    ttfts, tpots, e2els, itls = [], [], [], []
    good = 0
    for s in ok:
        tpot = 0.0
        if (s.completion_tokens or 0) > 1 and s.ttft_s is not None and s.latency_s is not None:
            tpot = (s.latency_s - s.ttft_s) / (s.completion_tokens - 1)
            tpots.append(tpot)
        if s.ttft_s is not None:
            ttfts.append(s.ttft_s)
        if s.latency_s is not None:
            e2els.append(s.latency_s)
        itls += s.itl_s
        values = {"ttft": s.ttft_s, "tpot": tpot, "e2el": s.latency_s}
        if slos and all(values[k] is not None and values[k] * 1000.0 <= v
                        for k, v in slos.items()):
            good += 1
    n_in = sum(s.prompt_tokens or 0 for s in ok)
    n_out = sum(s.completion_tokens or 0 for s in ok)

    def per_s(x: float) -> float | None:
        return round(x / duration, 4) if duration > 0 else None

    out: dict[str, Any] = {
        "completed": len(ok), "failed": len(samples) - len(ok), "duration": round(duration, 4),
        "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": per_s(len(ok)),
        "request_goodput": per_s(good) if slos else None,
        "output_throughput": per_s(n_out), "total_token_throughput": per_s(n_in + n_out)}
    for name, xs in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        ms = [x * 1000.0 for x in xs]

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        out[f"mean_{name}_ms"] = r(statistics.fmean(ms)) if ms else None
        out[f"median_{name}_ms"] = r(percentile(ms, 50))
        out[f"std_{name}_ms"] = r(statistics.pstdev(ms)) if ms else None
        for q in percentiles:
            out[f"p{percentile_word(q)}_{name}_ms"] = r(percentile(ms, q))
    return out


def summarize_cell(samples: list[Sample], wall: float, method: str, level: int | str,
                   loads: list[list[float]], args: argparse.Namespace, visual_tokens: int
                   ) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    lats = [s.latency_s for s in ok if s.latency_s is not None]
    out_tokens = sum(s.completion_tokens or 0 for s in ok)
    prompts = sorted({s.prompt_tokens for s in ok if s.prompt_tokens is not None})
    rate = level_rate(level)
    arm = next((a for a in getattr(args, "arms", ()) if a.label == method), None)

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "method": method, "concurrency": None if rate is not None else level,
        "request_rate": None if rate is None else ("inf" if math.isinf(rate) else rate),
        "level": str(level), "base_method": arm.method if arm else split_label(method)[0],
        "ratio": arm.ratio if arm else None, "server": arm.server if arm else "main",
        "requests": len(samples), "ok": len(ok),
        "errors": len(samples) - len(ok), "wall_s": round(wall, 3),
        "requests_per_s": r3(len(ok) / wall) if wall > 0 else None,
        "output_tokens_per_s": r3(out_tokens / wall) if wall > 0 else None,
        "output_tokens": out_tokens,
        "ttft_p50_s": r3(percentile(ttfts, 50)), "ttft_p95_s": r3(percentile(ttfts, 95)),
        "ttft_mean_s": r3(statistics.fmean(ttfts)) if ttfts else None,
        "latency_p50_s": r3(percentile(lats, 50)), "latency_p95_s": r3(percentile(lats, 95)),
        "prompt_tokens": prompts,
        "visual_tokens_expected": visual_tokens,
        "all_max_tokens": all(s.completion_tokens == args.max_tokens for s in ok),
        "loadavg_1m": [round(x[0], 2) for x in loads],
        **serve_metrics(samples, wall, getattr(args, "slos", None),
                        getattr(args, "percentile_list", (50, 90, 99))),
    }


def compared(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(EarlyTom label, other label) pairs to compare: every EarlyTom arm against full tokens
    and against each other method at its own ratio."""
    pairs = []
    for e in methods:
        em, er = split_label(e)
        if em != "earlytom":
            continue
        for o in methods:
            om, orr = split_label(o)
            if o != e and (om == "none" or (om != "earlytom" and orr == er)):
                pairs.append((e, o))
    return pairs


def ratios(cells: dict[tuple[str, int | str], dict[str, Any]], levels: Sequence[int | str],
           methods: Sequence[str]) -> dict[str, Any]:
    """EarlyTom / other (:func:`compared`), per level: throughput ratios (>1 better) and TTFT
    speedups (other's p50 / EarlyTom's p50, >1 better). Keys ``earlytom_vs_none`` (one ratio)
    or ``earlytom@0.15_vs_vllm_evs@0.15``."""
    out: dict[str, Any] = {}

    def div(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a and b else None

    for e_label, other in compared(methods):
        rows = {}
        for c in levels:
            e, o = cells.get((e_label, c)), cells.get((other, c))
            if not e or not o:
                continue
            rows[str(c)] = {
                "requests_per_s": div(e["requests_per_s"], o["requests_per_s"]),
                "output_tokens_per_s": div(e["output_tokens_per_s"], o["output_tokens_per_s"]),
                "ttft_p50_speedup": div(o["ttft_p50_s"], e["ttft_p50_s"]),
                "ttft_p95_speedup": div(o["ttft_p95_s"], e["ttft_p95_s"]),
            }
        out[f"{e_label}_vs_{other}"] = rows
    return out


def saturated(cells: dict[tuple[str, int | str], dict[str, Any]], method: str,
              levels: Sequence[int | str]) -> dict[str, Any] | None:
    rows = [cells[(method, c)] for c in levels if (method, c) in cells
            and cells[(method, c)]["output_tokens_per_s"]]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["output_tokens_per_s"])
    return {"output_tokens_per_s": best["output_tokens_per_s"],
            "requests_per_s": best["requests_per_s"], "at_concurrency": best["concurrency"],
            "at_level": best.get("level", str(best["concurrency"]))}


def targets(cells: dict[tuple[str, int | str], dict[str, Any]], levels: Sequence[int | str],
            methods: Sequence[str]) -> dict[str, Any]:
    """Per EarlyTom arm: ``saturated_vs_full`` (>= 1.3x full tokens' best output tokens/s) and
    ``above_<other>_every_level`` against each same-ratio baseline (names prefixed with the
    arm's label where a run has several ratios, e.g. ``earlytom@0.15_above_vllm_evs@0.15_...``).
    Reported, never asserted."""
    out: dict[str, Any] = {}
    sat = {m: saturated(cells, m, levels) for m in methods}
    for e_label, other in compared(methods):
        prefix = "" if e_label == "earlytom" else f"{e_label}_"
        e = sat.get(e_label)
        if split_label(other)[0] == "none":
            if e and sat.get(other):
                x = e["output_tokens_per_s"] / sat[other]["output_tokens_per_s"]
                out[f"{prefix}saturated_vs_full"] = {
                    "target": f">= {TARGET_SATURATED_SPEEDUP}x",
                    "required": TARGET_SATURATED_SPEEDUP, "value": round(x, 3),
                    "met": x >= TARGET_SATURATED_SPEEDUP, "earlytom": e, "none": sat[other]}
            continue
        per = {}
        for c in levels:
            a, b = cells.get((e_label, c)), cells.get((other, c))
            if a and b and a["output_tokens_per_s"] and b["output_tokens_per_s"]:
                per[str(c)] = round(a["output_tokens_per_s"] / b["output_tokens_per_s"], 3)
        out[f"{prefix}above_{other}_every_level"] = {
            "target": "> 1.0x at every load level", "ratios": per,
            "met": bool(per) and all(v > 1.0 for v in per.values()),
            "missed_at": [c for c, v in per.items() if v <= 1.0]}
    out["saturated"] = sat
    return out




def summarize_cells(samples: list[Sample], batches: list[dict[str, Any]],
                    args: argparse.Namespace, visual_tokens: dict[str, int]
                    ) -> dict[tuple[str, int | str], dict[str, Any]]:
    """(method, level) -> the cell's summary, with the wall-weighted foreign cores."""
    cells: dict[tuple[str, int | str], dict[str, Any]] = {}
    for c in args.levels:
        for arm in args.arms:
            m = arm.label
            got = [s for s in samples if s.method == m and s.level == str(c)]
            bs = [b for b in batches if b["method"] == m and b["level"] == str(c)]
            wall = sum(b["wall_s"] for b in bs)
            loads = [b["loadavg_before"] for b in bs] + [bs[-1]["loadavg_after"]] if bs else []
            cells[(m, c)] = summarize_cell(got, wall, m, c, loads, args, visual_tokens[m])
            foreign = [(b["foreign_cores"], b["wall_s"]) for b in bs]
            weight = sum(w for _, w in foreign)
            cells[(m, c)]["foreign_cores"] = round(
                sum(f * w for f, w in foreign) / weight, 2) if weight > 0 else None
    return cells


def expected_visual_tokens(args: argparse.Namespace, per_frame: int,
                           vllm_servers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each arm's visual tokens per video: the library's count, or what vLLM's own pruning
    keeps (its server's ``evs_tokens``)."""
    return {a.label: vllm_servers[a.server]["evs_tokens"] if a.method in VLLM_ARMS else
            families.expected_rows(args.fam, a.method, a.ratio, args.frames, per_frame)
            for a in args.arms}


def budget_checks(samples: list[Sample], args: argparse.Namespace,
                  visual_tokens: dict[str, int]) -> dict[str, Any]:
    """Errors, ignore_eos, and that each method saved exactly the expected count of visual
    tokens against full tokens (measured from ``usage.prompt_tokens``); a vLLM arm must keep
    exactly EarlyTom's count at its ratio (``<arm>_same_prompt_as_earlytom``)."""
    ok = [s for s in samples if s.ok]
    methods = [a.label for a in args.arms]
    prompt_by_method = {m: sorted({s.prompt_tokens for s in ok if s.method == m}) for m in methods}
    checks: dict[str, Any] = {
        "errors": sum(1 for s in samples if not s.ok),
        "ignore_eos_honored": bool(ok) and all(s.completion_tokens == args.max_tokens for s in ok),
        "prompt_tokens_by_method": prompt_by_method,
    }
    if "none" in methods and prompt_by_method.get("none"):
        full = prompt_by_method["none"][0]
        diffs = {m: {"measured": full - prompt_by_method[m][0],
                     "expected": visual_tokens["none"] - visual_tokens[m]}
                 for m in methods if prompt_by_method.get(m)}
        checks["visual_tokens_saved"] = diffs
        checks["budget_matches"] = all(d["measured"] == d["expected"] for d in diffs.values()) \
            and all(len(v) == 1 for v in prompt_by_method.values() if v)
    for a in args.arms:
        twin = next((b.label for b in args.arms if b.method == "earlytom" and b.ratio == a.ratio),
                    None)
        if a.method in VLLM_ARMS and twin:
            same = checks.setdefault(f"{a.method}_same_prompt_as_earlytom", {})
            same[a.label] = {a.method: prompt_by_method.get(a.label),
                             "earlytom": prompt_by_method.get(twin),
                             "expected_equal": visual_tokens[a.label] == visual_tokens[twin]}
            same[a.label]["equal"] = bool(prompt_by_method.get(a.label)) and \
                prompt_by_method.get(a.label) == prompt_by_method.get(twin)
    return checks


def run_settings(args: argparse.Namespace, *, prompt: str, media: str,
                 servers: Mapping[str, Any], vllm_servers: Mapping[str, Mapping[str, Any]]
                 ) -> dict[str, Any]:
    """The report's ``settings``: what ran, against which servers (``servers``: by key, the
    spawned ones with their command)."""
    levels = args.levels
    main_server = servers.get("main")
    return {
        "family": args.fam.name,
        "frames": args.frames, "video": args.video, "video_size": args.video_size,
        "video_fps": args.fam.benchmark.video_fps,
        "media": media, "methods": [a.label for a in args.arms],
        "arms": [asdict(a) for a in args.arms], "ratio": args.ratio,
        "ratios": args.ratio_list, "concurrency": args.concurrency_levels,
        "levels": [str(x) for x in levels],
        "request_rates": [level_rate(x) if not math.isinf(level_rate(x)) else "inf"
                          for x in levels if level_rate(x) is not None],
        "requests_per_cell": {
            str(c): (args.rate_requests if level_rate(c) is not None
                     else parse_requests(args.requests, c)) for c in levels},
        "requests_formula": args.requests, "rate_requests": args.rate_requests,
        "burstiness": args.burstiness, "arrival_seed": args.arrival_seed,
        "max_concurrency": args.max_concurrency, "goodput_slos_ms": args.slos,
        "max_num_batched_tokens": getattr(args, "max_num_batched_tokens", None),
        "percentiles": args.percentile_list, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.0,
        "warmup_per_method": args.warmup, "quick": args.quick, "prompt": prompt,
        "spawned_server": not args.url,
        "server_command": main_server.command[1:] if main_server and main_server.command
        else None,
        "servers": {k: {"command": v.command[1:] if v.command else None,
                        **{x: y for x, y in vllm_servers.get(k, {}).items()
                           if x != "serve_args"}}
                    for k, v in servers.items()},
        "load": "concurrency levels: closed loop, c workers, one request in flight each; "
                "rate=R levels: open loop, arrivals at R/s (gamma intervals, burstiness)",
        "ttft": "client side, send -> first streamed chunk with content",
        "metrics": "vllm bench serve's names and definitions (benchmarks/serve.py "
                   "calculate_metrics), per cell: duration = the cell's wall time",
    }
