"""Tables of the benchmarks' results: the README's markdown tables and the console tables the
benchmarks print. Everything here reads a report dict (a results JSON), never a benchmark's
state."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.harness.arms import METHODS, SHORT


def ttft_table(data: dict) -> str:
    lines = ["| video | r | method | TTFT s | vision s | tokens s | prefill+rest s | prompt tokens "
             "| speedup vs full | EarlyTom vs this |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    cfg = data["config"]
    methods = cfg.get("methods", METHODS)  # in the run's order (the family's)
    for video, vd in data["videos"].items():
        cells = vd["cells"]
        for ratio in (f"{r:.2f}" for r in cfg.get("ratios", (0.25, 0.10))):
            et = cells[f"earlytom@{ratio}"]["summary_seconds"]["ttft"]["median"]
            for m in methods:
                key = "none" if m == "none" else f"{m}@{ratio}"
                c = cells[key]
                s = c["summary_seconds"]
                t = s["ttft"]["median"]
                full = cells["none"]["summary_seconds"]["ttft"]["median"]
                rest = s.get("prefill_and_rest", s.get("prefill"))["median"]
                lines.append(
                    f"| {video} | {ratio} | {m} | {t:.2f} | {s['vision']['median']:.2f} | "
                    f"{s['tokens']['median']:.2f} | {rest:.2f} | {c['prompt_tokens']} | "
                    f"{full / t:.2f}x | {t / et:.2f}x |")
    share = {v: round(vd["vision_share_none"]["vision_encoding_share"], 3)
             for v, vd in data["videos"].items()}
    lines.append("")
    lines.append(f"Vision encoding share of the full-token TTFT: {share}.")
    for t in data.get("targets", []):
        val = t.get("measured_from_medians")
        lines.append(f"- target {t['video']}: {t['name']} >= {t['required']}: measured "
                     f"{val if not isinstance(val, float) else round(val, 3)} -> "
                     f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def level_key(cell: dict[str, Any]) -> str:
    """A throughput cell's load level: "4" (concurrency) or "rate=2" (older files: concurrency)."""
    return str(cell.get("level", cell["concurrency"]))


def report_levels(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    return [str(x) for x in s.get("levels", s["concurrency"])]


def report_methods(report: dict[str, Any]) -> list[str]:
    return list(report["settings"].get("methods", METHODS))


def throughput_table(data: dict) -> str:
    lines = ["| concurrency | method | requests/s | output tokens/s | TTFT p50 s | TTFT p95 s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in report_levels(data):
        for m in report_methods(data):
            for cell in data["cells"]:
                if level_key(cell) == c and cell["method"] == m:
                    lines.append(f"| {c} | {m} | {cell['requests_per_s']:.3f} | "
                                 f"{cell['output_tokens_per_s']:.2f} | {cell['ttft_p50_s']:.2f} | "
                                 f"{cell['ttft_p95_s']:.2f} |")
    lines.append("")
    for name, t in data.get("targets", {}).items():
        if isinstance(t, dict) and "met" in t:
            detail = t.get("value", t.get("ratios"))
            lines.append(f"- {name} ({t.get('target')}): {detail} -> "
                         f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def serve_metrics_table(data: dict) -> str:
    """vllm bench serve's latency percentiles and goodput per cell (ms), where the report has
    them (throughput.json files written before they were added do not)."""
    pcts = [str(int(p)) if int(p) == p else str(p)
            for p in data["settings"].get("percentiles", (50, 90, 99))]
    head = ["level", "method"] + [f"{m} p{p} ms" for m in ("TTFT", "TPOT", "ITL", "E2E")
                                  for p in pcts] + ["goodput req/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in report_levels(data):
        for m in report_methods(data):
            for cell in data["cells"]:
                if level_key(cell) != c or cell["method"] != m or "mean_ttft_ms" not in cell:
                    continue
                vals = [cell.get(f"p{p}_{k}_ms") for k in ("ttft", "tpot", "itl", "e2el")
                        for p in pcts] + [cell.get("request_goodput")]
                lines.append(f"| {c} | {m} | " + " | ".join(
                    "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.3g}")
                    for v in vals) + " |")
    return "\n".join(lines)



def print_ttft(report: dict[str, Any]) -> None:
    """The TTFT benchmark's console table (every cell, breakdown, speedups, targets)."""
    bases = [m for m in report["config"].get("methods", METHODS) if m != "earlytom"]
    for vname, v in report["videos"].items():
        print(f"\n== {vname} video ({report['config']['frames']} frames) ==")
        heads = " ".join(f"{'vs ' + SHORT.get(b, b):>11s}" for b in bases)
        print(f"{'cell':26s} {'TTFT med':>8s} {'min':>6s} {'max':>6s} {'front':>6s} "
              f"{'vision':>6s} {'tokens':>6s} {'prefill':>7s} {'ptoks':>6s} {'encF':>5s} "
              f"{heads} {'cpu s':>6s} {'cpu/none':>8s} {'retry':>5s}")
        for lb, c in v["cells"].items():
            s, b = c["summary_seconds"], c["breakdown_median_seconds"]
            sp = v["speedups"].get(lb, {})

            def f(key: str, sp: dict[str, Any] = sp) -> str:
                return f"{sp[key]['from_medians']:.2f}x" if key in sp else "-"

            cols = " ".join(f"{f('vs_' + b):>11s}" for b in bases)

            print(f"{lb:26s} {s['ttft']['median']:8.3f} {s['ttft']['min']:6.2f} "
                  f"{s['ttft']['max']:6.2f} {b['frontend']:6.3f} {b['vision']:6.3f} "
                  f"{b['tokens']:6.3f} {b['prefill']:7.3f} {c['prompt_tokens']!s:>6s} "
                  f"{c['frames']['mean_encoder_frames']:5.1f} {cols} "
                  f"{s.get('process_cpu_seconds', {}).get('median', float('nan')):6.2f} "
                  f"{sp.get('vs_none', {}).get('cpu_time_medians', float('nan')):7.2f}x "
                  f"{len(c['discarded_contended_samples']):>2d}/{c['contended_samples_kept']:<2d}")
        if "vision_share_none" in v:
            vs = v["vision_share_none"]
            print(f"vision share of TTFT (none): {vs['vision_encoding_share']:.1%} "
                  f"(+tokens {vs['vision_plus_tokens_share']:.1%}; target "
                  f"{vs['band'][0]:.0%}-{vs['band'][1]:.0%}"
                  + (f"; paper {vs['paper']:.1%})" if vs.get("paper") else ")"))
    print()
    for t in report["targets"]:
        extra = ""
        if t.get("measured_cpu_time") is not None:
            extra = (f"; paired {t['measured_paired_median']:.2f}, minima "
                     f"{t['measured_from_minima']:.2f}, CPU time {t['measured_cpu_time']:.2f} "
                     f"({'met' if t['met_by_cpu_time'] else 'missed'})")
        print(f"[{'MET ' if t['met'] else 'MISS'}] {t['video']}: {t['name']}: "
              f"{t['measured_from_medians']:.3f} (required {t['required']}){extra}")
        if t["reason"]:
            print(f"       {t['reason']}")


def print_throughput(report: dict[str, Any]) -> None:
    """The throughput benchmark's console table (every cell, ratios, targets), then vllm bench
    serve's percentiles and goodput."""
    cells = report["cells"]
    levels = report_levels(report)
    methods = report_methods(report)
    s = report["settings"]
    print(f"\nthroughput: {s['frames']} frames, {s['max_tokens']} output tokens, ratio "
          f"{s.get('ratios', s['ratio'])}, model {report['model']['served_name']}")
    width = max(13, *(len(m) + 1 for m in methods))
    head = (f"{'method':<{width}}{'level':>7}{'ok':>5}{'req/s':>9}{'out tok/s':>11}"
            f"{'TTFT p50':>10}{'TTFT p95':>10}{'prompt':>8}{'load1':>7}{'other':>7}")
    print(head)
    print("-" * len(head))
    for c in levels:
        for m in methods:
            row = next((r for r in cells if r["method"] == m and level_key(r) == c), None)
            if row is None:
                continue

            def f(x: Any, w: int, d: int = 3) -> str:
                return f"{x:>{w}.{d}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"

            load = statistics.fmean(row["loadavg_1m"]) if row["loadavg_1m"] else None
            prompt = row["prompt_tokens"][0] if row["prompt_tokens"] else "-"
            print(f"{m:<{width}}{c:>7}{row['ok']:>5}{f(row['requests_per_s'], 9)}"
                  f"{f(row['output_tokens_per_s'], 11, 2)}{f(row['ttft_p50_s'], 10)}"
                  f"{f(row['ttft_p95_s'], 10)}{prompt!s:>8}{f(load, 7, 2)}"
                  f"{f(row.get('foreign_cores'), 7, 2)}")
    print("(level: concurrency, or rate=R requests/s; load1: 1-min load average; other: CPU "
          f"cores used by other jobs during the cell, of {report['machine']['logical_cpus']})")
    if any("mean_ttft_ms" in r for r in cells):
        print("\n" + serve_metrics_table(report))
    for name, rows in report["ratios"].items():
        print(f"\n{name} (per level): " + ", ".join(
            f"{c}: tput x{r['output_tokens_per_s']}, TTFT p50 x{r['ttft_p50_speedup']}"
            for c, r in rows.items()))
    print()
    for name, t in report["targets"].items():
        if name == "saturated":
            continue
        print(f"target {name}: {'MET' if t['met'] else 'MISSED'} "
              f"({t.get('value', t.get('ratios'))}, want {t['target']})")


def followup_table(report: dict[str, Any]) -> str:
    """Markdown: per method and turn, TTFT, prompt tokens and the cache hits behind the turn."""
    lines = ["| method | turn | TTFT s (median) | vs turn 1 | prompt tokens | prefix hits / "
             "queries (tokens) | mm hits / queries |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    sp = report["speedup_vs_turn1"]
    for c in report["cells"]:
        cache = c["cache"]
        x = sp[c["method"]].get(str(c["turn"])) if c["turn"] > 1 else None
        ttft = f"{c['ttft_median_s']:.3f}" if c["ttft_median_s"] is not None else "-"
        lines.append(
            f"| {c['method']} | {c['turn']} | {ttft} | {f'{x:.1f}x' if x else '-'} | "
            f"{', '.join(map(str, c['prompt_tokens'])) or '-'} | "
            f"{_n(cache['prefix_hits'])} / {_n(cache['prefix_queries'])} | "
            f"{_n(cache['mm_hits'])} / {_n(cache['mm_queries'])} |")
    return "\n".join(lines)


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def print_followup(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"\nfollow-up questions: {s['frames']} frames, {s['turns']} turns, "
          f"{s['max_tokens']} answer tokens, ratio {s['ratio']}, {s['conversations']} "
          f"conversation(s) per method, model {report['model']['served_name']}")
    print(followup_table(report))
    print("checks: " + ", ".join(f"{k}={v}" for k, v in report["checks"].items()
                                  if not isinstance(v, list)))


def format_flops_table(results: dict[str, Any], key: str, *, paper_only: bool = False) -> str:
    m = results["models"][key]
    c, p = m["correct"], m["paper"]
    ratios = results["settings"]["ratios"]
    text = results["settings"]["text_tokens"]
    causal = " causal" if results["settings"]["causal_llm_attention"] else ""
    lines = [
        f"{m['label']} ({m['llm']['name']}), {m['frames']} frames, EarlyTom schedule "
        f"{m['schedule']}; prefill {results['unit']}",
    ]
    ours_hdr = (f"{'LLM vis':>7} {'full':>7} {'post':>7} {'EarlyTom':>8} {'rule':>7}"
                f" {'enc(ET)':>7}")
    paper_hdr = (f"{'LLM vis':>7} {'full':>7} {'post':>7} {'HoliTom':>7} {'EarlyTom*':>9}"
                 f" {'enc(ET)':>7}")
    if paper_only:
        lines.append("  paper convention (one-sequence encoder, MHA, 2-matrix MLP, no text)")
        lines.append(f"{'ratio':>5} | {paper_hdr}")
    else:
        lines.append(f"{'':5} | {'this project (per frame, GQA, SwiGLU, ' + str(text) + ' text' + causal + ')':<51}"
                     f" || paper convention (one sequence, MHA, 2-matrix MLP)")
        lines.append(f"{'ratio':>5} | {ours_hdr} || {paper_hdr}")
    lines.append("-" * len(lines[-1]))
    for r in ratios:
        ours = (f"{c['post_encoder'][r]['llm_visual_tokens']:>7} "
                f"{c['full'][r]['tflops']['total']:>7.2f} "
                f"{c['post_encoder'][r]['tflops']['total']:>7.2f} "
                f"{c['earlytom'][r]['tflops']['total']:>8.2f} "
                f"{c['earlytom_stage1_rule'][r]['tflops']['total']:>7.2f} "
                f"{c['earlytom'][r]['tflops']['encoder']:>7.2f}")
        pap = (f"{p['post_encoder'][r]['llm_visual_tokens']:>7} "
               f"{p['full'][r]['tflops']['total']:>7.2f} "
               f"{p['post_encoder'][r]['tflops']['total']:>7.2f} "
               f"{p['holitom'][r]['tflops']['total']:>7.2f} "
               f"{p['earlytom'][r]['tflops']['total']:>9.2f} "
               f"{p['earlytom'][r]['tflops']['encoder']:>7.2f}")
        lines.append(f"{r:>5} | {pap}" if paper_only else f"{r:>5} | {ours} || {pap}")
    full_c = c["full"][ratios[0]]["tflops"]
    full_p = p["full"][ratios[0]]["tflops"]
    rule = c["earlytom_stage1_rule"]
    rule_frames = "; ".join(
        f"{r}: {','.join(str(v) for v in rule[r]['frames_after_prune'].values())}"
        for r in ratios if rule[r]["frames_after_prune"])
    lines.append(
        f"  full vision: per frame {full_c['encoder']:.2f} (+patch {full_c['patch_embed']:.3f}"
        f", projector {full_c['projector']:.2f}) vs one sequence {full_p['encoder']:.2f}; "
        f"full LLM {full_c['llm']:.2f} vs {full_p['llm']:.2f}")
    lines.append(f"  'rule' = Stage I rule schedule, frames after each prune layer: {rule_frames}")
    lines.append("  EarlyTom* = paper's rows: in-encoder schedule + LLM merge at layer 18 "
                 "(not servable under vLLM); enc(ET) = EarlyTom encoder alone")
    return "\n".join(lines)


def format_flops_checks(results: dict[str, Any]) -> str:
    lines = ["Published figures (LLaVA-OV-7B, 32 frames):"]
    for ch in results["paper_checks"]:
        mark = "ok " if ch["ok"] else "OFF"
        lines.append(f"  [{mark}] {ch['name']:<40} computed {ch['computed']:>7.3f}   "
                     f"published {ch['published']}")
    return "\n".join(lines)


def format_qwen_paper(results: dict[str, Any]) -> str:
    q = results["qwen2_5_vl_paper"]
    st = q["setting"]
    lines = [f"Published Qwen2.5-VL-7B figures (paper convention; setting {st['frames']} frames x "
             f"{st['resolution']} = {st['slices']} slices x {st['llm_tokens_per_slice']} tokens):",
             f"  full tokens: computed {q['full_paper_convention']}   published "
             f"{q['full_published']}",
             f"  EarlyTom 15%: paper convention {q['earlytom_15'].get('paper', {})}",
             f"                this project     {q['earlytom_15'].get('correct', {})}",
             f"                published {q['earlytom_15_published']}; paper-convention floor "
             f"(blocks 0..7 on all slices) {q['paper_convention_floor_before_first_prune']}",
             "  nearest settings to 554.7: " + "; ".join(
                 f"{x['frames']}f x {x['resolution']}^2 {x['tflops']}"
                 for x in q["nearest_settings"])]
    return "\n".join(lines)
