"""Where results go: the results directory, a benchmark's output flags and default paths, and
the JSON (with its plot) written at the end of a run."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.harness.families import results_stem
from earlytom_vllm.families import Family

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def add_output_args(p: Any) -> None:
    """--json, --plot ('' skips it), --server-log and --note of a benchmark's report (the
    paths' defaults: :func:`resolve_outputs`)."""
    p.add_argument("--json", type=Path, default=None,
                   help="default: results/<benchmark>.json (<benchmark>_<family>.json for a "
                        "family other than the default)")
    p.add_argument("--plot", default=None, help="PNG path ('' to skip; default beside --json)")
    p.add_argument("--server-log", type=Path, help="where the spawned server logs "
                   "(default: a temporary file)")
    p.add_argument("--note", action="append", default=[], help="free text stored in the JSON "
                   "(repeatable), e.g. what else ran on the machine")


def resolve_outputs(args: Any, benchmark: str, family: Family) -> None:
    """Fill ``args.json`` / ``args.plot`` left at None: the committed file of ``benchmark`` for
    ``family`` in :data:`RESULTS`, and the PNG beside the JSON."""
    if args.json is None:
        args.json = RESULTS / f"{results_stem(benchmark, family)}.json"
    args.json = Path(args.json)
    if args.plot is None:
        args.plot = str(args.json.with_suffix(".png"))


def write_results(report: Mapping[str, Any], json_path: Path, plot_path: str | Path | None,
                  plot: Callable[[Mapping[str, Any], Path], None]) -> None:
    """``report`` as indented JSON at ``json_path``, ``plot(report, path)`` at ``plot_path``
    unless it is empty, then a line naming both."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if plot_path:
        plot(report, Path(plot_path))
    print(f"wrote {json_path}" + (f" and {plot_path}" if plot_path else ""))
