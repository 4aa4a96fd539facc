"""The README's recipes, for real, on this machine: lmms-eval [-> launcher] -> earlytom-serve.

Run from the repository root (lmms-eval must be importable; it is not a project dependency)::

    .venv/bin/python -m benchmarks.accuracy.lmms_eval_smoke
    .venv/bin/python -m benchmarks.accuracy.lmms_eval_smoke --pythonpath /path/to/lmms_eval_site

It writes the six questions of ``smoke_set.json`` as mp4 files plus a JSON-lines file, and a
throw-away lmms-eval task (``earlytom_smoke``: the questions, the videos, letter scoring) into a
temporary directory; starts ``earlytom-serve --frames-as-video --retain-ratio 0.1`` on the tiny
checkpoint; then, per ratio, runs the recipe's exact command line (recipe B, the launcher)::

    python -m benchmarks.accuracy.lmms_eval_earlytom --ratio R -- \\
        --model openai_compatible --force_simple --model_args model_version=...,base_url=...,\\
        max_frames_num=8,num_concurrent=6 --tasks earlytom_smoke --include_path TASKDIR ...

(``--full`` for the 100 % row), and once more as plain ``python -m lmms_eval ...`` with no
launcher (recipe A: the server-wide switch and ratio do everything; ``launcher_options`` is
null for that run). lmms-eval decodes each mp4 with decord and sends 8 PNG frames per question;
the launcher adds ``"earlytom": {"frames_as_video": true, ...}`` (the plain run adds nothing: the
server's ``--frames-as-video`` applies); the engine's ``/metrics`` (vLLM's, behind the front end;
``/health`` names it) must then show exactly ``6 * (budget(8, r) + 1)`` visual tokens after
compression (``6 * (8 x tokens per frame + 1)`` before, the counts of
:func:`benchmarks.harness.families.expected_rows`) for the run: the frames arrived as one video per question
and were compressed to the budget. Accuracy comes from lmms-eval's own results file (random weights: near
chance or below). Writes ``benchmarks/results/accuracy_smoke_lmms_eval.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import harness
from benchmarks.accuracy.smoke_set import DEFAULT_SET, load_set, question_text, render_video
from benchmarks.harness import families

ROOT = harness.ROOT
SERVER_RATIO = 0.10  # earlytom-serve --retain-ratio: what a request without the field gets
DEFAULT_JSON = harness.RESULTS / "accuracy_smoke_lmms_eval.json"
#: The family earlytom-serve serves by default (its tiny checkpoint is the served model).
FAMILY = families.get(families.DEFAULT)
COUNTERS = ("earlytom_visual_tokens_before_total", "earlytom_visual_tokens_after_total")
#: (name, launcher options or None for plain lmms-eval, ratio). The server runs with
#: --frames-as-video and the default ratio, so the plain run needs no launcher at all.
RUNS = (("full", ["--full"], 1.0), ("r025", ["--ratio", "0.25"], 0.25),
        ("r010", ["--ratio", "0.10"], 0.10), ("plain", None, SERVER_RATIO))

TASK_YAML = """task: earlytom_smoke
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = '''import re

_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, *args, **kwargs):
    return doc["prompt"]


def process_results(doc, results):
    match = _LETTER.search((results[0] or "").strip())
    return {"accuracy": float(bool(match) and match.group(1) == doc["answer"])}
'''


def write_task(workdir: Path, data: dict[str, Any], frames: int, size: int) -> Path:
    videos = workdir / "videos"
    videos.mkdir(parents=True)
    rows = []
    for item in data["items"]:
        path = harness.write_mp4(videos / f"{item['id']}.mp4",
                                 render_video(item["video"], frames, size))
        rows.append({"id": item["id"], "video": str(path), "prompt": question_text(data, item),
                     "answer": item["answer"]})
    jsonl = workdir / "earlytom_smoke.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = workdir / "task"
    task.mkdir()
    (task / "earlytom_smoke.yaml").write_text(TASK_YAML.format(data=jsonl))
    (task / "utils.py").write_text(TASK_UTILS)
    return task


def metric_totals(backends: list[str]) -> dict[str, float]:
    """The engines' visual-token counters, summed over labels and backends (vLLM's /metrics)."""
    import httpx

    out: dict[str, float] = {}
    for url in backends:
        for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
            for name in COUNTERS:
                if line.startswith(name + "{"):
                    out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.lmms_eval_smoke",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--pythonpath", default="", help="extra PYTHONPATH where lmms-eval lives")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    data = load_set(DEFAULT_SET)
    frames, size, n = int(data["frames"]), int(data["frame_size"]), len(data["items"])
    workdir = Path(tempfile.mkdtemp(prefix="earlytom-lmms-smoke-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (args.pythonpath, str(ROOT),
                                                    env.get("PYTHONPATH", "")) if x)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(workdir / "hf-datasets"), HF_HOME=str(workdir / "hf"))
    check = subprocess.run([sys.executable, "-c", "import lmms_eval.__main__, lmms_eval; "
                            "import importlib.metadata as m; print(m.version('lmms_eval'))"],
                           env=env, capture_output=True, text=True)
    if check.returncode != 0:
        print("lmms-eval is not importable here (pip install lmms-eval, or --pythonpath):\n"
              + check.stderr[-2000:], file=sys.stderr)
        return 2
    lmms_version = check.stdout.strip()
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    server = None
    try:
        task = write_task(workdir, data, frames, size)
        server = harness.launch_serve(["--media-dir", str(workdir / "media"), "--health-interval", "0.5",
                               "--log-level", "warning", "--frames-as-video",
                               "--retain-ratio", str(SERVER_RATIO)], workdir / "serve.log")
        harness.wait_ready(server, 600, "none")
        model = harness.served_model(server.url, "none")
        backends = harness.backend_urls(server.url, "none")
        tiny, _ = families.checkpoint(FAMILY, families.sizes(FAMILY, quick=True))
        per_frame = families.model_tokens_per_frame(FAMILY, tiny)
        for name, opts, ratio in RUNS:
            before = metric_totals(backends)
            out_dir = workdir / "out" / name
            # the launcher adds the earlytom field; the plain run is lmms-eval unchanged
            head = (["-m", "lmms_eval"] if opts is None else
                    ["-m", "benchmarks.accuracy.lmms_eval_earlytom", *opts, "--"])
            cmd = [sys.executable, *head,
                   "--model", "openai_compatible", "--force_simple",
                   "--model_args", f"model_version={model},base_url={server.url}/v1,"
                   f"api_key=none,max_frames_num={frames},num_concurrent={n}",
                   "--tasks", "earlytom_smoke", "--include_path", str(task),
                   "--output_path", str(out_dir), "--log_samples", "--verbosity", "WARNING"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = round(time.perf_counter() - t, 1)
            after = metric_totals(backends)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            found = sorted(glob.glob(str(out_dir / "**" / "*results*.json"), recursive=True))
            accuracy = None
            if found:
                res = json.loads(Path(found[-1]).read_text())["results"]["earlytom_smoke"]
                accuracy = next(v for k, v in res.items() if k.startswith("accuracy")
                                and not k.startswith("accuracy_stderr"))
            exp_before = n * families.expected_rows(FAMILY, "none", None, frames, per_frame)
            exp_after = n * families.expected_rows(FAMILY, "earlytom", ratio, frames, per_frame)
            runs.append({
                "run": name, "launcher_options": opts, "ratio": ratio, "exit": proc.returncode,
                "seconds": seconds, "accuracy": accuracy,
                "visual_tokens_before": delta.get("earlytom_visual_tokens_before_total"),
                "visual_tokens_after": delta.get("earlytom_visual_tokens_after_total"),
                "expected_before": exp_before, "expected_after": exp_after,
                "budget_ok": delta.get("earlytom_visual_tokens_before_total") == exp_before
                and delta.get("earlytom_visual_tokens_after_total") == exp_after,
                "command": ["python", *cmd[1:]],
                "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
            })
            print(f"{name}: exit {proc.returncode}, accuracy {accuracy}, visual tokens "
                  f"{delta.get('earlytom_visual_tokens_after_total')} (expected {exp_after}), "
                  f"{seconds} s", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = len(runs) == len(RUNS) and all(
        r["exit"] == 0 and r["budget_ok"] and r["accuracy"] is not None for r in runs)
    report = {"benchmark": "accuracy_smoke_lmms_eval", "lmms_eval_version": lmms_version,
              "set": {"path": DEFAULT_SET.name, "questions": n, "frames": frames},
              "model": model, "ok": ok, "runs": runs, "machine": harness.machine_info(),
              "loadavg": harness.loadavg(),
              "seconds": round(time.perf_counter() - t0, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"lmms-eval {lmms_version} recipe smoke: {'OK' if ok else 'FAILED'}; wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
