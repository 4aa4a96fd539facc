"""Plots of the benchmarks' results (PNG). Everything here reads a report dict (a results
JSON), never a benchmark's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness.arms import COLORS, LABELS
from benchmarks.harness.tables import level_key, report_levels, report_methods


def _run_note(report: dict[str, Any]) -> str:
    """``model; N shared CPUs, 1-min load a-b`` of a client benchmark's report."""
    load = report["loadavg"]
    return (f"{report['model']['served_name']}; {report['machine']['logical_cpus']} shared "
            f"CPUs, 1-min load {load['min_1m']:.1f}-{load['max_1m']:.1f}")


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Lay out a matplotlib figure, save it as ``path`` (PNG) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


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


def plot_throughput(report: dict[str, Any], path: Path) -> None:
    """throughput.png: output tokens/s, TTFT and EarlyTom's ratios against the load level (one
    tick per level: 1, 2, 4, 8 are evenly spaced as on a log axis; rate levels follow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = report_levels(report)
    methods = report_methods(report)
    pos = {c: i for i, c in enumerate(levels)}
    cells = {(r["method"], level_key(r)): r for r in report["cells"]}
    ratio_styles = {r: ("-", "--", "-.", ":")[i % 4] for i, r in enumerate(
        dict.fromkeys(m.partition("@")[2] for m in methods if "@" in m))}

    def style(label: str) -> dict[str, Any]:
        m, _, r = label.partition("@")
        name = LABELS.get(m, m) + (f" r={r}" if r else "")
        return {"color": COLORS.get(m), "label": name, "linestyle": ratio_styles.get(r, "-")}

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
    fig.suptitle(f"earlytom-serve, {s['frames']} frames/video, {s['max_tokens']} output tokens, "
                 f"retain ratio {s.get('ratios', s['ratio'])} ({_run_note(report)} during the "
                 "run)", fontsize=10)
    save_figure(fig, path)


def plot_followup(report: dict[str, Any], path: Path) -> None:
    """followup.png: TTFT per turn (log scale) and the prefix-cache hit share per turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    methods, n = s["methods"], s["turns"]
    cells = {(c["method"], c["turn"]): c for c in report["cells"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [k + (i - (len(methods) - 1) / 2) * width for k in range(1, n + 1)]
        ttft = [cells[(m, k)]["ttft_median_s"] or 0.0 for k in range(1, n + 1)]
        rate = [cells[(m, k)]["prefix_hit_rate"] or 0.0 for k in range(1, n + 1)]
        kw = {"width": width, "color": COLORS.get(m), "label": LABELS.get(m, m)}
        axes[0].bar(xs, ttft, **kw)
        axes[1].bar(xs, rate, **kw)
    axes[0].set_yscale("log")
    axes[0].set_title("TTFT per turn, median, s (log)", fontsize=10)
    axes[1].set_title("prefix-cache hits / queried prompt tokens", fontsize=10)
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xticks(range(1, n + 1))
        ax.set_xticklabels([f"turn {k}" for k in range(1, n + 1)])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"earlytom-serve, follow-up questions on one video: {s['frames']} frames, "
                 f"retain ratio {s['ratio']}, {s['conversations']} conversation(s)/method "
                 f"({_run_note(report)})", fontsize=10)
    save_figure(fig, path)


def plot_flops(results: dict[str, Any], path: Path, key: str = "llava-ov-7b") -> None:
    """One figure per model key: ``path`` for LLaVA-OV-7B, ``<stem>_qwen2_5_vl.png`` for
    Qwen2.5-VL-7B (``benchmarks/flops.py`` draws both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = results["models"][key]
    ratios = results["settings"]["ratios"]
    panels = (
        ("this project: per frame (slice), windows, GQA, SwiGLU, text", m["correct"],
         (("full", "full"), ("post_encoder", "post-encoder"), ("earlytom", "EarlyTom"),
          ("earlytom_stage1_rule", "EarlyTom (Stage I rule)"))),
        ("paper convention", m["paper"],
         (("full", "full"), ("post_encoder", "VisionZip/FastVID"), ("holitom", "HoliTom"),
          ("earlytom", "EarlyTom + LLM merge"))),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colors = {"full": "#7f7f7f", "post_encoder": "#1f77b4", "holitom": "#9467bd",
              "earlytom": "#d62728", "earlytom_stage1_rule": "#ff7f0e"}
    width = 0.2
    top = max(e["tflops"]["total"] for _, data, _ in panels for d in data.values()
              for e in d.values())
    for ax, (title, data, methods) in zip(axes, panels, strict=True):
        for j, (meth, label) in enumerate(methods):
            xs = [i + (j - 1.5) * width for i in range(len(ratios))]
            vision = [data[meth][r]["tflops"]["vision_total"] for r in ratios]
            llm = [data[meth][r]["tflops"]["llm"] for r in ratios]
            ax.bar(xs, vision, width, color=colors[meth], alpha=0.4, edgecolor=colors[meth])
            ax.bar(xs, llm, width, bottom=vision, color=colors[meth], label=label)
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        ax.set_xticks(range(len(ratios)), [f"{float(r):.0%}" for r in ratios])
        ax.set_xlabel("retain ratio r")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, ncol=2, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"prefill {results['unit'].split(';')[0]} (light: vision, dark: LLM)")
    fig.suptitle(f"{m['label']}, {m['frames']} frames: prefill FLOPs "
                 f"(1 multiply-add = {results['flops_per_mac']} FLOP)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
