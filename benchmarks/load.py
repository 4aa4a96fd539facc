"""The front end under load: backpressure, memory, and its own cost on the request path.

Run from the repository root (writes ``benchmarks/results/load.json``)::

    .venv/bin/python -m benchmarks.load            # the benchmark (~4 min here)
    .venv/bin/python -m benchmarks.load --quick    # the test suite's size (~1.5 min)

Everything runs on loopback and stops by itself (bounded request counts, client timeouts).

1. **Ramp** (``earlytom-serve`` with the tiny checkpoint, a real vLLM CPU engine): for each
   concurrency level ``c``, ``c`` workers each send ``--per-worker`` streaming video requests in a
   closed loop. The front end runs with ``--max-in-flight L --max-queued Q``: at ``c <= L + Q``
   every request must succeed (0 errors), above it the only refusals allowed are 429s (with
   ``Retry-After``). Per level: status counts, client-side TTFT p50/p99 of the successful
   requests (send -> first content chunk), and the front end's RSS (sampled every 20 ms; the
   front end only, not the vLLM process it supervises).
2. **Upload burst**: ``--uploads`` clients at once each POST a ``--upload-mb`` MiB body (a base64
   "video" of random bytes, refused as not a video after it has been read and decoded) to a front
   end whose ``--max-buffered-bytes`` budget is ``--buffered-mb`` MiB. Bodies wait for room before
   they are read, so the front end's peak RSS stays near its baseline plus a small multiple of
   the budget instead of growing with the burst (reported: baseline, peak, budget, offered bytes).
3. **Overhead** (fake backend, no engine): latency of the same requests sent straight to the
   backend and through ``earlytom-serve``, p50/p99 over ``--overhead-n`` sequential requests per
   kind (text, streamed text, 8-frame video): what the front end adds to a request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    RESULTS,
    ROOT,
    launch_serve,
    loadavg,
    machine_info,
    served_model,
    synthetic_video,
    wait_ready,
    write_mp4,
)
from benchmarks.harness.serve import free_port

FAKE_BACKEND = ROOT / "tests" / "server" / "frontend_fakes.py"
CHAT = "/v1/chat/completions"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class RssSampler:
    """The peak resident set of one process, sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: int | float) -> float:
    return round(n / 2**20, 1)


# -- 1. ramp ----------------------------------------------------------------------------------------


async def one_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, float | None]:
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", CHAT, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line.replace(
                    " ", "") and '"content":""' not in line.replace(" ", ""):
                ttft = time.perf_counter() - t0
    return 200, ttft


async def ramp_level(url: str, body: dict[str, Any], c: int, per_worker: int
                     ) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    ttfts: list[float] = []
    retry_after: set[str] = set()

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(per_worker):
            status, ttft = await one_stream(client, body)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if ttft is not None:
                ttfts.append(ttft)
            if status == 429:
                await asyncio.sleep(0.05)  # a polite client would wait Retry-After; keep it short

    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        r = await client.post(CHAT, json={**body, "stream": False, "max_tokens": 1})
        r.raise_for_status()  # warm
        await asyncio.gather(*(worker(client) for _ in range(c)))
        probe = await client.get("/metrics")
    for line in probe.text.splitlines():
        if line.startswith("earlytom_requests_rejected_total"):
            retry_after.add(line)
    return {
        "concurrency": c, "requests": c * per_worker, "statuses": statuses,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "wall_s": round(time.perf_counter() - t0, 2), "rejected_metric": sorted(retry_after),
    }


def video_body(model: str, media_dir: Path, frames: int) -> dict[str, Any]:
    path = write_mp4(media_dir / "load.mp4", synthetic_video("scene", frames, size=128, seed=0))
    return {"model": model, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"file://{path}"}},
                {"type": "text", "text": "Describe the video."}]}]}


def run_ramp(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    server = launch_serve(
        ["--media-dir", str(media), "--health-interval", "0.5", "--num-frames", "8",
         "--max-in-flight", str(args.max_in_flight), "--max-queued", str(args.max_queued),
         "--queue-timeout", "120", "--log-level", "warning", "--quiet-backend"],
        work / "ramp.log")
    try:
        wait_ready(server, 600, "none")
        assert server.proc is not None
        model = served_model(server.url, "none")
        body = video_body(model, media, 8)
        levels = []
        with RssSampler(server.proc.pid) as sampler:
            baseline = sampler.rss()
            for c in args.levels:
                level_sampler = RssSampler(server.proc.pid)
                with level_sampler:
                    level = asyncio.run(ramp_level(server.url, body, c, args.per_worker))
                level["front_end_peak_rss_mib"] = mib(level_sampler.peak)
                level["within_limit"] = c <= args.max_in_flight + args.max_queued
                levels.append(level)
                print(json.dumps(level), flush=True)
        return {"max_in_flight": args.max_in_flight, "max_queued": args.max_queued,
                "per_worker": args.per_worker, "front_end_baseline_rss_mib": mib(baseline),
                "front_end_peak_rss_mib": mib(sampler.peak), "levels": levels}
    finally:
        server.stop()


# -- 2. upload burst ---------------------------------------------------------------------------------


def run_uploads(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, str(FAKE_BACKEND), "--port", str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    budget = args.buffered_mb * 2**20
    server = launch_serve(
        ["--backend", f"http://127.0.0.1:{backend_port}", "--health-interval", "0.5",
         "--max-buffered-bytes", str(budget), "--max-in-flight", str(args.uploads),
         "--max-queued", str(args.uploads), "--queue-timeout", "300",
         "--max-video-bytes", str((args.upload_mb + 1) * 2**20), "--log-level", "warning",
         "--media-dir", str(work)], work / "uploads.log")
    try:
        wait_ready(server, 120, "none")
        assert server.proc is not None
        payload = base64.b64encode(os.urandom(args.upload_mb * 2**20 * 3 // 4)).decode()
        body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + payload}}]}]}
        ).encode()
        statuses: dict[str, int] = {}

        async def one(client: httpx.AsyncClient) -> None:
            r = await client.post(CHAT, content=body,
                                  headers={"content-type": "application/json"})
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

        async def burst() -> float:
            t0 = time.perf_counter()
            limits = httpx.Limits(max_connections=args.uploads + 2)
            async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as c:
                await asyncio.gather(*(one(c) for _ in range(args.uploads)))
            return time.perf_counter() - t0

        with RssSampler(server.proc.pid) as sampler:
            baseline = sampler.rss()
            wall = asyncio.run(burst())
        return {"uploads": args.uploads, "body_mib": mib(len(body)),
                "offered_mib": mib(len(body) * args.uploads), "budget_mib": args.buffered_mb,
                "statuses": statuses, "wall_s": round(wall, 2),
                "front_end_baseline_rss_mib": mib(baseline),
                "front_end_peak_rss_mib": mib(sampler.peak),
                "growth_over_budget": round((sampler.peak - baseline) / budget, 2)}
    finally:
        server.stop()
        backend.terminate()
        backend.wait()


# -- 3. overhead ---------------------------------------------------------------------------------------


def run_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, str(FAKE_BACKEND), "--port", str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    direct = f"http://127.0.0.1:{backend_port}"
    server = launch_serve(["--backend", direct, "--log-level", "warning", "--media-dir",
                           str(work)], work / "overhead.log")
    try:
        wait_ready(server, 120, "none")
        video = write_mp4(work / "overhead.mp4", synthetic_video("scene", 8, size=128, seed=1))
        vurl = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
        text = [{"role": "user", "content": "hi"}]
        kinds = {
            "text": {"model": "fake-model", "messages": text},
            "stream": {"model": "fake-model", "messages": text, "stream": True},
            "video": {"model": "fake-model", "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": vurl}},
                {"type": "text", "text": "x"}]}]},
        }
        out: dict[str, Any] = {"n": args.overhead_n}
        for kind, body in kinds.items():
            row = {}
            for target, base in (("direct", direct), ("front_end", server.url)):
                with httpx.Client(base_url=base, timeout=30) as c:
                    for _ in range(20):
                        c.post(CHAT, json=body).raise_for_status()
                    lat = []
                    for _ in range(args.overhead_n):
                        t0 = time.perf_counter()
                        r = c.post(CHAT, json=body)
                        r.read()
                        lat.append(time.perf_counter() - t0)
                        r.raise_for_status()
                row[target] = {"p50_ms": round(1000 * statistics.median(lat), 2),
                               "p99_ms": round(1000 * (percentile(lat, 99) or 0), 2)}
            row["added_p50_ms"] = round(row["front_end"]["p50_ms"] - row["direct"]["p50_ms"], 2)
            out[kind] = row
            print(kind, json.dumps(row), flush=True)
        return out
    finally:
        server.stop()
        backend.terminate()
        backend.wait()


# -- CLI -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the test suite's size")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--per-worker", type=int)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--max-queued", type=int)
    p.add_argument("--uploads", type=int)
    p.add_argument("--upload-mb", type=int)
    p.add_argument("--buffered-mb", type=int)
    p.add_argument("--overhead-n", type=int)
    p.add_argument("--only", choices=["ramp", "uploads", "overhead"], action="append")
    p.add_argument("--json", type=Path, default=RESULTS / "load.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/earlytom-load"))
    return p


DEFAULTS = {
    False: {"levels": [1, 2, 4, 8, 16, 32], "per_worker": 3, "max_in_flight": 4,
            "max_queued": 12, "uploads": 24, "upload_mb": 40, "buffered_mb": 128,
            "overhead_n": 500},
    True: {"levels": [1, 2, 4, 8], "per_worker": 2, "max_in_flight": 2, "max_queued": 2,
           "uploads": 8, "upload_mb": 16, "buffered_mb": 32, "overhead_n": 100},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for key, value in DEFAULTS[args.quick].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["ramp", "uploads", "overhead"]
    report: dict[str, Any] = {"benchmark": "load", "quick": args.quick,
                              "machine": machine_info(), "loadavg_before": loadavg()}
    runners = {"ramp": run_ramp, "uploads": run_uploads, "overhead": run_overhead}
    for part in parts:
        report[part] = runners[part](args, args.work)
    report["loadavg_after"] = loadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
