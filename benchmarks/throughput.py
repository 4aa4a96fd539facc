"""Serving throughput and TTFT under concurrent load: full tokens vs the same-budget baselines vs
EarlyTom, all four through ONE ``earlytom-serve`` in ONE run.

Run from the repository root::

    .venv/bin/python -m benchmarks.throughput            # the full CPU run
    .venv/bin/python -m benchmarks.throughput --quick    # the test suite's smoke run

It starts ``earlytom-serve`` (a subprocess; it spawns and supervises vLLM) on the benchmark
checkpoint, or talks to a running one given ``--url``, and sends streaming video chat requests
(``openai.AsyncOpenAI``) at each concurrency level (default 1, 2, 4, 8) for each method --
``none`` (full tokens), ``post_encoder``, ``evs``, ``earlytom`` -- at the family's retain ratio
(LLaVA-OneVision: 0.10). The method is chosen per request with the front end's ``"earlytom"`` body
field, so every method runs on the same server, weights and machine state.

Load and measurement
    * Closed loop: a cell (method, concurrency c) is ``--requests`` requests (default ``c + 2``)
      served by ``c`` workers, each keeping one request in flight. requests/s = ok requests /
      wall time of the cell (first send to last finish); output tokens/s likewise. The tail of a
      cell (its last requests finishing with fewer than c in flight) is included, the same way for
      every method.
    * Every request carries its own video (``earlytom_vllm.synthetic.scene_video`` with a distinct
      seed: 3 static scenes with moving objects, i.e. the redundant footage EarlyTom targets; or
      ``--video motion``), so vLLM's processor and encoder caches never short-circuit a request.
    * Fixed output length: ``--max-tokens`` with ``ignore_eos`` (checked per request).
    * TTFT: client side, send -> the first streamed chunk with content (the front end's own
      definition), queueing behind the other requests included.
    * Interleaving: per level the methods run in an order that rotates with the level; a cell
      is split over up to ``--rounds`` rounds (never fewer requests per round than its
      concurrency) whose order alternates (ABCD, DCBA): drift in the machine's load hits all
      methods alike, so the RATIOS within a run are what to read. Recorded per batch:
      ``os.getloadavg()`` before and after, and (:func:`benchmarks.harness.cpu_since`) the cores
      the machine used, the cores this benchmark used (client, spawned servers and their
      descendants) and the difference, ``foreign_cores`` (the "other" column per cell,
      wall-weighted): what other jobs took.
    * Warm-up: ``--warmup`` requests per method (own videos) before anything is timed.

The default CPU run (float32): the family's benchmark checkpoint (the TTFT benchmark's model),
the paper's 32 frames per video (each method's visual tokens are the library's count, checked
against ``usage.prompt_tokens``), ``--max-tokens 16``, concurrency 1, 2, 4, 8 with c + 2 requests
per cell and 1 warm-up per method. ``--requests 2c+2`` gives tighter numbers at about twice the time, ``--frames 16``
roughly halves it (how long a run takes here: ``benchmarks/README.md``).

Against a GPU deployment (the paper's setting: LLaVA-OV-7B, 32 frames; an A100 or better)::

    # on the GPU node
    earlytom-serve --model llava-hf/llava-onevision-qwen2-7b-ov-hf --num-frames 32 \\
        --max-model-len 8192 --host 0.0.0.0 --port 8000 --api-key "$KEY"
    # from any machine that can reach it (videos travel as data: URLs)
    OPENAI_API_KEY="$KEY" python -m benchmarks.throughput --url http://GPU_NODE:8000 \\
        --frames 32 --max-tokens 128 --concurrency 1,2,4,8,16,32 --requests 4c --warmup 2 \\
        --json benchmarks/results/throughput_gpu.json --plot benchmarks/results/throughput_gpu.png

With ``--url`` the tokens per frame come from the served model's ``config.json``: ``--checkpoint``
names a local copy or its HF id, else the served name is tried as an HF id.

Writes ``benchmarks/results/throughput.json`` (``throughput_<family>.json`` for the other
families; ``--json``: settings, machine, load averages, per cell summaries, ratios, targets, every
request's raw sample) and the PNG beside it (``--plot``; ``--plot ''`` skips it). Progress (tqdm)
goes to stderr.

Targets checked (reported as met/missed, never asserted): EarlyTom's saturated throughput (the best
output tokens/s over the concurrency levels) is >= 1.3x full tokens', and EarlyTom's output
tokens/s is above every same-ratio baseline's at every load level.

Families (``--family``, any in :mod:`earlytom_vllm.families`)
    A family's benchmark spec gives the video size and fps, the ratios (``throughput_ratios``), the
    KV cache per server and any ``--quick`` overrides. Where vLLM prunes the family itself
    (Qwen2.5-VL: ``--family qwen2_5_vl``) the arms are ``none``, ``vllm_evs`` and ``earlytom``:
    ``vllm_evs`` is vLLM's OWN EVS, which is server-wide: one more ``earlytom-serve`` per ratio
    runs the family's vLLM architecture (``--no-earlytom-arch``) with ``--video-pruning-rate`` =
    :func:`benchmarks.harness.families.vllm_pruning_rate`, the rate whose EVS count is EarlyTom's
    at that ratio (checked against ``usage.prompt_tokens``). All servers start at once on the same
    checkpoint and machine; the cells interleave exactly as across methods, each sent to its own
    server. With several ratios a cell's ``method`` is ``earlytom@0.15`` etc.

Load modes and metrics: ``--concurrency`` levels are closed loops (above); ``--request-rate``
adds open-loop levels (:mod:`benchmarks.harness.load`); every cell carries ``vllm bench serve``'s
metrics (:func:`benchmarks.harness.throughput_summary.serve_metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.harness import families
from benchmarks.harness.arms import ALL_ARMS, VLLM_ARMS, Arm, build_arms, check_arms, family_arms
from benchmarks.harness.load import (
    Sample,
    arrival_offsets,
    level_rate,
    parse_goodput,
    parse_levels,
    schedule,
)
from benchmarks.harness.plots import plot_throughput
from benchmarks.harness.serve import chat_template_args, launch_family_server
from benchmarks.harness.tables import print_throughput
from benchmarks.harness.throughput_summary import (
    budget_checks,
    expected_visual_tokens,
    ratios,
    run_settings,
    summarize_cells,
    targets,
)
from benchmarks.harness.video import VideoFile

QUICK = {"frames": 4, "concurrency": "1,2", "max_tokens": 4, "warmup": 1, "rounds": 1}
PROMPT = "Describe what happens in this video."


# --------------------------------------------------------------------------------------------------
# Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Throughput and TTFT of every compared method under concurrent load, "
        "through earlytom-serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    families.add_family_arg(p)
    harness.add_endpoint_args(p, "checkpoint for the spawned server (default: the family's "
                              "benchmark model, built locally; --quick: its tiny checkpoint); "
                              "with --url: a local copy or the HF id of the served model, for "
                              "its tokens per frame (default: the served model name)")
    p.add_argument("--sizes", metavar="JSON", help="checkpoint builder sizes for the spawned "
                   "server's benchmark model (default: the family's bench_sizes)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (server samples "
                   "this many: --num-frames)")
    p.add_argument("--video-size", type=int, help="side of the square videos (px; default: the "
                   "family's benchmark video_size)")
    p.add_argument("--video", choices=["scene", "motion"], default="scene",
                   help="synthetic footage: redundant scenes, or high motion")
    p.add_argument("--media", choices=["auto", "file", "data"], default="auto",
                   help="how videos travel: file:// inside the spawned server's media dir, or "
                   "data: URLs (auto: file when spawning, data with --url)")
    p.add_argument("--methods", help="comma-separated, of " + ", ".join(ALL_ARMS)
                   + f" ({', '.join(VLLM_ARMS)}: vLLM's own pruning, one more server per "
                   "ratio; default: the family's arms)")
    p.add_argument("--ratio", type=float, help="retain ratio of the compressed methods (one; "
                   "default: the family's first)")
    p.add_argument("--ratios", help="comma-separated retain ratios, each its own cells (default: "
                   "--ratio, else the family's throughput_ratios)")
    p.add_argument("--concurrency", help="comma-separated closed-loop levels (default 1,2,4,8, "
                   "none when --request-rate is given)")
    p.add_argument("--request-rate", help="comma-separated Poisson request rates (requests/s; "
                   "'inf': all at once), open-loop levels after the concurrency ones")
    p.add_argument("--rate-requests", type=int, default=16, help="requests per request-rate cell")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival "
                   "intervals (1: Poisson; vllm bench serve's --burstiness)")
    p.add_argument("--arrival-seed", type=int, default=0, help="seed of the arrival times")
    p.add_argument("--max-concurrency", type=int, help="cap on requests in flight in a "
                   "request-rate cell (default: none)")
    p.add_argument("--goodput", nargs="+", metavar="KEY:MS", help="SLOs for request_goodput, "
                   "e.g. ttft:5000 tpot:500 e2el:20000 (keys: ttft, tpot, e2el; milliseconds)")
    p.add_argument("--percentiles", default="50,90,99", help="percentiles of TTFT, TPOT, ITL and "
                   "E2E in the JSON (pNN_ttft_ms, ...)")
    p.add_argument("--requests", default="c+2", help="requests per cell: an integer, or a "
                   "formula in c (the concurrency), e.g. '2c+2'")
    p.add_argument("--rounds", type=int, default=2, help="split each cell over up to this many "
                   "interleaved rounds (order alternates ABCD / DCBA), never below c requests "
                   "per round")
    p.add_argument("--max-tokens", type=int, default=16, help="output tokens per request "
                   "(ignore_eos)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per method")
    p.add_argument("--seed", type=int, default=1000, help="first video seed")
    p.add_argument("--vllm-default-batching", action="store_true", help="leave vLLM's own "
                   "--max-num-batched-tokens on every server (see harness.batching_budget)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny checkpoint, "
                   "4 frames, concurrency 1,2, 1-2 requests per cell, 4 output tokens (and the "
                   "family's throughput_quick settings)")
    harness.add_output_args(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def start_server(args: argparse.Namespace, media_dir: Path, checkpoint: str, per_frame: int,
                 log: Path, extra: Sequence[str] = ()) -> harness.Server:
    """One ``earlytom-serve`` on ``checkpoint`` (``extra``: e.g. a vLLM arm's arguments)."""
    return launch_family_server(args.fam, checkpoint=checkpoint, media_dir=media_dir,
                                frames=args.frames, per_frame=per_frame, log=log, extra=extra,
                                max_tokens=args.max_tokens, serve_arg=args.serve_arg)


# --------------------------------------------------------------------------------------------------
# Load


async def one_request(client: Any, model: str, video: VideoFile, arm: Arm, args: argparse.Namespace,
                      sample: Sample, t_run: float) -> Sample:
    content = [{"type": "video_url", "video_url": {"url": video.url}},
               {"type": "text", "text": PROMPT}]
    extra: dict[str, Any] = {"ignore_eos": True}
    if (field_ := arm.earlytom_field()) is not None:
        extra["earlytom"] = field_
    got = await harness.stream_chat(client, model=model, max_tokens=args.max_tokens,
                                    messages=[{"role": "user", "content": content}],
                                    extra_body=extra)
    sample.record(got)
    sample.start_s = got.sent - t_run
    sample.finish_reason, sample.itl_s = got.finish_reason, got.itl_s
    return sample


async def run_batch(client: Any, model: str, videos: list[VideoFile], arm: Arm, level: int | str,
                    rnd: int, args: argparse.Namespace, t_run: float, pbar: Any,
                    arrivals: Sequence[float] | None = None) -> tuple[list[Sample], float]:
    """One batch of a cell. Concurrency level c: closed loop, ``c`` workers share the requests.
    Request-rate level: request i is sent ``arrivals[i]`` s after the start (open loop, at most
    ``--max-concurrency`` in flight). Returns (samples, wall seconds: first send to last end)."""
    samples: list[Sample] = []
    rate = level_rate(level)
    c = None if rate is not None else int(level)

    async def send(i: int, v: VideoFile, at: float | None = None) -> None:
        s = Sample(method=arm.label, concurrency=c, round=rnd, index=i, seed=v.seed, start_s=0.0,
                   level=str(level), scheduled_s=None if at is None else round(at, 4))
        samples.append(await one_request(client, model, v, arm, args, s, t_run))
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix_str(f"{level} {arm.label}", refresh=False)

    t0 = time.perf_counter()
    if rate is None:
        queue: asyncio.Queue[tuple[int, VideoFile]] = asyncio.Queue()
        for i, v in enumerate(videos):
            queue.put_nowait((i, v))

        async def worker() -> None:
            while True:
                try:
                    i, v = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await send(i, v)

        await asyncio.gather(*(worker() for _ in range(min(c or 1, len(videos)))))
    else:
        cap = asyncio.Semaphore(args.max_concurrency or len(videos) or 1)

        async def arrive(i: int, v: VideoFile, at: float) -> None:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with cap:
                await send(i, v, at)

        assert arrivals is not None and len(arrivals) == len(videos)
        await asyncio.gather(*(arrive(i, v, at) for i, (v, at) in
                               enumerate(zip(videos, arrivals, strict=True))))
    return samples, time.perf_counter() - t0


async def run_load(args: argparse.Namespace, urls: dict[str, str], model: str,
                   videos: list[VideoFile], levels: list[int | str], t_run: float
                   ) -> tuple[list[Sample], list[dict[str, Any]], list[Sample]]:
    import openai
    from tqdm import tqdm

    clients = {key: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=args.api_key,
                                       max_retries=0, timeout=args.timeout)
               for key, url in urls.items()}
    arms = {a.label: a for a in args.arms}
    progress = not args.no_progress
    pool = iter(videos)
    warm: list[Sample] = []
    try:
        # warm-up: each arm once (or --warmup times), sequentially, untimed
        wbar = tqdm(total=args.warmup * len(arms), desc="warm-up", disable=not progress)
        for _ in range(args.warmup):
            for arm in arms.values():
                v = next(pool)
                s = Sample(method=arm.label, concurrency=1, round=-1, index=0, seed=v.seed,
                           start_s=0.0, level="warmup")
                warm.append(await one_request(clients[arm.server], model, v, arm, args, s,
                                              t_run))
                wbar.update(1)
        wbar.close()
        failed = [s for s in warm if not s.ok]
        if failed:
            raise RuntimeError(f"warm-up request failed ({failed[0].method}): {failed[0].error}")

        plan = schedule(list(arms), levels, args)
        total = sum(n for *_, n in plan)
        pbar = tqdm(total=total, desc="requests", disable=not progress)
        samples: list[Sample] = []
        batches: list[dict[str, Any]] = []
        for level, rnd, m, n in plan:
            arm = arms[m]
            rate = level_rate(level)
            arrivals = None if rate is None else arrival_offsets(
                n, rate, args.arrival_seed + levels.index(level), args.burstiness)
            load_before = harness.loadavg()
            mark = harness.cpu_mark()
            got, wall = await run_batch(clients[arm.server], model, [next(pool) for _ in range(n)],
                                        arm, level, rnd, args, t_run, pbar, arrivals)
            samples += got
            batches.append({"method": m, "concurrency": None if rate is not None else level,
                            "level": str(level), "round": rnd, "requests": n,
                            "wall_s": round(wall, 3), "loadavg_before": load_before,
                            "loadavg_after": harness.loadavg(), **harness.cpu_since(mark)})
        pbar.close()
        return samples, batches, warm
    finally:
        for client in clients.values():
            await client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.fam = families.get(args.family)
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in {**QUICK, **args.fam.benchmark.throughput_quick}.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
        if args.requests == defaults.requests:
            args.requests = "c"  # 1 request at c=1, 2 at c=2
    harness.resolve_outputs(args, "throughput", args.fam)
    args.video_size = args.video_size or args.fam.benchmark.video_size
    args.levels = parse_levels(args.concurrency, args.request_rate)
    args.concurrency_levels = [x for x in args.levels if level_rate(x) is None]
    methods = args.methods.split(",") if args.methods else family_arms(args.fam)
    args.method_list = [m.strip() for m in methods if m.strip()]
    if (why := check_arms(args.method_list, args.fam)) is not None:
        raise SystemExit(why)
    if args.ratios:
        args.ratio_list = [float(x) for x in args.ratios.split(",") if x.strip()]
    elif args.ratio is not None:
        args.ratio_list = [args.ratio]
    else:
        args.ratio_list = list(args.fam.benchmark.throughput_ratios)
    if not args.ratio_list or not all(0 < r <= 1 for r in args.ratio_list):
        raise SystemExit("--ratio / --ratios must be in (0, 1]")
    args.ratio = args.ratio_list[0]
    args.arms = build_arms(args.method_list, args.ratio_list)
    if args.url and any(a.method in VLLM_ARMS for a in args.arms):
        raise SystemExit("vLLM's own pruning needs its own server per ratio: run without --url")
    try:
        args.slos = parse_goodput(args.goodput)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    args.percentile_list = [float(x) for x in args.percentiles.split(",") if x.strip()]
    return args


def spawn(args: argparse.Namespace, media_dir: Path, log: Path
          ) -> tuple[dict[str, harness.Server], dict[str, Any], int, dict[str, dict[str, Any]]]:
    """Start every server at once on the family's benchmark checkpoint (or ``--checkpoint``):
    the plugin architecture ("main", if an arm needs it) and one server per vLLM arm and ratio.
    Returns (servers by key, the report's model facts, tokens per frame, the vLLM arms'
    servers' settings)."""
    fam = args.fam
    sizes: dict[str, Any] | None = None
    if args.checkpoint:
        checkpoint, sizes_from = args.checkpoint, "--checkpoint"
    else:
        if args.sizes:
            sizes, sizes_from = json.loads(args.sizes), "--sizes"
        else:
            sizes = families.sizes(fam, quick=args.quick)
            sizes_from = families.sizes_source(fam, quick=args.quick)
        t = time.perf_counter()
        checkpoint, sizes = families.checkpoint(fam, sizes)
        print(f"benchmark checkpoint {checkpoint} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    per_frame = families.model_tokens_per_frame(fam, checkpoint, args.video_size)
    vllm_servers = harness.vllm_arm_servers(fam, args.arms, args.frames, per_frame)
    top = max([int(x) for x in args.concurrency_levels] or [1])
    if len(args.concurrency_levels) < len(args.levels):  # request-rate levels: all may overlap
        top = max(top, int(args.max_concurrency or args.rate_requests))
    budget = (None if args.vllm_default_batching
              else harness.batching_budget(vllm_servers, top, args.max_tokens))
    if budget is not None:  # the same for every server: none is favoured
        args.serve_arg = [*args.serve_arg, f"--backend-arg=--max-num-batched-tokens={budget}"]
    args.max_num_batched_tokens = budget
    servers: dict[str, harness.Server] = {}
    # every server the same video layout (one vLLM's own pruning can run), where that is not
    # the chat template's (benchmark.chat_video_rewrite)
    chat = chat_template_args(fam, checkpoint, media_dir.parent)
    if any(a.server == "main" for a in args.arms):
        servers["main"] = start_server(args, media_dir, checkpoint, per_frame, log, chat)
    for key, spec in vllm_servers.items():
        servers[key] = start_server(args, media_dir, checkpoint, per_frame,
                                    log.with_name(f"{log.stem}-{key}{log.suffix}"),
                                    [*spec["serve_args"], *chat])
    for key, server in servers.items():
        print(f"started earlytom-serve {key} on {server.url} (log: {server.log})",
              file=sys.stderr)
    model = {"checkpoint": checkpoint, "sizes": sizes, "sizes_from": sizes_from,
             "dtype": "float32 (earlytom-serve's CPU default)", "family": fam.name,
             "arch": fam.architecture, "stock_arch": fam.base_architecture,
             "chat_video_layout": (f"rewritten for every server: {fam.benchmark.chat_video_rewrite}"
                                   if chat else "the checkpoint's chat template"),
             "desc": families.checkpoint_desc(fam, sizes) if sizes is not None else None}
    return servers, model, per_frame, vllm_servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels, labels = args.levels, [a.label for a in args.arms]
    n_videos = args.warmup * len(labels) + sum(n for *_, n in schedule(labels, levels, args))
    use_file = args.media == "file" or (args.media == "auto" and not args.url)
    if use_file and args.url:
        print("note: --media file with --url needs the server's media dir to be "
              f"{tempfile.gettempdir()}/earlytom-throughput-media", file=sys.stderr)

    load_start = harness.loadavg()
    t_run = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="earlytom-throughput-"))
    media_dir = workdir / "media"
    servers: dict[str, harness.Server] = {}
    vllm_servers: dict[str, dict[str, Any]] = {}
    try:
        if args.url:
            servers = {"main": harness.Server(url=args.url.rstrip("/"))}
            model_info: dict[str, Any] = {"checkpoint": args.checkpoint, "sizes": None,
                                          "sizes_from": None, "dtype": "server's",
                                          "family": args.fam.name,
                                          "arch": args.fam.architecture}
        else:
            servers, model_info, per_frame, vllm_servers = spawn(
                args, media_dir, args.server_log or workdir / "earlytom-serve.log")
        # the videos are written while the servers start
        t = time.perf_counter()
        videos = harness.video_files(
            args.video, range(args.seed, args.seed + n_videos), frames=args.frames,
            size=args.video_size, fps=args.fam.benchmark.video_fps, media_dir=media_dir,
            prefix="bench", as_file=use_file, progress=not args.no_progress)
        video_s = time.perf_counter() - t
        t = time.perf_counter()
        for server in servers.values():
            harness.wait_ready(server, args.startup_timeout, args.api_key)
        ready_s = time.perf_counter() - t
        first = next(iter(servers.values()))
        model = args.model or harness.served_model(first.url, args.api_key)
        if args.url:
            per_frame = families.model_tokens_per_frame(args.fam, args.checkpoint or model,
                                                         args.video_size)
        print(f"{len(servers)} server(s) ready; model {model!r}; {len(videos)} videos "
              f"({video_s:.1f} s)", file=sys.stderr)
        samples, batches, warm = asyncio.run(
            run_load(args, {k: v.url for k, v in servers.items()}, model, videos, levels, t_run))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = harness.loadavg()

    visual_tokens = expected_visual_tokens(args, per_frame, vllm_servers)
    cells = summarize_cells(samples, batches, args, visual_tokens)
    checks = budget_checks(samples, args, visual_tokens)
    loads_1m = [load_start[0], load_end[0]] + [x for b in batches for x in (
        b["loadavg_before"][0], b["loadavg_after"][0])]
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "notes": args.note,
        "settings": run_settings(args, prompt=PROMPT, media="file" if use_file else "data",
                                 servers=servers, vllm_servers=vllm_servers),
        "model": {"served_name": model, **model_info, "tokens_per_frame": per_frame},
        "machine": harness.machine_info(),
        "loadavg": {"start": load_start, "end": load_end,
                    "min_1m": min(loads_1m), "max_1m": max(loads_1m),
                    "note": "os.getloadavg() (1, 5, 15 min); the machine is shared, compare "
                            "methods within this run only"},
        "timing_s": {"total": round(time.perf_counter() - t_run, 1),
                     "server_ready_wait": round(ready_s, 1), "videos": round(video_s, 1)},
        "cells": [cells[(m, c)] for c in levels for m in labels],
        "ratios": ratios(cells, levels, labels),
        "targets": targets(cells, levels, labels),
        "checks": checks,
        "batches": batches,
        "warmup": [asdict(s) for s in warm],
        "samples": [asdict(s) for s in samples],
    }
    print_throughput(report)
    harness.write_results(report, args.json, args.plot, plot_throughput)
    return 0 if checks["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
