"""Time to first token (TTFT) of one video request, per compression method, in vLLM.

Run from the repository root (writes ``benchmarks/results/ttft.json`` and ``ttft.png``)::

    .venv/bin/python -m benchmarks.ttft                      # the full CPU benchmark
    .venv/bin/python -m benchmarks.ttft --quick --json /tmp/t.json --plot ''   # smoke run

On a GPU node with a real checkpoint (no CPU environment variables are set, dtype bfloat16)::

    python -m benchmarks.ttft --device cuda \\
        --model llava-hf/llava-onevision-qwen2-7b-ov-hf \\
        --json benchmarks/results/ttft_cuda.json --plot benchmarks/results/ttft_cuda.png

Qwen2.5-VL (``--family qwen2_5_vl``; writes ``results/ttft_qwen2_5_vl.json`` and ``.png``)::

    .venv/bin/python -m benchmarks.ttft --family qwen2_5_vl          # the full CPU benchmark

compares full tokens and EarlyTom (per request, on the plugin engine) with vLLM's OWN EVS, which is
server-wide: one more engine per ratio, the stock ``Qwen2_5_VLForConditionalGeneration`` on the
same checkpoint with ``video_pruning_rate`` q chosen so that EVS keeps exactly EarlyTom's count
(:func:`benchmarks.harness.families.vllm_pruning_rate`; 32 frames of 448 x 448 = 16 slices x 256 tokens: r = 0.15 -> 624
tokens, q = 0.847653; r = 0.10 -> 416, q = 0.898435). Every engine is up at once and the cells of
all engines are interleaved in one shuffled order per run. The stock model is timed from outside
(``install_stock_timer``: its video encoder and its EVS selection, instance attributes of that
engine's model); its ``vision`` includes the merger (the projector), which for EarlyTom is in
``tokens``. Targets: EarlyTom's TTFT >= 1.5x lower than EVS and >= 2x lower than full tokens, at
r = 0.15 and 0.10; the family's benchmark checkpoint is sized for a 25.8% vision share (the 7B
model's FLOPs at this geometry).

What is measured. For LLaVA-OneVision ONE engine serves ONE model (the plugin architecture
``EarlyTomLlavaOnevisionForConditionalGeneration``, started with the server-wide ``trace`` setting
on so the model times each video) and every method is chosen per request with
``mm_processor_kwargs={"earlytom": {"method": ..., "retain_ratio": ...}}``: ``none`` (all
``T x tokens per frame`` tokens; the model's count, 196 for LLaVA-OV at 384 px), ``post_encoder``
(full encoder, then the same budget by received attention at the last layer), ``evs`` (full
encoder, then the tokens most different from the previous frame) and ``earlytom`` (frames merge
inside the encoder after the family's serving default prune layers, with its tau, max_window and
ema). Two further EarlyTom rows use the paper's other published prune layers,
(4, 14, 24) and (6, 14, 20) with the same tau / max_window; they are labelled as such and are NOT
the serving default (``--extra-prune-layers ''`` drops them). TTFT is one ``LLM.generate`` with
``max_tokens=1``: the request's ``first_token_latency`` from vLLM's per-request metrics (arrival to
first token, so the multimodal preprocessing is included), or the wall time of the call when the
metrics are missing (both are recorded).

Breakdown of each TTFT (seconds; the four parts add up to the TTFT):

* ``frontend``: preprocessing before the request reaches the engine core (the HF video processor:
  resize + normalise, tokenisation, placeholder expansion, plan) = TTFT - engine time. For
  reference the HF video processor alone is also timed on the same video (``hf_video_processor``).
* ``vision``: vision encoding = patch embedding + the SigLIP layers (+ Stage I for EarlyTom),
  the trace's ``encoder_seconds`` (read with ``LLM.apply_model(last_trace)``).
* ``tokens``: visual-token processing = projector + 2x2 pooling + selection (``tokens_seconds``).
* ``prefill``: LLM prefill + scheduling + sampling = engine time (queued -> first token) - vision -
  tokens. ``prefill_and_rest`` = TTFT - vision - tokens (= prefill + frontend) is recorded too.

Engines run in-process, each in a worker process of its own (``Engines``: started one after
another, driven over a pipe, so a request's CPU time is measured inside the engine's process).

Fairness and caching. Each timed run uses a fresh synthetic video (same generator, seed
``--seed + run``) and ALL methods get that same video, so no method meets an easier one. vLLM's
encoder cache and prefix cache would otherwise reuse the embeddings of an identical
video+kwargs request and skip the encoder: prefix caching and the processor cache are off
(``enable_prefix_caching=False``, ``mm_processor_cache_gb=0``) and the trace is cleared before
every request and must be fresh after it (an error otherwise). Methods run round-robin within a
run, in a fresh seeded shuffle each run (no cell always follows the same one: the allocator
state a request leaves behind affects the next, see ``keep_heap_warm``), so drift hits all alike; the
summaries are medians (min / max kept), and ratios are given as ratio of medians (the headline),
as the median of per-run paired ratios, and as ratio of minima.

Contention. The machine may be shared with other jobs. Per sample the script records
``os.getloadavg()``, the cores that OTHER processes used during the request (``foreign_cpu_cores``,
from :func:`benchmarks.harness.cpu_since`: the machine's busy cores minus this process tree's) and
this process's CPU time (``process_cpu_seconds``; the engine runs in-process, so this is all of
its threads). By default the engine runs ONE torch/OpenMP thread on CPU (``--threads 1``): a
single thread never spins at a barrier waiting for a preempted sibling, so its CPU time is the
work the request did, i.e. close to the TTFT the same request has on an idle core. Ratios of CPU
time (``cpu_time_medians``) are therefore reported next to the wall-clock ratios as the
contention-robust figure; targets record both (``met`` on wall-clock medians, ``met_by_cpu_time``).
``--max-foreign-cpu X --retries N`` re-measures (with a 1-pixel-perturbed copy of the video, so no
cache hit) samples during which other processes used more than X cores (off by default: under
persistent load it only wastes time); discarded attempts are kept in the JSON.

Videos: ``scene`` and ``motion`` of :func:`benchmarks.harness.synthetic_video` (static scenes with
hard cuts, the redundant case EarlyTom is built for; a fast pan with little to merge) at the
family's benchmark video size.

The CPU benchmark model is the family's ``checkpoint.bench_sizes`` (random weights at the real
geometry, narrow widths, sized so that with full tokens the vision encoder takes about the paper's
share of the TTFT; the share measured is ``vision_share_none`` in the results file). 32 frames,
7 timed runs + 1 warm-up round by default. ``--quick`` uses the tiny checkpoint, 8 frames, 1 run,
no warm-up: it checks the plumbing only. How long a run takes here: ``benchmarks/README.md``.

Every family fact (prompt, video size and fps, ratios, arms, extra prune layers, targets, the
paper's figures) is the family's benchmark spec in :mod:`earlytom_vllm.families`; ``--family``
takes any registered family.

Targets (LLaVA-OneVision: the paper's 10 % row, LLaVA-OV-7B on an A100): at r = 0.10 EarlyTom's
TTFT at least 2.65x lower than full tokens (889.9 / 336.2) and at least 1.3x lower than the
post-encoder baselines (post_encoder, evs). They are checked honestly per video and a miss carries the measured
figure and an analysis from ``frames_per_layer`` (the share of encoder frame-layers EarlyTom still
runs bounds what it can save over a baseline with the same token budget).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.harness import families
from benchmarks.harness.arms import PLUGIN, build_cells, check_arms, family_arms, request_kwargs
from benchmarks.harness.engines import (
    Engines,
    clear_trace,
    engine_machine_info,
    engine_specs,
    read_trace,
)
from benchmarks.harness.plots import plot_ttft
from benchmarks.harness.tables import print_ttft
from benchmarks.harness.ttft_summary import (
    check_targets,
    speedups,
    stats,
    summarize_cell,
    ttft_targets,
    vision_share,
)
from earlytom_vllm.families import Family

VIDEOS = ("scene", "motion")


# --------------------------------------------------------------------------------------------------
# One timed request


def time_request(llm, sampling, prompt: str, video, cell: dict[str, Any]) -> dict[str, Any]:
    llm.apply_model(clear_trace)
    load = harness.loadavg()
    mark = harness.cpu_mark()
    request: dict[str, Any] = {"prompt": prompt, "multi_modal_data": {"video": video}}
    if (kwargs := request_kwargs(cell)) is not None:
        request["mm_processor_kwargs"] = kwargs
    t0 = time.perf_counter()
    out = llm.generate(request, sampling, use_tqdm=False)[0]
    wall = time.perf_counter() - t0
    cpu = harness.cpu_since(mark)
    trace = llm.apply_model(read_trace)[0]
    if not trace or "encoder_seconds" not in trace:
        raise RuntimeError(f"{cell['label']}: no fresh encoder trace (encoder cache hit?)")
    if trace["method"] != cell["method"]:
        raise RuntimeError(f"{cell['label']}: trace is for method {trace['method']!r}")
    m = out.metrics
    ttft_metric = float(getattr(m, "first_token_latency", 0.0) or 0.0) if m is not None else 0.0
    engine = None
    if m is not None and getattr(m, "first_token_ts", 0.0) and getattr(m, "queued_ts", 0.0):
        engine = float(m.first_token_ts - m.queued_ts)
    ttft = ttft_metric if ttft_metric > 0 else wall
    vision, tokens = float(trace["encoder_seconds"]), float(trace["tokens_seconds"])
    if engine is None or not 0 < engine <= ttft:
        engine = ttft  # no usable engine timestamps: frontend folded into prefill
    fpl = [int(f) for f in trace["frames_per_layer"]]
    return {
        "ttft": ttft, "wall": wall, "ttft_metric": ttft_metric or None,
        "engine": engine, "frontend": ttft - engine, "vision": vision, "tokens": tokens,
        "prefill": engine - vision - tokens, "prefill_and_rest": ttft - vision - tokens,
        "prompt_tokens": len(out.prompt_token_ids), "rows": int(trace["rows"]),
        "frames_per_layer": fpl, "loadavg_1m": load[0] if load else None,
        "foreign_cpu_cores": cpu["foreign_cores"], "process_cpu_seconds": cpu["our_cpu_seconds"],
    }


def perturbed(video, k: int):
    """The same video with one pixel's low bits flipped: a new content hash (no cache hit), the
    same content for every practical purpose. Used for re-measuring a contended sample."""
    v = video.copy()
    v[0, 0, 0, 0] ^= k
    return v


def measure(llm, sampling, fam: Family, video, cell: dict[str, Any],
            max_foreign: float | None, retries: int
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One accepted sample (re-measured up to ``retries`` times while other processes used more
    than ``max_foreign`` cores during it) and the discarded attempts. ``video``: the frames,
    passed with their sampling metadata (the processors that need it read it; vLLM drops it for
    the others). An engine process's job (:class:`benchmarks.harness.engines.Engines`)."""
    from earlytom_vllm.synthetic import with_metadata

    discarded: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        frames = video if attempt == 0 else perturbed(video, attempt)
        s = time_request(llm, sampling, fam.benchmark.prompt,
                         with_metadata(frames, fam.benchmark.video_fps), cell)
        s["attempt"] = attempt
        fc = s["foreign_cpu_cores"]
        s["contended"] = bool(max_foreign is not None and fc is not None and fc > max_foreign)
        if not s["contended"] or attempt == retries:
            return s, discarded
        discarded.append(s)
    raise AssertionError("unreachable")


def time_hf_video_processor(processor, video) -> float:
    t0 = time.perf_counter()
    processor.video_processor(videos=[video], return_tensors="pt")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    families.add_family_arg(p)
    p.add_argument("--model", default=None,
                   help="checkpoint path or HF id (default: build the family's CPU benchmark "
                        "checkpoint)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", default=None,
                   help="engine dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--checkpoint-sizes", default=None,
                   help="JSON object overriding the built checkpoint's sizes (probing only)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--ratios", default=None, help="default: the family's ttft_ratios")
    p.add_argument("--methods", default=None, help="default: the family's arms")
    p.add_argument("--extra-prune-layers", default=None,
                   help="';'-separated EarlyTom prune-layer sets reported as extra rows "
                        "('' for none; default: the family's extra_prune_layers)")
    p.add_argument("--videos", default=",".join(VIDEOS))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds over all cells")
    p.add_argument("--seed", type=int, default=1000, help="video seed of run 0 (run i: seed+i)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU only: torch/OpenMP threads of the engine (OMP_NUM_THREADS); 1 keeps "
                        "the per-request process CPU time a clean measure of the work done")
    p.add_argument("--no-warm-heap", action="store_true",
                   help="CPU only: leave glibc malloc's defaults (see keep_heap_warm)")
    p.add_argument("--max-foreign-cpu", type=float, default=0.0,
                   help="re-measure a sample when other processes used more than this many "
                        "cores on average during it (0: never)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-measurements per contended sample (the last one is kept, flagged)")
    p.add_argument("--quick", action="store_true",
                   help="tiny checkpoint, 8 frames, 1 run, no warm-up (smoke test)")
    p.add_argument("--json", type=Path, default=None,
                   help="default: results/ttft.json (results/ttft_<family>.json for others)")
    p.add_argument("--plot", default=None, help="PNG path ('' to skip; default beside --json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.runs, args.warmup, args.retries = 8, 1, 0, 0
    fam = args.fam = families.get(args.family)
    harness.resolve_outputs(args, "ttft", fam)
    spec = fam.benchmark
    if args.ratios is None:
        args.ratios = ",".join(str(r) for r in spec.ttft_ratios)
    args.methods = ",".join(family_arms(fam)) if args.methods is None else args.methods
    if args.extra_prune_layers is None:
        args.extra_prune_layers = ";".join(",".join(map(str, x))
                                           for x in spec.extra_prune_layers)
    args.ratio_list = [float(x) for x in args.ratios.split(",") if x.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.video_list = [v.strip() for v in args.videos.split(",") if v.strip()]
    args.extra_list = [tuple(int(x) for x in s.split(",")) for s in
                       args.extra_prune_layers.split(";") if s.strip()]
    if (why := check_arms(args.method_list, fam)) is not None:
        p.error(why)
    for v in args.video_list:
        if v not in VIDEOS:
            p.error(f"unknown video {v!r} (known: {', '.join(VIDEOS)})")
    if args.runs < 1 or args.warmup < 0 or args.frames < 1 or args.retries < 0:
        p.error("--runs >= 1, --warmup >= 0, --retries >= 0 and --frames >= 1 are required")
    if args.model and args.checkpoint_sizes:
        p.error("--checkpoint-sizes only applies to the built checkpoint (no --model)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    fam = args.fam
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    serving = fam.defaults  # the family's serving default EarlyTom setting

    sizes = None
    if args.model:
        model = model_desc = args.model
    else:
        sizes = families.sizes(fam, quick=args.quick)
        if args.checkpoint_sizes:
            sizes.update(json.loads(args.checkpoint_sizes))
        model, sizes = families.checkpoint(fam, sizes)
        model_desc = families.checkpoint_desc(fam, sizes)
    per_frame = families.model_tokens_per_frame(fam, model)
    units = fam.units(args.frames)

    from tqdm import tqdm
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    tok = processor.tokenizer
    text_tokens = len(tok(fam.benchmark.prompt, add_special_tokens=False).input_ids) - 1  # minus the video

    cells = build_cells(args.method_list, args.ratio_list, args.extra_list, serving.prune_layers)
    specs = engine_specs(cells, fam, args.frames, per_frame)
    opts = {"device": args.device, "threads": args.threads, "dtype": dtype,
            "warm_heap": args.device == "cpu" and not args.no_warm_heap, "frames": args.frames,
            "per_frame": per_frame,
            "default_ratio": args.ratio_list[-1] if args.ratio_list else 0.1}
    total = len(args.video_list) * len(cells) * (args.warmup + args.runs)
    load_start = harness.loadavg()

    def video(kind: str, seed: int):
        return harness.synthetic_video(kind, args.frames, size=fam.benchmark.video_size,
                                       seed=seed)

    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {c["label"]: [] for c in cells} for v in args.video_list}
    discarded: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {c["label"]: [] for c in cells} for v in args.video_list}
    max_foreign = args.max_foreign_cpu if args.max_foreign_cpu > 0 else None
    hf_proc: dict[str, list[float]] = {v: [] for v in args.video_list}
    seeds = [args.seed + i for i in range(args.runs)]
    with Engines(model, fam.name, specs, opts, measure) as engines:
        bar = tqdm(total=total, desc="ttft", unit="req", disable=args.no_progress,
                   file=sys.stderr)
        # Warm-up: every cell on its own videos (seeds below the timed ones), untimed.
        for w in range(args.warmup):
            for vname in args.video_list:
                frames = video(vname, args.seed - 1 - w)
                for cell in cells:
                    bar.set_postfix_str(f"warm-up {vname} {cell['label']}")
                    engines.run(cell["engine"], frames, cell, None, 0)
                    bar.update()
        for run in range(args.runs):
            for vname in args.video_list:
                frames = video(vname, seeds[run])
                hf_proc[vname].append(time_hf_video_processor(processor, frames))
                order = list(cells)  # round-robin over cells AND engines, a fresh order each
                random.Random(args.seed * 7919 + run).shuffle(order)  # run: no fixed predecessor
                for cell in order:
                    bar.set_postfix_str(f"run {run} {vname} {cell['label']}")
                    s, dropped = engines.run(cell["engine"], frames, cell, max_foreign,
                                             args.retries)
                    for x in (s, *dropped):
                        x["run"], x["seed"] = run, seeds[run]
                    samples[vname][cell["label"]].append(s)
                    discarded[vname][cell["label"]].extend(dropped)
                    bar.update()
        bar.close()
        engine_info = engines.info
    load_end = harness.loadavg()

    targets = ttft_targets(fam)
    paper = dict(fam.benchmark.paper_ttft)
    videos: dict[str, dict[str, Any]] = {}
    for vname in args.video_list:
        vcells = {c["label"]: summarize_cell(c, samples[vname][c["label"]], fam, args.frames,
                                             per_frame, text_tokens,
                                             discarded[vname][c["label"]])
                  for c in cells}
        entry: dict[str, Any] = {
            "generator": "scene_video(num_scenes=3)" if vname == "scene" else
            "high_motion_video", "seeds": seeds,
            "hf_video_processor_seconds": stats(hf_proc[vname]),
            "cells": vcells, "speedups": speedups(vcells),
        }
        if "none" in vcells:
            entry["vision_share_none"] = vision_share(vcells["none"], targets["vision_share_band"],
                                                      paper.get("vision_share_none"))
        videos[vname] = entry

    plugin = engine_info.get(PLUGIN, next(iter(engine_info.values())))
    report: dict[str, Any] = {
        "benchmark": "ttft",
        "config": {
            "family": fam.name, "architecture": fam.architecture,
            "model": model, "model_desc": model_desc, "checkpoint_sizes": sizes,
            "device": args.device, "dtype": dtype, "frames": args.frames,
            "stage1_frames": units, "video_size": fam.benchmark.video_size,
            "ratios": args.ratio_list, "methods": args.method_list, "videos": args.video_list,
            "runs": args.runs, "warmup": args.warmup, "quick": args.quick, "seed": args.seed,
            "max_foreign_cpu_cores": max_foreign, "retries": args.retries,
            "threads": args.threads if args.device == "cpu" else None,
            "warm_heap": plugin["warm_heap"],
            "order": "shuffled per run (seeded), same for both videos",
            "prompt": fam.benchmark.prompt, "text_tokens": text_tokens,
            "tokens_per_frame": per_frame,
            "earlytom_default": {"prune_layers": list(serving.prune_layers), "tau": serving.tau,
                                 "max_window": serving.max_window, "ema": serving.ema},
            "extra_prune_layers": [list(x) for x in args.extra_list],
            "cells": [{k: c[k] for k in ("label", "method", "ratio", "prune_layers", "setting",
                                         "engine")} for c in cells],
            "engine": {"enable_prefix_caching": False, "mm_processor_cache_gb": 0,
                       "in_process": True, "max_tokens": 1,
                       "processes": "one worker process per engine, driven over a pipe",
                       "ttft_source": "RequestOutput.metrics.first_token_latency (wall fallback)"},
            "engines": engine_info,
            "engine_start_seconds": plugin["engine_start_seconds"],
            "targets": {"ratios": list(targets["ratios"]), "vs": targets["vs"],
                        "vision_share_band": list(targets["vision_share_band"])},
        },
        "machine": {**engine_machine_info(args.device),
                    "torch_threads_serving": plugin["torch_threads_serving"]},
        "load_average": {"start": load_start, "end": load_end},
        "videos": videos,
        "paper": paper,
    }
    report["targets"] = check_targets(videos, targets, units)
    report["targets_met"] = all(t["met"] for t in report["targets"]) if report["targets"] \
        else None

    harness.write_results(report, args.json, args.plot, plot_ttft)
    print_ttft(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
