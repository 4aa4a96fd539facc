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
tokens/s is above every same-ratio baseline's at every load level.

Qwen2.5-VL (``--family qwen2_5_vl``)
    The family's benchmark checkpoint (:func:`benchmarks.harness.family_sizes`), 448 px videos
    (``Family.video_size``), ratios 0.15 and 0.10 (``--ratios``) and the methods ``none``,
    ``vllm_evs`` and ``earlytom``. ``vllm_evs`` is vLLM's OWN EVS, which is server-wide: one more
    ``earlytom-serve`` per ratio runs the stock architecture (``--no-earlytom-arch``) with
    ``--video-pruning-rate`` = :meth:`benchmarks.harness.Family.evs_rate`, the rate whose EVS count
    is EarlyTom's at that ratio (checked against ``usage.prompt_tokens``). All servers start at
    once on the same checkpoint and machine; the cells interleave exactly as across methods, each
    sent to its own server. With several ratios a cell's ``method`` is ``earlytom@0.15`` etc.

Load modes and metrics (``vllm bench serve``'s names)
    ``--concurrency`` levels are closed loops (above); ``--request-rate R[,R...]`` adds open-loop
    levels: ``--rate-requests`` requests per cell sent at Poisson arrival times (gamma intervals
    with ``--burstiness``, 1 = Poisson, normalised to n / R seconds like vLLM's ``get_request``;
    seeded with ``--arrival-seed``, the same arrivals for every method at a level; ``inf`` = all
    at once), optionally capped by ``--max-concurrency``. Every cell carries ``vllm bench
    serve``'s metrics: ``completed``, ``failed``, ``duration``, ``total_input_tokens``,
    ``total_output_tokens``, ``request_throughput``, ``request_goodput``, ``output_throughput``,
    ``total_token_throughput`` and ``mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms``
    (``--percentiles``, default 50,90,99). TTFT is the first chunk with content (as above); TPOT
    = (E2E - TTFT) / (output tokens - 1); ITL = the gaps between streamed chunks after it; E2E =
    send to the last chunk. Goodput (``--goodput ttft:MS tpot:MS e2el:MS``) = requests/s meeting
    every given SLO (a request with one output token has TPOT 0), as vLLM defines it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import itertools
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
from dataclasses import asdict, dataclass, field
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
#: ``--quick`` for Qwen2.5-VL: 12 frames of 112 px (6 slices of 16 tokens) so that EVS's floor of
#: one frame (16) stays below EarlyTom's budget at r = 0.15 (6 x 3 = 18), one ratio (one EVS
#: server), concurrency 1 and a Poisson level of 2 requests: both load modes in one run.
QUICK_FAMILY: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {"frames": 12, "video_size": 112, "concurrency": "1", "ratios": "0.15",
                   "request_rate": "4", "rate_requests": 2}}
PROMPT = "Describe what happens in this video."

#: vLLM's own post-encoder EVS (``--video-pruning-rate``): server-wide, so its own server.
VLLM_EVS = "vllm_evs"
#: The methods and ratios a family's run compares by default.
FAMILY_METHODS = {"llava_onevision": METHODS, "qwen2_5_vl": ("none", VLLM_EVS, "earlytom")}
FAMILY_RATIOS = {"llava_onevision": (0.10,), "qwen2_5_vl": (0.15, 0.10)}
#: VLLM_CPU_KVCACHE_SPACE (GiB) per spawned server. LLaVA-OV's benchmark LLM holds 12 KiB of
#: float32 KV per token: concurrency 8 x a full 32-frame prompt (~50k tokens) needs ~0.6 GiB.
#: Qwen2.5-VL's (7 layers, 2 KV heads of 64) 7 KiB: 8 x ~4.2k tokens ~0.25 GiB; 1 GiB each keeps
#: its three servers within a 24 GiB machine.
KV_CACHE_GIB = {"llava_onevision": "2", "qwen2_5_vl": "1"}
SLO_NAMES = ("ttft", "tpot", "e2el")


# --------------------------------------------------------------------------------------------------
# Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Throughput and TTFT of none / post_encoder / evs / earlytom under "
        "concurrent load, through one earlytom-serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--family", choices=sorted(harness.FAMILIES), default="llava_onevision",
                   help="model family: its benchmark checkpoint, video size, methods, ratios")
    p.add_argument("--url", help="a running earlytom-serve (default: start one here)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"),
                   help="bearer key for --url [OPENAI_API_KEY]")
    p.add_argument("--model", help="served model name (default: the server's first model)")
    p.add_argument("--checkpoint", help="checkpoint for the spawned server (default: the "
                   "benchmark model, built locally; --quick: the tiny checkpoint); with --url: "
                   "a local copy or the HF id of the served model, for its tokens per frame "
                   "(default: the served model name)")
    p.add_argument("--sizes", metavar="JSON", help="ensure_checkpoint() sizes for the spawned "
                   "server's benchmark model (default: harness.family_sizes)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra earlytom-serve argument (repeatable; shell-split)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (server samples "
                   "this many: --num-frames)")
    p.add_argument("--video-size", type=int, help="side of the square videos (px; default: the "
                   "family's video_size, 384 for LLaVA-OV, 448 for Qwen2.5-VL)")
    p.add_argument("--video", choices=["scene", "motion"], default="scene",
                   help="synthetic footage: redundant scenes, or high motion")
    p.add_argument("--media", choices=["auto", "file", "data"], default="auto",
                   help="how videos travel: file:// inside the spawned server's media dir, or "
                   "data: URLs (auto: file when spawning, data with --url)")
    p.add_argument("--methods", help="comma-separated, of " + ", ".join((*METHODS, VLLM_EVS))
                   + f" ({VLLM_EVS}: vLLM's own EVS, one more server per ratio; default: the "
                   "family's: all four library methods for LLaVA-OV, none,vllm_evs,earlytom for "
                   "Qwen2.5-VL)")
    p.add_argument("--ratio", type=float, help="retain ratio of the compressed methods (one; "
                   "default: the family's first, 0.10 for LLaVA-OV)")
    p.add_argument("--ratios", help="comma-separated retain ratios, each its own cells (default: "
                   "--ratio, else the family's: 0.10 for LLaVA-OV, 0.15,0.10 for Qwen2.5-VL)")
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
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=1000, help="first video seed")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny checkpoint, "
                   "4 frames, concurrency 1,2, 1-2 requests per cell, 4 output tokens (Qwen2.5-VL: "
                   "12 frames of 112 px, r 0.15, concurrency 1 and request rate 4)")
    harness.add_output_args(p, DEFAULT_JSON, DEFAULT_PLOT)
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


def parse_goodput(pairs: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:5000", "e2el:20000"]`` -> ``{"ttft": 5000.0, "e2el": 20000.0}`` (milliseconds;
    vllm bench serve's ``--goodput`` form and names)."""
    out: dict[str, float] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or name not in SLO_NAMES or ms < 0:
            raise ValueError(f"--goodput {pair!r}: want KEY:MS with KEY in {', '.join(SLO_NAMES)} "
                             "and MS >= 0")
        out[name] = ms
    return out


# --------------------------------------------------------------------------------------------------
# What is compared (arms) and at which load (levels)


@dataclass(frozen=True)
class Arm:
    """One compared setting: a method at a ratio, and the server it goes to."""

    label: str  # the JSON's "method": "earlytom", or "earlytom@0.15" when a run has several ratios
    method: str  # a library method (per request) or VLLM_EVS (server-wide)
    ratio: float | None  # None: full tokens
    server: str  # "main" (the plugin architecture), or the EVS server's key (its label)

    def earlytom_field(self) -> dict[str, Any] | None:
        """The request's ``earlytom`` body field (None for vLLM's EVS: a stock model)."""
        if self.method == VLLM_EVS:
            return None
        return earlytom_field(self.method, 1.0 if self.ratio is None else self.ratio)


def build_arms(methods: Sequence[str], ratios: Sequence[float]) -> list[Arm]:
    """Full tokens once, then every other method at each ratio (labels ``m@r`` with several)."""
    tag = len(ratios) > 1
    arms = [Arm("none", "none", None, "main")] if "none" in methods else []
    for r in ratios:
        for m in methods:
            if m == "none":
                continue
            label = f"{m}@{r:.2f}" if tag else m
            arms.append(Arm(label, m, r, label if m == VLLM_EVS else "main"))
    return arms


def split_label(label: str) -> tuple[str, str | None]:
    """``earlytom@0.15`` -> ("earlytom", "0.15"); ``earlytom`` -> ("earlytom", None)."""
    method, _, ratio = label.partition("@")
    return method, ratio or None


def rate_level(rate: float) -> str:
    """The level key of a request rate: ``rate=2``, ``rate=inf``."""
    return f"rate={rate:g}"


def level_rate(level: int | str) -> float | None:
    """The request rate of a ``rate=R`` level; None for a concurrency level."""
    if isinstance(level, str) and level.startswith("rate="):
        return float(level.removeprefix("rate="))
    return None


def parse_levels(concurrency: str | None, request_rate: str | None) -> list[int | str]:
    """Concurrency levels (ints) then request-rate levels (``rate=R``); concurrency defaults to
    1,2,4,8 unless only rates are given."""
    if concurrency is None and not request_rate:
        concurrency = "1,2,4,8"
    levels: list[int | str] = [int(x) for x in (concurrency or "").split(",") if x.strip()]
    for x in (request_rate or "").split(","):
        if x.strip():
            rate = float(x)
            if not rate > 0:
                raise SystemExit(f"--request-rate {x!r}: must be > 0 (or inf)")
            levels.append(rate_level(rate))
    if not levels:
        raise SystemExit("no load level: give --concurrency and/or --request-rate")
    return levels


def arrival_offsets(n: int, rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """Send times (seconds after the cell starts) of ``n`` requests at ``rate`` requests/s, as
    ``vllm bench serve``'s ``get_request`` draws them: gamma intervals (shape ``burstiness``,
    mean 1 / rate; burstiness 1 = a Poisson process) from the first request on, cumulated and
    rescaled so that the last one is sent at n / rate. ``inf``: all at 0."""
    if n < 1:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if not rate > 0 or not burstiness > 0:
        raise ValueError("rate and burstiness must be > 0")
    import numpy as np

    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness),
                                             size=n)
    times = np.cumsum(gaps)
    times *= (n / rate) / times[-1]
    return [float(t) for t in times]


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
        fps = args.fam.video_fps
        path = media_dir / f"bench-{args.video}-{args.frames}f-{args.video_size}-{fps}fps-{seed}.mp4"
        if not path.is_file():
            harness.write_mp4(path, harness.synthetic_video(
                args.video, args.frames, size=args.video_size, seed=seed), fps=fps)
        if use_file:
            url = f"file://{path.resolve()}"
        else:
            url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
        out.append(Video(seed=seed, path=path, url=url))
    return out


# --------------------------------------------------------------------------------------------------
# The server


def start_server(args: argparse.Namespace, media_dir: Path, checkpoint: str, per_frame: int,
                 log: Path, extra: Sequence[str] = ()) -> harness.Server:
    """One ``earlytom-serve`` on ``checkpoint`` (``extra``: more earlytom-serve arguments, e.g.
    the stock architecture with vLLM's EVS)."""
    max_len = (args.fam.expected_rows("none", None, args.frames, per_frame) + 256
               + args.max_tokens)
    serve_args = ["--media-dir", str(media_dir), "--num-frames", str(args.frames),
                  "--max-model-len", str(max_len), "--health-interval", "0.5",
                  "--log-level", "warning", "--model", checkpoint,
                  "--served-model-name", "earlytom-bench", *extra]
    for chunk in args.serve_arg:
        serve_args += shlex.split(chunk)
    # Room for concurrency 8 x a full prompt in the KV cache (KV_CACHE_GIB)
    return harness.launch_serve(serve_args, log, env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get(
        "VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB[args.fam.name])})


def evs_servers(args: argparse.Namespace, per_frame: int) -> dict[str, dict[str, Any]]:
    """Server key -> what the vLLM-EVS server for each ratio runs: the stock architecture and
    the ``--video-pruning-rate`` whose EVS count is EarlyTom's at that ratio."""
    out = {}
    for arm in args.arms:
        if arm.method == VLLM_EVS and arm.server not in out:
            q = args.fam.evs_rate(args.frames, per_frame, arm.ratio)
            total = args.fam.units(args.frames) * per_frame
            out[arm.server] = {
                "ratio": arm.ratio, "video_pruning_rate": q, "arch": args.fam.stock_arch,
                "evs_tokens": harness.evs_tokens(total, per_frame, q),
                "earlytom_tokens": args.fam.expected_rows("earlytom", arm.ratio, args.frames,
                                                          per_frame),
                "serve_args": ["--no-earlytom-arch", f"--backend-arg=--video-pruning-rate={q}"]}
    return out


def batching_budget(args: argparse.Namespace, per_frame: int,
                    evs: dict[str, dict[str, Any]]) -> int | None:
    """The ``--max-num-batched-tokens`` every server gets when vLLM's EVS is measured: enough for
    every compressed prompt of the highest concurrency in ONE step, so that no compressed
    prefill is split into chunks.

    vLLM 0.32's EVS crashes its engine (``IndexError`` in ``video_prune/evs.py``
    ``recompute_mrope_positions``) when a prefill chunk starts on a video's first token, which
    chunked prefill does under load (seen here at concurrency 8 with vLLM's default budget; vLLM
    issue #48833, open). EarlyTom's positions are placed one medium at a time from that medium's
    ``vision_start`` (``earlytom_vllm.vllm.qwen2_5_vl.place_media``) and do not hit it. None
    (vLLM's default) when no EVS server runs."""
    if not evs:
        return None
    top = max([int(x) for x in args.concurrency_levels] or [1])
    if len(args.concurrency_levels) < len(args.levels):  # request-rate levels: all may overlap
        top = max(top, int(args.max_concurrency or args.rate_requests))
    rows = max(spec["evs_tokens"] for spec in evs.values())
    return max(4096, 1024 * math.ceil(top * (rows + 256 + args.max_tokens) / 1024))


# --------------------------------------------------------------------------------------------------
# Load


def earlytom_field(method: str, ratio: float) -> dict[str, Any]:
    if method == "none":
        return {"method": "none"}
    return {"method": method, "retain_ratio": ratio}


@dataclass
class Sample:
    method: str  # the arm's label
    concurrency: int | None  # None in a request-rate cell
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
    level: str = ""  # the cell's level key: "4" (concurrency) or "rate=2"
    scheduled_s: float | None = None  # request-rate cells: the arrival time in the cell
    itl_s: list[float] = field(default_factory=list)  # gaps between chunks after the first token


async def one_request(client: Any, model: str, video: Video, arm: Arm, args: argparse.Namespace,
                      sample: Sample, t_run: float) -> Sample:
    content = [{"type": "video_url", "video_url": {"url": video.url}},
               {"type": "text", "text": PROMPT}]
    t0 = time.perf_counter()
    sample.start_s = t0 - t_run
    first_any: float | None = None
    first_content: float | None = None
    chunks: list[float] = []  # times of the chunks with choices (vllm bench serve's ITL basis)
    extra: dict[str, Any] = {"ignore_eos": True}
    if (field_ := arm.earlytom_field()) is not None:
        extra["earlytom"] = field_
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}],
            max_tokens=args.max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True},
            extra_body=extra)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                chunks.append(now)
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
        if sample.ttft_s is not None:
            after = [t for t in chunks if t >= t0 + sample.ttft_s]
            sample.itl_s = [round(b - a, 6) for a, b in itertools.pairwise(after)]
        sample.ok = sample.completion_tokens is not None
        if not sample.ok:
            sample.error = "no usage in the stream"
    except Exception as exc:  # recorded, the run goes on
        sample.latency_s = time.perf_counter() - t0
        sample.error = f"{type(exc).__name__}: {exc}"[:500]
    return sample


async def run_batch(client: Any, model: str, videos: list[Video], arm: Arm, level: int | str,
                    rnd: int, args: argparse.Namespace, t_run: float, pbar: Any,
                    arrivals: Sequence[float] | None = None) -> tuple[list[Sample], float]:
    """One batch of a cell. Concurrency level c: closed loop, ``c`` workers share the requests.
    Request-rate level: request i is sent ``arrivals[i]`` s after the start (open loop, at most
    ``--max-concurrency`` in flight). Returns (samples, wall seconds: first send to last end)."""
    samples: list[Sample] = []
    rate = level_rate(level)
    c = None if rate is not None else int(level)

    async def send(i: int, v: Video, at: float | None = None) -> None:
        s = Sample(method=arm.label, concurrency=c, round=rnd, index=i, seed=v.seed, start_s=0.0,
                   level=str(level), scheduled_s=None if at is None else round(at, 4))
        samples.append(await one_request(client, model, v, arm, args, s, t_run))
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix_str(f"{level} {arm.label}", refresh=False)

    t0 = time.perf_counter()
    if rate is None:
        queue: asyncio.Queue[tuple[int, Video]] = asyncio.Queue()
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

        async def arrive(i: int, v: Video, at: float) -> None:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with cap:
                await send(i, v, at)

        assert arrivals is not None and len(arrivals) == len(videos)
        await asyncio.gather(*(arrive(i, v, at) for i, (v, at) in
                               enumerate(zip(videos, arrivals, strict=True))))
    return samples, time.perf_counter() - t0


def split_even(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def schedule(methods: Sequence[str], levels: Sequence[int | str], args: argparse.Namespace
             ) -> list[tuple[int | str, int, str, int]]:
    """(level, round, method, requests) in run order (``methods``: the arms' labels). A
    request-rate level is one round of ``--rate-requests`` per method (one arrival stream)."""
    plan: list[tuple[int | str, int, str, int]] = []
    for k, level in enumerate(levels):
        rot = list(methods[k % len(methods):]) + list(methods[:k % len(methods)])
        if level_rate(level) is not None:
            plan += [(level, 0, m, max(1, args.rate_requests)) for m in rot]
            continue
        c = int(level)
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


# --------------------------------------------------------------------------------------------------
# Main


async def run_load(args: argparse.Namespace, urls: dict[str, str], model: str,
                   videos: list[Video], levels: list[int | str], t_run: float
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
    args.fam = harness.FAMILIES[args.family]
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in {**QUICK, **QUICK_FAMILY.get(args.family, {})}.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
        if args.requests == defaults.requests:
            args.requests = "c"  # 1 request at c=1, 2 at c=2
    if args.video_size is None:
        args.video_size = args.fam.video_size
    elif args.video_size != args.fam.video_size:  # the family's counts at this size
        args.fam = dataclasses.replace(args.fam, video_size=args.video_size)
    args.levels = parse_levels(args.concurrency, args.request_rate)
    args.concurrency_levels = [x for x in args.levels if level_rate(x) is None]
    methods = args.methods.split(",") if args.methods else FAMILY_METHODS[args.family]
    args.method_list = [m.strip() for m in methods if m.strip()]
    for m in args.method_list:
        if m not in (*METHODS, VLLM_EVS):
            raise SystemExit(f"unknown method {m!r} (choose from "
                             f"{', '.join((*METHODS, VLLM_EVS))})")
    if VLLM_EVS in args.method_list and args.family != "qwen2_5_vl":
        raise SystemExit(f"{VLLM_EVS}: vLLM's EVS serves the Qwen2.5-VL family only here")
    if args.ratios:
        args.ratio_list = [float(x) for x in args.ratios.split(",") if x.strip()]
    elif args.ratio is not None:
        args.ratio_list = [args.ratio]
    else:
        args.ratio_list = list(FAMILY_RATIOS[args.family])
    if not args.ratio_list or not all(0 < r <= 1 for r in args.ratio_list):
        raise SystemExit("--ratio / --ratios must be in (0, 1]")
    args.ratio = args.ratio_list[0]
    args.arms = build_arms(args.method_list, args.ratio_list)
    if args.url and any(a.method == VLLM_EVS for a in args.arms):
        raise SystemExit(f"{VLLM_EVS} needs its own server per ratio: run without --url")
    try:
        args.slos = parse_goodput(args.goodput)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    args.percentile_list = [float(x) for x in args.percentiles.split(",") if x.strip()]
    return args


def spawn(args: argparse.Namespace, media_dir: Path, log: Path
          ) -> tuple[dict[str, harness.Server], dict[str, Any], int, dict[str, dict[str, Any]]]:
    """Start every server at once on the family's benchmark checkpoint (or ``--checkpoint``):
    the plugin architecture ("main", if an arm needs it) and one stock-architecture server with
    vLLM's EVS per ratio. Returns (servers by key, the report's model facts, tokens per frame,
    the EVS servers' settings)."""
    fam = args.fam
    sizes: dict[str, Any] | None = None
    if args.checkpoint:
        checkpoint, sizes_from = args.checkpoint, "--checkpoint"
    else:
        if args.sizes:
            sizes, sizes_from = json.loads(args.sizes), "--sizes"
        else:
            sizes = harness.family_sizes(fam, quick=args.quick)
            if fam.name == "llava_onevision":
                sizes_from = "benchmarks.harness." + ("TINY_SIZES" if args.quick else "BENCH_SIZES")
            else:
                sizes_from = f"benchmarks.harness.family_sizes({fam.name}, quick={args.quick})"
        t = time.perf_counter()
        checkpoint, sizes = fam.checkpoint(sizes)
        print(f"benchmark checkpoint {checkpoint} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    per_frame = fam.model_tokens_per_frame(checkpoint)
    evs = evs_servers(args, per_frame)
    budget = batching_budget(args, per_frame, evs)
    if budget is not None:  # the same for every server: none is favoured
        args.serve_arg = [*args.serve_arg, f"--backend-arg=--max-num-batched-tokens={budget}"]
    args.max_num_batched_tokens = budget
    servers: dict[str, harness.Server] = {}
    if any(a.server == "main" for a in args.arms):
        servers["main"] = start_server(args, media_dir, checkpoint, per_frame, log)
    for key, spec in evs.items():
        servers[key] = start_server(args, media_dir, checkpoint, per_frame,
                                    log.with_name(f"{log.stem}-{key}{log.suffix}"),
                                    spec["serve_args"])
    for key, server in servers.items():
        print(f"started earlytom-serve {key} on {server.url} (log: {server.log})",
              file=sys.stderr)
    model = {"checkpoint": checkpoint, "sizes": sizes, "sizes_from": sizes_from,
             "dtype": "float32 (earlytom-serve's CPU default)", "family": fam.name,
             "arch": fam.arch, "stock_arch": fam.stock_arch,
             "desc": fam.checkpoint_desc(sizes) if sizes is not None else None}
    return servers, model, per_frame, evs


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
                           evs: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each arm's visual tokens per video: the library's count, or vLLM EVS's kept count."""
    return {a.label: evs[a.server]["evs_tokens"] if a.method == VLLM_EVS else
            args.fam.expected_rows(a.method, a.ratio, args.frames, per_frame) for a in args.arms}


def budget_checks(samples: list[Sample], args: argparse.Namespace,
                  visual_tokens: dict[str, int]) -> dict[str, Any]:
    """Errors, ignore_eos, and that each method saved exactly the expected count of visual
    tokens against full tokens (measured from ``usage.prompt_tokens``); vLLM's EVS must keep
    exactly EarlyTom's count at its ratio."""
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
    same = {}
    for a in args.arms:
        twin = next((b.label for b in args.arms if b.method == "earlytom" and b.ratio == a.ratio),
                    None)
        if a.method == VLLM_EVS and twin:
            same[a.label] = {"vllm_evs": prompt_by_method.get(a.label),
                             "earlytom": prompt_by_method.get(twin),
                             "expected_equal": visual_tokens[a.label] == visual_tokens[twin]}
            same[a.label]["equal"] = bool(prompt_by_method.get(a.label)) and \
                prompt_by_method.get(a.label) == prompt_by_method.get(twin)
    if same:
        checks["vllm_evs_same_prompt_as_earlytom"] = same
    return checks


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
    evs: dict[str, dict[str, Any]] = {}
    try:
        if args.url:
            servers = {"main": harness.Server(url=args.url.rstrip("/"))}
            model_info: dict[str, Any] = {"checkpoint": args.checkpoint, "sizes": None,
                                          "sizes_from": None, "dtype": "server's",
                                          "family": args.fam.name, "arch": args.fam.arch}
        else:
            servers, model_info, per_frame, evs = spawn(
                args, media_dir, args.server_log or workdir / "earlytom-serve.log")
        # the videos are written while the servers start
        t = time.perf_counter()
        videos = prepare_videos(n_videos, args, media_dir, use_file=use_file,
                                progress=not args.no_progress)
        video_s = time.perf_counter() - t
        t = time.perf_counter()
        for server in servers.values():
            harness.wait_ready(server, args.startup_timeout, args.api_key)
        ready_s = time.perf_counter() - t
        first = next(iter(servers.values()))
        model = args.model or harness.served_model(first.url, args.api_key)
        if args.url:
            per_frame = args.fam.model_tokens_per_frame(args.checkpoint or model)
        print(f"{len(servers)} server(s) ready; model {model!r}; {len(videos)} videos "
              f"({video_s:.1f} s)", file=sys.stderr)
        samples, batches, warm = asyncio.run(
            run_load(args, {k: v.url for k, v in servers.items()}, model, videos, levels, t_run))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = harness.loadavg()

    visual_tokens = expected_visual_tokens(args, per_frame, evs)
    cells = summarize_cells(samples, batches, args, visual_tokens)
    checks = budget_checks(samples, args, visual_tokens)
    loads_1m = [load_start[0], load_end[0]] + [x for b in batches for x in (
        b["loadavg_before"][0], b["loadavg_after"][0])]
    main_server = servers.get("main")
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "notes": args.note,
        "settings": {
            "family": args.fam.name,
            "frames": args.frames, "video": args.video, "video_size": args.video_size,
            "video_fps": args.fam.video_fps,
            "media": "file" if use_file else "data", "methods": labels,
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
            "warmup_per_method": args.warmup, "quick": args.quick, "prompt": PROMPT,
            "spawned_server": not args.url,
            "server_command": main_server.command[1:] if main_server and main_server.command
            else None,
            "servers": {k: {"command": v.command[1:] if v.command else None,
                            **{x: y for x, y in evs.get(k, {}).items() if x != "serve_args"}}
                        for k, v in servers.items()},
            "load": "concurrency levels: closed loop, c workers, one request in flight each; "
                    "rate=R levels: open loop, arrivals at R/s (gamma intervals, burstiness)",
            "ttft": "client side, send -> first streamed chunk with content",
            "metrics": "vllm bench serve's names and definitions (benchmarks/serve.py "
                       "calculate_metrics), per cell: duration = the cell's wall time",
        },
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot_throughput(report, Path(args.plot))
    print_throughput(report)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0 if checks["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
