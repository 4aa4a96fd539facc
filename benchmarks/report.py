"""Print the README's TTFT and throughput tables from the committed results JSON.

    python -m benchmarks.report [--ttft benchmarks/results/ttft.json]
                                [--throughput benchmarks/results/throughput.json]

The README quotes this output, so its figures always trace back to a results file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("none", "post_encoder", "evs", "earlytom")


def ttft_table(data: dict) -> str:
    lines = ["| video | r | method | TTFT s | vision s | tokens s | prefill+rest s | prompt tokens "
             "| speedup vs full | EarlyTom vs this |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for video, vd in data["videos"].items():
        cells = vd["cells"]
        for ratio in ("0.25", "0.10"):
            et = cells[f"earlytom@{ratio}"]["summary_seconds"]["ttft"]["median"]
            for m in METHODS:
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


def throughput_table(data: dict) -> str:
    lines = ["| concurrency | method | requests/s | output tokens/s | TTFT p50 s | TTFT p95 s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in sorted({cell["concurrency"] for cell in data["cells"]}):
        for m in METHODS:
            for cell in data["cells"]:
                if cell["concurrency"] == c and cell["method"] == m:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ttft", type=Path, default=RESULTS / "ttft.json")
    p.add_argument("--throughput", type=Path, default=RESULTS / "throughput.json")
    args = p.parse_args(argv)
    if args.ttft.exists():
        print(ttft_table(json.loads(args.ttft.read_text())))
        print()
    if args.throughput.exists():
        print(throughput_table(json.loads(args.throughput.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
