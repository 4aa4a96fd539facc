"""Follow-up questions about one video: the TTFT of each turn of a conversation, per method, with
the vLLM cache hits behind it.

Run from the repository root::

    .venv/bin/python -m benchmarks.followup            # the full CPU run
    .venv/bin/python -m benchmarks.followup --quick    # the test suite's smoke run

A chat client asking several questions about the same clip resends the whole history each turn:
turn 1 is ``[user: video + Q1]``, turn 2 is ``[user: video + Q1, assistant: A1, user: Q2]``, turn 3
adds ``A2, Q3``. With vLLM's caches on, turns 2 and 3 should not pay for the video again: the
multimodal cache (``vllm:mm_cache_*``: the processed video, keyed by its content and the request's
``mm_processor_kwargs``) and the prefix cache (``vllm:prefix_cache_*``: the KV blocks of the
history, the video's placeholder tokens included) serve them.

It starts ``earlytom-serve`` (a subprocess that spawns and supervises vLLM; prefix caching is vLLM's
default and ``earlytom-serve`` leaves it on) on the benchmark checkpoint, or talks to a running one
given ``--url``. For each method -- ``none`` (full tokens), ``post_encoder``, ``evs``,
``earlytom``, chosen per request with the front end's ``"earlytom"`` body field at ``--ratio``
(default 0.10), the same settings on every turn -- it holds ``--conversations`` conversations
(each on a fresh video: no method or conversation sees another's video), interleaved across the
methods (ABCD, then DCBA, ...), each of three turns in order.

Measured per turn
    * TTFT, client side, streaming: from sending the request to the first chunk with content
      (the first chunk of any kind if the random weights decode to empty strings only).
    * ``usage.prompt_tokens`` (exact expected counts: the chat template of the checkpoint's
      processor over the same history, with the library's count of visual tokens for the video).
    * The cache counters of every vLLM backend behind the front end (``/metrics``, summed over
      the engines' ``engine`` labels), read before and after the turn: prefix-cache queries and
      hits (tokens), multimodal-cache queries and hits (items), prompt tokens and cached prompt
      tokens. Conversations run one at a time, so a turn's deltas are its own.
    * ``os.getloadavg()`` and the CPU meter (:func:`benchmarks.harness.cpu_since`) per turn.
    * Warm-up: ``--warmup`` single-turn requests per method on their own videos, untimed.

Writes ``benchmarks/results/followup.json`` (``--json``: settings, model, machine, load, every
turn, per (method, turn) summaries, checks) and ``followup.png`` (``--plot``; ``''`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from benchmarks.harness import families
from benchmarks.harness.arms import METHODS, earlytom_field
from benchmarks.harness.counters import COUNTERS, cache_config, counters_after, read_counters
from benchmarks.harness.plots import plot_followup
from benchmarks.harness.tables import print_followup

#: VLLM_CPU_KVCACHE_SPACE (GiB) of the spawned server: one conversation at a time.
KV_CACHE_GIB = 1
QUESTIONS: tuple[str, ...] = (
    "What happens in this video? Describe it briefly.",
    "How many different scenes are there, and what changes between them?",
    "Which object moves the most in the last scene?",
)
#: --quick: the tiny checkpoint, 4 frames, one conversation per method, no warm-up; KV blocks of 32
#: tokens (the CPU backend's smallest; its default is 128) so that the compressed methods' short
#: prompts fill whole blocks the prefix cache can serve.
QUICK = {"frames": 4, "max_tokens": 4, "conversations": 1, "warmup": 0, "block_size": 32}


# --------------------------------------------------------------------------------------------------
# Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.followup",
        description="TTFT of three follow-up questions about one video, per method, with the "
        "vLLM prefix- and multimodal-cache hits of each turn, through one earlytom-serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    families.add_family_arg(p)
    harness.add_endpoint_args(p, "checkpoint for the spawned server (default: the benchmark "
                              "model; --quick: the tiny one); with --url: a local copy of the "
                              "served model, for its tokens per frame and chat template")
    p.add_argument("--frames", type=int, default=32, help="frames per video (--num-frames)")
    p.add_argument("--video-size", type=int, help="side of the square videos (px; default: the "
                   "family's benchmark video_size)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ratio", type=float, default=0.10,
                   help="retain ratio of the compressed methods")
    p.add_argument("--turns", type=int, default=len(QUESTIONS),
                   help=f"questions per conversation (1-{len(QUESTIONS)})")
    p.add_argument("--conversations", type=int, default=3,
                   help="conversations per method, each on its own video")
    p.add_argument("--max-tokens", type=int, default=32,
                   help="answer tokens per turn (ignore_eos)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per method")
    p.add_argument("--block-size", type=int, help="vLLM --block-size of the spawned server "
                   "(default: vLLM's: 128 on a CPU, 16 on a GPU); the prefix cache serves whole "
                   "blocks only")
    p.add_argument("--seed", type=int, default=5000, help="first video seed")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny checkpoint, 4 frames, "
                   "1 conversation per method, 4 answer tokens")
    harness.add_output_args(p)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.fam = families.get(args.family)
    harness.resolve_outputs(args, "followup", args.fam)
    args.video_size = args.video_size or args.fam.benchmark.video_size
    for m in args.method_list:
        if m not in METHODS:
            parser.error(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if not args.method_list:
        parser.error("--methods names no method")
    if not 0 < args.ratio <= 1:
        parser.error("--ratio must be in (0, 1]")
    if not 1 <= args.turns <= len(QUESTIONS):
        parser.error(f"--turns must be in 1..{len(QUESTIONS)}")
    for name in ("frames", "conversations", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.block_size is not None and args.block_size < 1:
        parser.error("--block-size must be >= 1")
    if args.url and not args.checkpoint:
        parser.error("--url needs --checkpoint (a local copy of the served model: its tokens "
                     "per frame and chat template give the expected prompt tokens)")
    return args


# --------------------------------------------------------------------------------------------------
# Expected prompt tokens


def expected_prompt_tokens(checkpoint: str, history: list[dict[str, Any]], visual_rows: int
                           ) -> int:
    """``usage.prompt_tokens`` the server should report for ``history`` (OpenAI messages, the
    video as the first user message's first part): the checkpoint processor's chat template over
    the same messages, the video placeholder expanded to the library's ``visual_rows``."""
    from transformers import AutoProcessor

    processor = _processor(checkpoint, AutoProcessor)
    messages = []
    for m in history:
        if isinstance(m["content"], str):
            parts = [{"type": "text", "text": m["content"]}]
        else:
            parts = [{"type": "video"} if p["type"] == "video_url" else p for p in m["content"]]
        messages.append({"role": m["role"], "content": parts})
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    video_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    placeholders = ids.count(video_id)
    if placeholders != 1:
        raise ValueError(f"the chat template gave {placeholders} video placeholders, want 1")
    return len(ids) - 1 + visual_rows


_PROCESSORS: dict[str, Any] = {}


def _processor(checkpoint: str, auto: Any) -> Any:
    if checkpoint not in _PROCESSORS:
        _PROCESSORS[checkpoint] = auto.from_pretrained(checkpoint)
    return _PROCESSORS[checkpoint]


# --------------------------------------------------------------------------------------------------
# One turn


@dataclass(kw_only=True)
class Turn(harness.RequestRecord):
    method: str
    conversation: int  # index within the method
    turn: int  # 1-based
    seed: int  # the conversation's video
    messages: int = 0  # messages sent
    prompt_tokens_expected: int | None = None
    answer: str = ""
    cache: dict[str, float] = field(default_factory=dict)  # counter deltas over the turn
    loadavg_before: list[float] | None = None
    cpu: dict[str, float] = field(default_factory=dict)


async def stream_turn(client: Any, model: str, history: list[dict[str, Any]], turn: Turn,
                      args: argparse.Namespace) -> None:
    """Send ``history`` (streaming) and fill ``turn``'s TTFT, usage and answer."""
    got = await harness.stream_chat(
        client, model=model, messages=history, max_tokens=args.max_tokens,
        extra_body={"ignore_eos": True, "earlytom": earlytom_field(turn.method, args.ratio)})
    turn.record(got)
    turn.answer = got.text


async def conversation(client: Any, model: str, video_url: str, method: str, index: int,
                       seed: int, args: argparse.Namespace, backends: Sequence[str],
                       checkpoint: str | None, visual_rows: int) -> list[Turn]:
    """Ask the questions in turn about one video, resending the history as a chat client does."""
    history: list[dict[str, Any]] = []
    turns: list[Turn] = []
    for k in range(args.turns):
        content: Any = QUESTIONS[k]
        if k == 0:
            content = [{"type": "video_url", "video_url": {"url": video_url}},
                       {"type": "text", "text": QUESTIONS[0]}]
        history.append({"role": "user", "content": content})
        turn = Turn(method=method, conversation=index, turn=k + 1, seed=seed,
                    messages=len(history))
        if checkpoint:
            turn.prompt_tokens_expected = expected_prompt_tokens(checkpoint, history,
                                                                 visual_rows)
        before = await asyncio.to_thread(read_counters, backends)
        turn.loadavg_before = harness.loadavg()
        mark = harness.cpu_mark()
        await stream_turn(client, model, history, turn, args)
        turn.cpu = harness.cpu_since(mark)
        after = await asyncio.to_thread(counters_after, backends, before)
        turn.cache = {k2: round(after[k2] - before[k2], 3) for k2 in COUNTERS}
        turns.append(turn)
        if not turn.ok:
            break
        history.append({"role": "assistant", "content": turn.answer})
    return turns


# --------------------------------------------------------------------------------------------------
# Run


def video_url(seed: int, args: argparse.Namespace, media_dir: Path, *, as_file: bool) -> str:
    """A fresh synthetic scene video (3 scenes, moving objects) as file:// or data: URL."""
    return harness.video_files("scene", [seed], frames=args.frames, size=args.video_size,
                               fps=args.fam.benchmark.video_fps, media_dir=media_dir,
                               prefix="followup", as_file=as_file)[0].url


def order(methods: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(conversation index, method) in run order: rounds alternate ABCD / DCBA."""
    out = []
    for r in range(rounds):
        seq = list(methods) if r % 2 == 0 else list(methods)[::-1]
        out += [(r, m) for m in seq]
    return out


async def run(args: argparse.Namespace, url: str, model: str, backends: Sequence[str],
              checkpoint: str | None, per_frame: int, media_dir: Path, as_file: bool
              ) -> tuple[list[Turn], list[Turn]]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=args.api_key, max_retries=0,
                                timeout=args.timeout)
    rows = {m: families.expected_rows(args.fam, m, args.ratio, args.frames, per_frame)
            for m in args.method_list}
    seeds = iter(range(args.seed, args.seed + 10**6))
    warm: list[Turn] = []
    turns: list[Turn] = []
    try:
        for w in range(args.warmup):
            for m in args.method_list:
                seed = next(seeds)
                got = await conversation(
                    client, model, video_url(seed, args, media_dir, as_file=as_file), m, -1 - w,
                    seed, _one_turn(args), backends, None, rows[m])
                warm += got
                if not got[-1].ok:
                    raise RuntimeError(f"warm-up request failed ({m}): {got[-1].error}")
        for index, m in order(args.method_list, args.conversations):
            seed = next(seeds)
            got = await conversation(
                client, model, video_url(seed, args, media_dir, as_file=as_file), m, index,
                seed, args, backends, checkpoint, rows[m])
            turns += got
            print(f"{m} conversation {index}: TTFT " + ", ".join(
                f"{t.ttft_s:.3f}" if t.ttft_s else "-" for t in got) + " s", file=sys.stderr)
        return turns, warm
    finally:
        await client.close()


def _one_turn(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "turns": 1})


def start_server(args: argparse.Namespace, media_dir: Path, checkpoint: str, per_frame: int,
                 log: Path) -> harness.Server:
    """earlytom-serve on ``checkpoint``; room for the longest conversation (three answers and
    questions after the full-token video)."""
    max_len = (families.expected_rows(args.fam, "none", None, args.frames, per_frame) + 512
               + args.turns * args.max_tokens * 4)
    extra = [] if args.block_size is None else [f"--backend-arg=--block-size={args.block_size}"]
    return harness.launch_bench_server(
        checkpoint=checkpoint, media_dir=media_dir, frames=args.frames, max_model_len=max_len,
        log=log, kv_cache_gib=KV_CACHE_GIB, extra=extra, serve_arg=args.serve_arg)


def median(xs: Sequence[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def summarize(turns: Sequence[Turn], methods: Sequence[str], n_turns: int) -> list[dict[str, Any]]:
    """Per (method, turn): median TTFT, prompt tokens, cache deltas (medians over conversations)."""
    out = []
    for m in methods:
        for k in range(1, n_turns + 1):
            got = [t for t in turns if t.method == m and t.turn == k and t.ok]
            out.append({
                "method": m, "turn": k, "ok": len(got),
                "ttft_median_s": median([t.ttft_s for t in got]),
                "ttft_min_s": round(min(t.ttft_s for t in got), 4) if got else None,
                "prompt_tokens": sorted({t.prompt_tokens for t in got}),
                "cache": {c: median([t.cache[c] for t in got]) for c in COUNTERS},
                "prefix_hit_rate": median([t.cache["prefix_hits"] / t.cache["prefix_queries"]
                                           for t in got if t.cache["prefix_queries"]]),
                "foreign_cores": median([t.cpu.get("foreign_cores", 0.0) for t in got]),
            })
    return out


def speedups(cells: Sequence[dict[str, Any]], methods: Sequence[str], n_turns: int
             ) -> dict[str, dict[str, float | None]]:
    """Per method: turn-1 TTFT / turn-k TTFT (medians), what the caches buy a follow-up."""
    by = {(c["method"], c["turn"]): c["ttft_median_s"] for c in cells}
    out = {}
    for m in methods:
        first = by.get((m, 1))
        out[m] = {str(k): round(first / by[(m, k)], 2) if first and by.get((m, k)) else None
                  for k in range(2, n_turns + 1)}
    return out


def checks(turns: Sequence[Turn], args: argparse.Namespace, block_size: int) -> dict[str, Any]:
    """Errors, exact prompt tokens, and the caches: every follow-up finds its video in the
    multimodal cache and at least the earlier turn's whole KV blocks in the prefix cache."""
    ok = [t for t in turns if t.ok]
    later = [t for t in ok if t.turn > 1]
    prev = {(t.method, t.conversation, t.turn + 1): t.prompt_tokens for t in ok}
    exact = [t for t in ok if t.prompt_tokens_expected is not None]
    grows = True
    for m in args.method_list:
        for c in range(args.conversations):
            seq = [t.prompt_tokens for t in sorted(ok, key=lambda t: t.turn)
                   if t.method == m and t.conversation == c]
            grows = grows and all(b > a for a, b in itertools.pairwise(seq))
    return {
        "errors": sum(1 for t in turns if not t.ok),
        "turns_expected": len(args.method_list) * args.conversations * args.turns,
        "turns_ok": len(ok),
        "ignore_eos_honored": bool(ok) and all(t.completion_tokens == args.max_tokens for t in ok),
        "prompt_tokens_exact": bool(exact) and all(
            t.prompt_tokens == t.prompt_tokens_expected for t in exact),
        "prompt_tokens_mismatches": [
            {"method": t.method, "turn": t.turn, "measured": t.prompt_tokens,
             "expected": t.prompt_tokens_expected} for t in exact
            if t.prompt_tokens != t.prompt_tokens_expected],
        "prompt_tokens_grow": grows,
        "followups_hit_mm_cache": bool(later) and all(t.cache["mm_hits"] >= 1 for t in later),
        "followups_hit_prefix_cache": bool(later) and all(
            t.cache["prefix_hits"] >= prev[(t.method, t.conversation, t.turn)] // block_size
            * block_size > 0 for t in later),
        "prefix_hits_short": [
            {"method": t.method, "turn": t.turn, "hits": t.cache["prefix_hits"],
             "whole_blocks_of_the_previous_prompt": prev[(t.method, t.conversation, t.turn)]
             // block_size * block_size} for t in later
            if t.cache["prefix_hits"] < prev[(t.method, t.conversation, t.turn)]
            // block_size * block_size],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = harness.loadavg()
    t_run = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="earlytom-followup-"))
    media_dir = workdir / "media"
    server: harness.Server | None = None
    sizes: dict[str, Any] | None = None
    try:
        if args.url:
            server = harness.Server(url=args.url.rstrip("/"))
            checkpoint = args.checkpoint
        else:
            if args.checkpoint:
                checkpoint, sizes_from = args.checkpoint, "--checkpoint"
            else:
                sizes_from = families.sizes_source(args.fam, quick=args.quick)
                checkpoint, sizes = families.checkpoint(
                    args.fam, families.sizes(args.fam, quick=args.quick))
        per_frame = families.model_tokens_per_frame(args.fam, checkpoint, args.video_size)
        if not args.url:
            server = start_server(args, media_dir, checkpoint, per_frame,
                                  args.server_log or workdir / "earlytom-serve.log")
            print(f"started earlytom-serve on {server.url}", file=sys.stderr)
        from transformers import AutoProcessor

        _processor(checkpoint, AutoProcessor)  # loaded while the server starts
        t = time.perf_counter()
        harness.wait_ready(server, args.startup_timeout, args.api_key)
        ready_s = time.perf_counter() - t
        model = args.model or harness.served_model(server.url, args.api_key)
        backends = harness.backend_urls(server.url, args.api_key)
        engine_cache = cache_config(backends)
        turns, warm = asyncio.run(run(args, server.url, model, backends, checkpoint, per_frame,
                                      media_dir, not args.url))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = harness.loadavg()
    cells = summarize(turns, args.method_list, args.turns)
    loads = [x[0] for x in [load_start, load_end] + [t.loadavg_before for t in turns] if x]
    report: dict[str, Any] = {
        "benchmark": "followup",
        "notes": args.note,
        "settings": {
            "family": args.fam.name, "frames": args.frames, "video": "scene", "video_size": args.video_size,
            "methods": args.method_list, "ratio": args.ratio, "turns": args.turns,
            "questions": list(QUESTIONS[:args.turns]), "conversations": args.conversations,
            "max_tokens": args.max_tokens, "block_size": args.block_size, "ignore_eos": True, "temperature": 0.0,
            "warmup_per_method": args.warmup, "quick": args.quick,
            "spawned_server": not args.url,
            "server_command": server.command[1:] if server and server.command else None,
            "counters": COUNTERS,
            "ttft": "client side, send -> first streamed chunk with content",
            "history": "each turn resends every earlier question and answer (a chat client)",
        },
        "model": {"served_name": model, "checkpoint": checkpoint, "sizes": sizes,
                  "sizes_from": None if args.url else sizes_from, "tokens_per_frame": per_frame,
                  "visual_tokens": {m: families.expected_rows(args.fam, m, args.ratio,
                                                              args.frames, per_frame)
                                    for m in args.method_list}},
        "backends": list(backends),
        "engine_cache": engine_cache,
        "machine": harness.machine_info(),
        "loadavg": {"start": load_start, "end": load_end,
                    "min_1m": min(loads) if loads else None,
                    "max_1m": max(loads) if loads else None,
                    "note": "os.getloadavg() (1, 5, 15 min); the machine is shared"},
        "timing_s": {"total": round(time.perf_counter() - t_run, 1),
                     "server_ready_wait": round(ready_s, 1)},
        "cells": cells,
        "speedup_vs_turn1": speedups(cells, args.method_list, args.turns),
        "checks": checks(turns, args, engine_cache["block_size"]),
        "warmup": [asdict(t) for t in warm],
        "turns": [asdict(t) for t in turns],
    }
    print_followup(report)
    harness.write_results(report, args.json, args.plot, plot_followup)
    c = report["checks"]
    return 0 if c["errors"] == 0 and c["turns_ok"] == c["turns_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
