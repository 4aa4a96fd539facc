"""Print the README's TTFT and throughput tables from the committed results JSON.

    python -m benchmarks.report            # every family's TTFT and throughput tables
    python -m benchmarks.report [--ttft benchmarks/results/ttft.json]
                                [--throughput benchmarks/results/throughput.json]

The README quotes this output, so its figures always trace back to a results file. The tables
are :mod:`benchmarks.harness.tables` (the benchmarks print their console tables from there too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RESULTS
from benchmarks.harness.families import results_files
from benchmarks.harness.tables import throughput_table, ttft_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ttft", type=Path, default=None, help="one TTFT results file (default: all)")
    p.add_argument("--throughput", type=Path, default=None,
                   help="one throughput results file (default: all)")
    args = p.parse_args(argv)
    ttft = [args.ttft] if args.ttft else [RESULTS / f for f in results_files("ttft")]
    tput = ([args.throughput] if args.throughput
            else [RESULTS / f for f in results_files("throughput")])
    if args.ttft and not args.throughput:
        tput = []
    if args.throughput and not args.ttft:
        ttft = []
    for path, table in [*((t, ttft_table) for t in ttft), *((t, throughput_table) for t in tput)]:
        if path.exists():
            print(f"<!-- {path.name} -->")
            print(table(json.loads(path.read_text())))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
