"""Print the README's TTFT and throughput tables from the committed results JSON.

    python -m benchmarks.report            # every family's TTFT and throughput tables
    python -m benchmarks.report [--ttft benchmarks/results/ttft.json]
                                [--throughput benchmarks/results/throughput.json]

The README quotes this output, so its figures always trace back to a results file. The TTFT and
throughput benchmarks print their console tables and draw their PNGs with the functions here too:
everything below reads a report dict (the results JSON), never a benchmark's state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import METHODS, RESULTS


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


def _level_key(cell: dict[str, Any]) -> str:
    """A throughput cell's load level: "4" (concurrency) or "rate=2" (older files: concurrency)."""
    return str(cell.get("level", cell["concurrency"]))


def _levels(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    return [str(x) for x in s.get("levels", s["concurrency"])]


def _methods(report: dict[str, Any]) -> list[str]:
    return list(report["settings"].get("methods", METHODS))


def throughput_table(data: dict) -> str:
    lines = ["| concurrency | method | requests/s | output tokens/s | TTFT p50 s | TTFT p95 s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in _levels(data):
        for m in _methods(data):
            for cell in data["cells"]:
                if _level_key(cell) == c and cell["method"] == m:
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
    for c in _levels(data):
        for m in _methods(data):
            for cell in data["cells"]:
                if _level_key(cell) != c or cell["method"] != m or "mean_ttft_ms" not in cell:
                    continue
                vals = [cell.get(f"p{p}_{k}_ms") for k in ("ttft", "tpot", "itl", "e2el")
                        for p in pcts] + [cell.get("request_goodput")]
                lines.append(f"| {c} | {m} | " + " | ".join(
                    "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.3g}")
                    for v in vals) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Console tables and plots of the TTFT and throughput reports


def print_ttft(report: dict[str, Any]) -> None:
    """The TTFT benchmark's console table (every cell, breakdown, speedups, targets)."""
    bases = [m for m in report["config"].get("methods", METHODS) if m != "earlytom"]
    short = {"none": "none", "post_encoder": "post", "evs": "evs", "vllm_evs": "vLLM-evs"}
    for vname, v in report["videos"].items():
        print(f"\n== {vname} video ({report['config']['frames']} frames) ==")
        heads = " ".join(f"{'vs ' + short.get(b, b):>11s}" for b in bases)
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


def plot_ttft(report: dict[str, Any], path: Path) -> None:
    """ttft.png: the median TTFT breakdown per cell, one panel per video and ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = list(report["videos"])
    ratios = report["config"]["ratios"]
    fig, axes = plt.subplots(len(videos), len(ratios), squeeze=False,
                             figsize=(6.2 * len(ratios), 0.55 * 8 * len(videos) + 1.2))
    colours = {"frontend": "#bbbbbb", "vision": "#4472c4", "tokens": "#ed7d31",
               "prefill": "#70ad47"}
    names = {"frontend": "preprocessing", "vision": "vision encoding",
             "tokens": "token processing", "prefill": "LLM prefill (+ scheduling)"}
    for i, vname in enumerate(videos):
        cells = report["videos"][vname]["cells"]
        sp = report["videos"][vname]["speedups"]
        for j, r in enumerate(ratios):
            ax = axes[i][j]
            labels = [lb for lb, c in cells.items() if c["ratio"] is None or c["ratio"] == r]
            ypos = list(range(len(labels)))[::-1]
            for y, lb in zip(ypos, labels, strict=True):
                c = cells[lb]
                left = 0.0
                for p in colours:  # the four parts, in TTFT order
                    w = max(c["breakdown_median_seconds"][p], 0.0)
                    ax.barh(y, w, left=left, color=colours[p], edgecolor="white", height=0.7,
                            label=names[p] if (y == ypos[0] and i == 0 and j == 0) else None)
                    left += w
                ttft = c["summary_seconds"]["ttft"]["median"]
                txt = f"{ttft:.2f}s"
                if lb in sp and "vs_none" in sp[lb]:
                    txt += f"  ({sp[lb]['vs_none']['from_medians']:.2f}x)"
                ax.text(left, y, " " + txt, va="center", fontsize=8)
            ticks = [lb.replace(f"@{r:.2f}", "") + ("*" if cells[lb]["extra"] else "")
                     for lb in labels]
            ax.set_yticks(ypos, ticks, fontsize=8)
            ax.set_xlabel("median TTFT (s)")
            ax.set_title(f"{vname} video, {report['config']['frames']} frames, r = {r:.2f}",
                         fontsize=10)
            xmax = max(c["summary_seconds"]["ttft"]["median"] for c in cells.values())
            ax.set_xlim(0, xmax * 1.35)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, frameon=False)
    m, cfg = report["machine"], report["config"]
    et = cfg["earlytom_default"]
    threads = f", {cfg['threads']} thread(s)" if cfg.get("threads") else ""
    fig.suptitle(f"TTFT breakdown, medians of {cfg['runs']} runs ({m.get('gpu') or m['cpu_model']}"
                 f"{threads}; {cfg['model_desc']}); speedup vs full tokens in brackets.\n"
                 f"earlytom = serving default prune layers ({','.join(map(str, et['prune_layers']))}), "
                 f"tau {et['tau']}, max_window {et['max_window']}; "
                 f"* = the paper's alternative prune layers (not the default)",
                 fontsize=9, y=0.01, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_throughput(report: dict[str, Any]) -> None:
    """The throughput benchmark's console table (every cell, ratios, targets), then vllm bench
    serve's percentiles and goodput."""
    cells = report["cells"]
    levels = _levels(report)
    methods = _methods(report)
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
            row = next((r for r in cells if r["method"] == m and _level_key(r) == c), None)
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


def plot_throughput(report: dict[str, Any], path: Path) -> None:
    """throughput.png: output tokens/s, TTFT and EarlyTom's ratios against the load level (one
    tick per level: 1, 2, 4, 8 are evenly spaced as on a log axis; rate levels follow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = _levels(report)
    methods = _methods(report)
    pos = {c: i for i, c in enumerate(levels)}
    cells = {(r["method"], _level_key(r)): r for r in report["cells"]}
    colors = {"none": "#7f7f7f", "post_encoder": "#1f77b4", "evs": "#ff7f0e",
              "earlytom": "#d62728", "vllm_evs": "#2ca02c"}
    labels = {"none": "full tokens", "post_encoder": "post-encoder",
              "evs": "EVS", "earlytom": "EarlyTom", "vllm_evs": "vLLM EVS"}
    ratio_styles = {r: ("-", "--", "-.", ":")[i % 4] for i, r in enumerate(
        dict.fromkeys(m.partition("@")[2] for m in methods if "@" in m))}

    def style(label: str) -> dict[str, Any]:
        m, _, r = label.partition("@")
        name = labels.get(m, m) + (f" r={r}" if r else "")
        return {"color": colors.get(m), "label": name, "linestyle": ratio_styles.get(r, "-")}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for m in methods:
        xs = [c for c in levels if (m, c) in cells]
        kw = {"marker": "o", **style(m)}
        axes[0].plot([pos[c] for c in xs], [cells[(m, c)]["output_tokens_per_s"] or 0
                                            for c in xs], **kw)
        axes[1].plot([pos[c] for c in xs], [cells[(m, c)]["ttft_p50_s"] or float("nan")
                                            for c in xs], **kw)
        axes[1].plot([pos[c] for c in xs], [cells[(m, c)]["ttft_p95_s"] or float("nan")
                                            for c in xs],
                     linestyle=":", color=style(m)["color"], marker=".")
    for name, rows in report["ratios"].items():
        other = name.partition("_vs_")[2]
        xs = [c for c in rows if c in pos]
        axes[2].plot([pos[c] for c in xs], [rows[c]["output_tokens_per_s"] or float("nan")
                                            for c in xs],
                     marker="o", **{**style(other), "label": name.replace("_vs_", " / ")})
    axes[2].axhline(1.0, color="black", linewidth=0.8)
    required = report["targets"].get("saturated_vs_full", {}).get("required")
    if required:
        axes[2].axhline(required, color="#7f7f7f", linestyle="--", linewidth=0.8,
                        label=f"{required}x (target vs full)")
    titles = ("output tokens/s (higher is better)", "TTFT p50 (solid), p95 (dotted), s",
              "EarlyTom throughput / other")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels)
        ax.set_xlabel("load: concurrency (requests in flight) or rate=R requests/s")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    s = report["settings"]
    load = report["loadavg"]
    fig.suptitle(f"earlytom-serve, {s['frames']} frames/video, {s['max_tokens']} output tokens, "
                 f"retain ratio {s.get('ratios', s['ratio'])} ({report['model']['served_name']}; "
                 f"{report['machine']['logical_cpus']} shared CPUs, 1-min load "
                 f"{load['min_1m']:.1f}-{load['max_1m']:.1f} during the run)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The results files the README quotes, per family (``--ttft`` / ``--throughput`` pick one).
TTFT_FILES = ("ttft.json", "ttft_qwen2_5_vl.json")
THROUGHPUT_FILES = ("throughput.json", "throughput_qwen2_5_vl.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ttft", type=Path, default=None, help="one TTFT results file (default: all)")
    p.add_argument("--throughput", type=Path, default=None,
                   help="one throughput results file (default: all)")
    args = p.parse_args(argv)
    ttft = [args.ttft] if args.ttft else [RESULTS / f for f in TTFT_FILES]
    tput = [args.throughput] if args.throughput else [RESULTS / f for f in THROUGHPUT_FILES]
    if args.ttft and not args.throughput:
        tput = []
    if args.throughput and not args.ttft:
        ttft = []
    for path in ttft:
        if path.exists():
            print(f"<!-- {path.name} -->")
            print(ttft_table(json.loads(path.read_text())))
            print()
    for path in tput:
        if path.exists():
            print(f"<!-- {path.name} -->")
            print(throughput_table(json.loads(path.read_text())))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
