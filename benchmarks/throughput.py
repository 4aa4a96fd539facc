"""Serving throughput and TTFT under concurrent load: full tokens vs the same-budget baselines vs
EarlyTom, all four through ONE ``earlytom-serve`` in ONE run.

Run from the repository root::

    .venv/bin/python -m benchmarks.throughput            # the full CPU run
    .venv/bin/python -m benchmarks.throughput --quick    # the test suite's smoke run

It starts ``earlytom-serve`` (a subprocess; it spawns and supervises vLLM) on the benchmark
checkpoint, or talks to a running one given ``--url``. Then, with the ``openai`` ``AsyncOpenAI``
client, it sends streaming video chat requests at each concurrency level (default 1, 2, 4, 8) for
each method -- ``none`` (full tokens), ``post_encoder``, ``evs``, ``earlytom`` -- at one retain
ratio (``--ratio``, default 0.10). The method is chosen per request with the front end's
``"earlytom": {"method": ..., "retain_ratio": ...}`` body field (``extra_body``), so every method
runs on the same server, the same weights and the same machine state.

Load and measurement
    * Closed loop: a cell (method, concurrency c) is ``--requests`` requests (default ``c + 2``)
      served by ``c`` workers, each keeping one request in flight. requests/s = ok requests /
      wall time of the cell (first send to last finish); output tokens/s likewise. The tail of a
      cell (its last requests finishing with fewer than c in flight) is included, the same way for
      every method.
    * Every request carries its own video (``earlytom_vllm.synthetic.scene_video`` with a distinct
      seed: 3 static scenes with moving objects, i.e. the redundant footage EarlyTom targets; or
      ``--video motion``), so vLLM's processor and encoder caches never short-circuit a request.
    * Fixed output length: ``max_tokens=--max-tokens`` with ``ignore_eos`` (a vLLM sampling
      field that the front end passes through unchanged); the JSON records whether every request
      produced exactly that many tokens.
    * TTFT: client side, from sending the request to the first streamed chunk with content
      (the front end's own TTFT definition). It includes queueing behind the other requests.
    * Interleaving: for each concurrency level the methods run one after another in an order
      that rotates with the level; a cell is split over up to ``--rounds`` rounds (never fewer
      requests per round than its concurrency) whose order alternates (ABCD, DCBA). Drift in the
      machine's load (other jobs) then hits all methods alike, so the RATIOS within this run are
      what to read; absolute numbers depend on whatever else the machine was doing. Recorded per
      batch: ``os.getloadavg()`` before and after, and (:func:`benchmarks.harness.cpu_since`)
      the CPU cores the whole machine used, the cores this benchmark used (client + the spawned
      server and all its descendants) and the difference, ``foreign_cores``: what other jobs
      took. Per cell the wall-weighted ``foreign_cores`` (the "other" column) tells a load
      artefact from a real difference.
    * Warm-up: ``--warmup`` requests per method (own videos) before anything is timed.

The default CPU run (float32): the benchmark checkpoint :data:`benchmarks.harness.BENCH_SIZES`
(random weights, the real SigLIP geometry at narrow widths; the TTFT benchmark's model), the
paper's 32 frames per video (the visual tokens each method must take are the library's count,
:func:`benchmarks.harness.expected_rows`, checked against ``usage.prompt_tokens``),
``--max-tokens 16``, concurrency 1, 2, 4, 8 with c + 2 requests per cell and 1 warm-up per
method. ``--requests 2c+2`` gives tighter numbers at about twice the time, ``--frames 16``
roughly halves it (how long a run takes here: ``benchmarks/README.md``).

Against a GPU deployment (the paper's setting: LLaVA-OV-7B, 32 frames; an A100 or better)::

    # on the GPU node
    earlytom-serve --model llava-hf/llava-onevision-qwen2-7b-ov-hf --num-frames 32 \\
        --max-model-len 8192 --host 0.0.0.0 --port 8000 --api-key "$KEY"
    # from any machine that can reach it (videos travel as data: URLs)
    OPENAI_API_KEY="$KEY" python -m benchmarks.throughput --url http://GPU_NODE:8000 \\
        --frames 32 --max-tokens 128 --concurrency 1,2,4,8,16,32 --requests 4c --warmup 2 \\
        --json benchmarks/results/throughput_gpu.json --plot benchmarks/results/throughput_gpu.png

With ``--url`` the tokens per frame (for the expected visual-token counts) come from the served
model's ``config.json``: ``--checkpoint`` names a local copy or its HF id, else the served name is
tried as an HF id.

Writes ``benchmarks/results/throughput.json`` (``--json``: settings, machine, load averages, per
cell summaries, ratios, targets, every request's raw sample) and ``throughput.png`` (``--plot``;
``--plot ''`` skips it). Progress (tqdm) goes to stderr.

Targets checked (reported as met/missed, never asserted): EarlyTom's saturated throughput (the best
output tokens/s over the concurrency levels) is >= 1.3x full tokens', and EarlyTom's output
tokens/s is above post_encoder's and evs's at every concurrency level.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.report import plot_throughput, print_throughput

DEFAULT_JSON = harness.RESULTS / "throughput.json"
DEFAULT_PLOT = harness.RESULTS / "throughput.png"

METHODS = harness.METHODS
TARGET_SATURATED_SPEEDUP = 1.3

QUICK = {"frames": 4, "concurrency": "1,2", "max_tokens": 4, "warmup": 1, "rounds": 1}
PROMPT = "Describe what happens in this video."


# --------------------------------------------------------------------------------------------------
# Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Throughput and TTFT of none / post_encoder / evs / earlytom under "
        "concurrent load, through one earlytom-serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", help="a running earlytom-serve (default: start one here)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"),
                   help="bearer key for --url [OPENAI_API_KEY]")
    p.add_argument("--model", help="served model name (default: the server's first model)")
    p.add_argument("--checkpoint", help="checkpoint for the spawned server (default: the "
                   "benchmark model, built locally; --quick: the tiny checkpoint); with --url: "
                   "a local copy or the HF id of the served model, for its tokens per frame "
                   "(default: the served model name)")
    p.add_argument("--sizes", metavar="JSON", help="ensure_checkpoint() sizes for the spawned "
                   "server's benchmark model (default: benchmarks.harness.BENCH_SIZES)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra earlytom-serve argument (repeatable; shell-split)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (server samples "
                   "this many: --num-frames)")
    p.add_argument("--video-size", type=int, default=384, help="side of the square videos (px)")
    p.add_argument("--video", choices=["scene", "motion"], default="scene",
                   help="synthetic footage: redundant scenes, or high motion")
    p.add_argument("--media", choices=["auto", "file", "data"], default="auto",
                   help="how videos travel: file:// inside the spawned server's media dir, or "
                   "data: URLs (auto: file when spawning, data with --url)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ratio", type=float, default=0.10, help="retain ratio of the compressed "
                   "methods")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    p.add_argument("--requests", default="c+2", help="requests per cell: an integer, or a "
                   "formula in c (the concurrency), e.g. '2c+2'")
    p.add_argument("--rounds", type=int, default=2, help="split each cell over up to this many "
                   "interleaved rounds (order alternates ABCD / DCBA), never below c requests "
                   "per round")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request "
                   "(ignore_eos)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per method")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=1000, help="first video seed")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny checkpoint, "
                   "4 frames, concurrency 1,2, 1-2 requests per cell, 4 output tokens")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--plot", default=str(DEFAULT_PLOT), help="PNG path ('' to skip)")
    p.add_argument("--server-log", type=Path, help="where the spawned server logs "
                   "(default: a temporary file, its tail printed on failure)")
    p.add_argument("--note", action="append", default=[], help="free text stored in the JSON "
                   "(repeatable), e.g. what else ran on the machine")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_requests(spec: str, c: int) -> int:
    """'2c+2' / '3c' / 'c+1' / '6' -> a request count for concurrency c."""
    text = spec.replace(" ", "").lower()
    if text.isdigit():
        return max(1, int(text))
    total = 0
    for term in text.replace("-", "+-").split("+"):
        if not term:
            continue
        if term.endswith("c"):
            coef = term[:-1]
            total += (int(coef) if coef not in ("", "-") else (-1 if coef == "-" else 1)) * c
        else:
            total += int(term)
    if total < 1:
        raise ValueError(f"--requests {spec!r} gives {total} requests at concurrency {c}")
    return total


# --------------------------------------------------------------------------------------------------
# Videos


@dataclass
class Video:
    seed: int
    path: Path
    url: str


def prepare_videos(n: int, args: argparse.Namespace, media_dir: Path, *, use_file: bool,
                   progress: bool) -> list[Video]:
    from tqdm import tqdm

    media_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in tqdm(range(n), desc="videos", disable=not progress, leave=False):
        seed = args.seed + i
        path = media_dir / f"bench-{args.video}-{args.frames}f-{args.video_size}-{seed}.mp4"
        if not path.is_file():
            harness.write_mp4(path, harness.synthetic_video(
                args.video, args.frames, size=args.video_size, seed=seed))
        if use_file:
            url = f"file://{path.resolve()}"
        else:
            url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
        out.append(Video(seed=seed, path=path, url=url))
    return out


# --------------------------------------------------------------------------------------------------
# The server


def start_server(args: argparse.Namespace, media_dir: Path, checkpoint: str, per_frame: int,
                 log: Path) -> harness.Server:
    max_len = harness.expected_rows("none", None, args.frames, per_frame) + 256 + args.max_tokens
    serve_args = ["--media-dir", str(media_dir), "--num-frames", str(args.frames),
                  "--max-model-len", str(max_len), "--health-interval", "0.5",
                  "--log-level", "warning", "--model", checkpoint,
                  "--served-model-name", "earlytom-bench"]
    for chunk in args.serve_arg:
        serve_args += shlex.split(chunk)
    # Concurrency 8 x a full 32-frame prompt is ~50k tokens of KV: give vLLM room for them.
    return harness.launch_serve(serve_args, log, env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get(
        "VLLM_CPU_KVCACHE_SPACE", "2")})


# --------------------------------------------------------------------------------------------------
# Load


def earlytom_field(method: str, ratio: float) -> dict[str, Any]:
    if method == "none":
        return {"method": "none"}
    return {"method": method, "retain_ratio": ratio}


@dataclass
class Sample:
    method: str
    concurrency: int
    round: int
    index: int
    seed: int
    start_s: float  # since the start of the run
    ok: bool = False
    ttft_s: float | None = None
    ttft_source: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None


async def one_request(client: Any, model: str, video: Video, method: str, args: argparse.Namespace,
                      sample: Sample, t_run: float) -> Sample:
    content = [{"type": "video_url", "video_url": {"url": video.url}},
               {"type": "text", "text": PROMPT}]
    t0 = time.perf_counter()
    sample.start_s = t0 - t_run
    first_any: float | None = None
    first_content: float | None = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}],
            max_tokens=args.max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "earlytom": earlytom_field(method, args.ratio)})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                choice = chunk.choices[0]
                if first_any is None and (choice.delta.content is not None
                                          or choice.finish_reason):
                    first_any = now
                if first_content is None and choice.delta.content:
                    first_content = now
                if choice.finish_reason:
                    sample.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                sample.prompt_tokens = chunk.usage.prompt_tokens
                sample.completion_tokens = chunk.usage.completion_tokens
        t1 = time.perf_counter()
        sample.latency_s = t1 - t0
        if first_content is not None:
            sample.ttft_s, sample.ttft_source = first_content - t0, "first_content"
        elif first_any is not None:  # random weights may decode to empty strings only
            sample.ttft_s, sample.ttft_source = first_any - t0, "first_chunk"
        sample.ok = sample.completion_tokens is not None
        if not sample.ok:
            sample.error = "no usage in the stream"
    except Exception as exc:  # recorded, the run goes on
        sample.latency_s = time.perf_counter() - t0
        sample.error = f"{type(exc).__name__}: {exc}"[:500]
    return sample


async def run_batch(client: Any, model: str, videos: list[Video], method: str, c: int,
                    rnd: int, args: argparse.Namespace, t_run: float, pbar: Any
                    ) -> tuple[list[Sample], float]:
    """Closed loop: ``c`` workers share the batch's requests. Returns (samples, wall seconds)."""
    queue: asyncio.Queue[tuple[int, Video]] = asyncio.Queue()
    for i, v in enumerate(videos):
        queue.put_nowait((i, v))
    samples: list[Sample] = []

    async def worker() -> None:
        while True:
            try:
                i, v = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            s = Sample(method=method, concurrency=c, round=rnd, index=i, seed=v.seed, start_s=0.0)
            samples.append(await one_request(client, model, v, method, args, s, t_run))
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix_str(f"c={c} {method}", refresh=False)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(c, len(videos)))))
    return samples, time.perf_counter() - t0


def split_even(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def schedule(methods: Sequence[str], levels: Sequence[int], args: argparse.Namespace
             ) -> list[tuple[int, int, str, int]]:
    """(concurrency, round, method, requests) in run order."""
    plan = []
    for k, c in enumerate(levels):
        rot = list(methods[k % len(methods):]) + list(methods[:k % len(methods)])
        n = parse_requests(args.requests, c)
        # a round never holds fewer requests than the concurrency it is meant to reach
        per_round = split_even(n, max(1, min(args.rounds, n // c)))
        for r, n in enumerate(per_round):
            order = rot if r % 2 == 0 else rot[::-1]
            plan += [(c, r, m, n) for m in order]
    return plan


# --------------------------------------------------------------------------------------------------
# Statistics


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


def summarize_cell(samples: list[Sample], wall: float, method: str, c: int,
                   loads: list[list[float]], args: argparse.Namespace, visual_tokens: int
                   ) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    lats = [s.latency_s for s in ok if s.latency_s is not None]
    out_tokens = sum(s.completion_tokens or 0 for s in ok)
    prompts = sorted({s.prompt_tokens for s in ok if s.prompt_tokens is not None})

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "method": method, "concurrency": c, "requests": len(samples), "ok": len(ok),
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
    }


def ratios(cells: dict[tuple[str, int], dict[str, Any]], levels: Sequence[int],
           methods: Sequence[str]) -> dict[str, Any]:
    """EarlyTom / other, per concurrency: throughput ratios (>1 better) and TTFT speedups
    (other's p50 / EarlyTom's p50, >1 better)."""
    out: dict[str, Any] = {}
    if "earlytom" not in methods:
        return out
    for other in (m for m in methods if m != "earlytom"):
        rows = {}
        for c in levels:
            e, o = cells.get(("earlytom", c)), cells.get((other, c))
            if not e or not o:
                continue

            def div(a: Any, b: Any) -> float | None:
                return round(a / b, 3) if a and b else None

            rows[str(c)] = {
                "requests_per_s": div(e["requests_per_s"], o["requests_per_s"]),
                "output_tokens_per_s": div(e["output_tokens_per_s"], o["output_tokens_per_s"]),
                "ttft_p50_speedup": div(o["ttft_p50_s"], e["ttft_p50_s"]),
                "ttft_p95_speedup": div(o["ttft_p95_s"], e["ttft_p95_s"]),
            }
        out[f"earlytom_vs_{other}"] = rows
    return out


def saturated(cells: dict[tuple[str, int], dict[str, Any]], method: str,
              levels: Sequence[int]) -> dict[str, Any] | None:
    rows = [cells[(method, c)] for c in levels if (method, c) in cells
            and cells[(method, c)]["output_tokens_per_s"]]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["output_tokens_per_s"])
    return {"output_tokens_per_s": best["output_tokens_per_s"],
            "requests_per_s": best["requests_per_s"], "at_concurrency": best["concurrency"]}


def targets(cells: dict[tuple[str, int], dict[str, Any]], levels: Sequence[int],
            methods: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sat = {m: saturated(cells, m, levels) for m in methods}
    e = sat.get("earlytom")
    if e and sat.get("none"):
        x = e["output_tokens_per_s"] / sat["none"]["output_tokens_per_s"]
        out["saturated_vs_full"] = {
            "target": f">= {TARGET_SATURATED_SPEEDUP}x", "required": TARGET_SATURATED_SPEEDUP,
            "value": round(x, 3),
            "met": x >= TARGET_SATURATED_SPEEDUP,
            "earlytom": e, "none": sat["none"]}
    for other in ("post_encoder", "evs"):
        if other not in methods or "earlytom" not in methods:
            continue
        per = {}
        for c in levels:
            a, b = cells.get(("earlytom", c)), cells.get((other, c))
            if a and b and a["output_tokens_per_s"] and b["output_tokens_per_s"]:
                per[str(c)] = round(a["output_tokens_per_s"] / b["output_tokens_per_s"], 3)
        out[f"above_{other}_every_level"] = {
            "target": "> 1.0x at every concurrency", "ratios": per,
            "met": bool(per) and all(v > 1.0 for v in per.values()),
            "missed_at": [c for c, v in per.items() if v <= 1.0]}
    out["saturated"] = sat
    return out


# --------------------------------------------------------------------------------------------------
# Main


async def run_load(args: argparse.Namespace, url: str, model: str, videos: list[Video],
                   levels: list[int], methods: list[str], t_run: float
                   ) -> tuple[list[Sample], list[dict[str, Any]], list[Sample]]:
    import openai
    from tqdm import tqdm

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=args.api_key, max_retries=0,
                                timeout=args.timeout)
    progress = not args.no_progress
    pool = iter(videos)
    warm: list[Sample] = []
    try:
        # warm-up: each method once (or --warmup times), sequentially, untimed
        wbar = tqdm(total=args.warmup * len(methods), desc="warm-up", disable=not progress)
        for _ in range(args.warmup):
            for m in methods:
                s = Sample(method=m, concurrency=1, round=-1, index=0, seed=0, start_s=0.0)
                v = next(pool)
                s.seed = v.seed
                warm.append(await one_request(client, model, v, m, args, s, t_run))
                wbar.update(1)
        wbar.close()
        failed = [s for s in warm if not s.ok]
        if failed:
            raise RuntimeError(f"warm-up request failed ({failed[0].method}): {failed[0].error}")

        plan = schedule(methods, levels, args)
        total = sum(n for *_, n in plan)
        pbar = tqdm(total=total, desc="requests", disable=not progress)
        samples: list[Sample] = []
        batches: list[dict[str, Any]] = []
        for c, rnd, m, n in plan:
            load_before = harness.loadavg()
            mark = harness.cpu_mark()
            got, wall = await run_batch(client, model, [next(pool) for _ in range(n)], m, c, rnd,
                                        args, t_run, pbar)
            samples += got
            batches.append({"method": m, "concurrency": c, "round": rnd, "requests": n,
                            "wall_s": round(wall, 3), "loadavg_before": load_before,
                            "loadavg_after": harness.loadavg(), **harness.cpu_since(mark)})
        pbar.close()
        return samples, batches, warm
    finally:
        await client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        defaults = build_parser().parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
        if args.requests == defaults.requests:
            args.requests = "c"  # 1 request at c=1, 2 at c=2
    args.levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.method_list:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if not 0 < args.ratio <= 1:
        raise SystemExit("--ratio must be in (0, 1]")
    return args


def spawn(args: argparse.Namespace, media_dir: Path, log: Path
          ) -> tuple[harness.Server, dict[str, Any], int]:
    """Start earlytom-serve on the benchmark checkpoint (or ``--checkpoint``): (server, the
    report's model facts, tokens per frame)."""
    sizes: dict[str, Any] | None = None
    if args.checkpoint:
        checkpoint, sizes_from = args.checkpoint, "--checkpoint"
    else:
        if args.sizes:
            sizes, sizes_from = json.loads(args.sizes), "--sizes"
        elif args.quick:
            sizes, sizes_from = dict(harness.TINY_SIZES), "benchmarks.harness.TINY_SIZES"
        else:
            sizes, sizes_from = dict(harness.BENCH_SIZES), "benchmarks.harness.BENCH_SIZES"
        t = time.perf_counter()
        checkpoint, sizes = harness.checkpoint(sizes)
        print(f"benchmark checkpoint {checkpoint} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    per_frame = harness.model_tokens_per_frame(checkpoint)
    server = start_server(args, media_dir, checkpoint, per_frame, log)
    print(f"started earlytom-serve on {server.url} (log: {log})", file=sys.stderr)
    model = {"checkpoint": checkpoint, "sizes": sizes, "sizes_from": sizes_from,
             "dtype": "float32 (earlytom-serve's CPU default)"}
    return server, model, per_frame


def summarize_cells(samples: list[Sample], batches: list[dict[str, Any]],
                    args: argparse.Namespace, visual_tokens: dict[str, int]
                    ) -> dict[tuple[str, int], dict[str, Any]]:
    """(method, concurrency) -> the cell's summary, with the wall-weighted foreign cores."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for c in args.levels:
        for m in args.method_list:
            got = [s for s in samples if s.method == m and s.concurrency == c]
            bs = [b for b in batches if b["method"] == m and b["concurrency"] == c]
            wall = sum(b["wall_s"] for b in bs)
            loads = [b["loadavg_before"] for b in bs] + [bs[-1]["loadavg_after"]] if bs else []
            cells[(m, c)] = summarize_cell(got, wall, m, c, loads, args, visual_tokens[m])
            foreign = [(b["foreign_cores"], b["wall_s"]) for b in bs]
            weight = sum(w for _, w in foreign)
            cells[(m, c)]["foreign_cores"] = round(
                sum(f * w for f, w in foreign) / weight, 2) if weight > 0 else None
    return cells


def budget_checks(samples: list[Sample], args: argparse.Namespace,
                  visual_tokens: dict[str, int]) -> dict[str, Any]:
    """Errors, ignore_eos, and that each method saved exactly the library's count of visual
    tokens against full tokens (measured from ``usage.prompt_tokens``)."""
    ok = [s for s in samples if s.ok]
    methods = args.method_list
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
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels, methods = args.levels, args.method_list
    n_videos = args.warmup * len(methods) + sum(n for *_, n in schedule(methods, levels, args))
    use_file = args.media == "file" or (args.media == "auto" and not args.url)
    if use_file and args.url:
        print("note: --media file with --url needs the server's media dir to be "
              f"{tempfile.gettempdir()}/earlytom-throughput-media", file=sys.stderr)

    load_start = harness.loadavg()
    t_run = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="earlytom-throughput-"))
    media_dir = workdir / "media"
    server: harness.Server | None = None
    try:
        if args.url:
            server = harness.Server(url=args.url.rstrip("/"))
            model_info: dict[str, Any] = {"checkpoint": args.checkpoint, "sizes": None,
                                          "sizes_from": None, "dtype": "server's"}
        else:
            server, model_info, per_frame = spawn(
                args, media_dir, args.server_log or workdir / "earlytom-serve.log")
        # the videos are written while the server starts
        t = time.perf_counter()
        videos = prepare_videos(n_videos, args, media_dir, use_file=use_file,
                                progress=not args.no_progress)
        video_s = time.perf_counter() - t
        t = time.perf_counter()
        harness.wait_ready(server, args.startup_timeout, args.api_key)
        ready_s = time.perf_counter() - t
        model = args.model or harness.served_model(server.url, args.api_key)
        if args.url:
            per_frame = harness.model_tokens_per_frame(args.checkpoint or model)
        print(f"server ready; model {model!r}; {len(videos)} videos ({video_s:.1f} s)",
              file=sys.stderr)
        samples, batches, warm = asyncio.run(
            run_load(args, server.url, model, videos, levels, methods, t_run))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = harness.loadavg()

    visual_tokens = {m: harness.expected_rows(m, args.ratio, args.frames, per_frame)
                     for m in methods}
    cells = summarize_cells(samples, batches, args, visual_tokens)
    checks = budget_checks(samples, args, visual_tokens)
    loads_1m = [load_start[0], load_end[0]] + [x for b in batches for x in (
        b["loadavg_before"][0], b["loadavg_after"][0])]
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "notes": args.note,
        "settings": {
            "frames": args.frames, "video": args.video, "video_size": args.video_size,
            "media": "file" if use_file else "data", "methods": methods, "ratio": args.ratio,
            "concurrency": levels, "requests_per_cell": {
                str(c): parse_requests(args.requests, c) for c in levels},
            "requests_formula": args.requests, "rounds": args.rounds,
            "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.0,
            "warmup_per_method": args.warmup, "quick": args.quick, "prompt": PROMPT,
            "spawned_server": not args.url,
            "server_command": server.command[1:] if server.command else None,
            "load": "closed loop: c workers, one request in flight each",
            "ttft": "client side, send -> first streamed chunk with content",
        },
        "model": {"served_name": model, **model_info, "tokens_per_frame": per_frame},
        "machine": harness.machine_info(),
        "loadavg": {"start": load_start, "end": load_end,
                    "min_1m": min(loads_1m), "max_1m": max(loads_1m),
                    "note": "os.getloadavg() (1, 5, 15 min); the machine is shared, compare "
                            "methods within this run only"},
        "timing_s": {"total": round(time.perf_counter() - t_run, 1),
                     "server_ready_wait": round(ready_s, 1), "videos": round(video_s, 1)},
        "cells": [cells[(m, c)] for c in levels for m in methods],
        "ratios": ratios(cells, levels, methods),
        "targets": targets(cells, levels, methods),
        "checks": checks,
        "batches": batches,
        "warmup": [asdict(s) for s in warm],
        "samples": [asdict(s) for s in samples],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot_throughput(report, Path(args.plot))
    print_throughput(report)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0 if checks["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
