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
(``harness.Family.evs_rate``; 32 frames of 448 x 448 = 16 slices x 256 tokens: r = 0.15 -> 624
tokens, q = 0.847653; r = 0.10 -> 416, q = 0.898435). Every engine is up at once and the cells of
all engines are interleaved in one shuffled order per run. The stock model is timed from outside
(``install_stock_timer``: its video encoder and its EVS selection, instance attributes of that
engine's model); its ``vision`` includes the merger (the projector), which for EarlyTom is in
``tokens``. Targets: EarlyTom's TTFT >= 1.5x lower than EVS and >= 2x lower than full tokens, at
r = 0.15 and 0.10; the benchmark checkpoint (``QWEN_BENCHMARK_SIZES``) is sized for a 25.8% vision
share (the 7B model's FLOPs at this geometry).

What is measured. For LLaVA-OneVision ONE engine serves ONE model (the plugin architecture
``EarlyTomLlavaOnevisionForConditionalGeneration``, started with the server-wide ``trace`` setting
on so the model times each video) and every method is chosen per request with
``mm_processor_kwargs={"earlytom": {"method": ..., "retain_ratio": ...}}``: ``none`` (all
``T x tokens per frame`` tokens; the model's count, 196 for LLaVA-OV at 384 px), ``post_encoder``
(full encoder, then the same budget by received attention at the last layer), ``evs`` (full
encoder, then the tokens most different from the previous frame) and ``earlytom`` (frames merge
inside the encoder after the serving default prune layers of ``EarlyTomConfig``, with its tau,
max_window and ema). Two further EarlyTom rows use the paper's other published prune layers,
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
hard cuts, the redundant case EarlyTom is built for; a fast pan with little to merge), 384 px.

The CPU benchmark model is :data:`benchmarks.harness.BENCH_SIZES` (random weights at the real
geometry, narrow widths, sized so that with full tokens the vision encoder takes about the paper's
share of the TTFT; the share measured is ``vision_share_none`` in the results file). 32 frames,
7 timed runs + 1 warm-up round by default. ``--quick`` uses the tiny checkpoint, 8 frames, 1 run,
no warm-up: it checks the plumbing only. How long a run takes here: ``benchmarks/README.md``.

Targets (the paper's 10 % row, LLaVA-OV-7B on an A100): at r = 0.10 EarlyTom's TTFT at least
2.65x lower than full tokens (889.9 / 336.2) and at least 1.3x lower than the post-encoder
baselines (post_encoder, evs). They are checked honestly per video and a miss carries the measured
figure and an analysis from ``frames_per_layer`` (the share of encoder frame-layers EarlyTom still
runs bounds what it can save over a baseline with the same token budget).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness
from benchmarks.report import plot_ttft, print_ttft
from earlytom_vllm import EarlyTomConfig

#: vLLM's own EVS (``--video-pruning-rate q``): server-wide, so it runs on an engine of its own
#: (the stock architecture, same checkpoint) at the q whose kept count is EarlyTom's.
VLLM_EVS = "vllm_evs"
#: Methods per family, in table order. LLaVA-OneVision: the library's per-request methods (vLLM
#: has no EVS for it); Qwen2.5-VL: full tokens, vLLM's EVS and EarlyTom (issue 12).
FAMILY_METHODS = {"llava_onevision": harness.METHODS,
                  "qwen2_5_vl": ("none", VLLM_EVS, "earlytom")}
METHODS = tuple(dict.fromkeys(m for ms in FAMILY_METHODS.values() for m in ms))
FAMILY_RATIOS = {"llava_onevision": "0.25,0.10", "qwen2_5_vl": "0.15,0.10"}
VIDEOS = ("scene", "motion")
EXTRA_PRUNE_LAYERS = "4,14,24;6,14,20"  # the paper's other published settings (LLaVA-OV)
FAMILY_EXTRA = {"llava_onevision": EXTRA_PRUNE_LAYERS, "qwen2_5_vl": ""}

#: Targets per family (docs/method.md sections 6 and 7; the issue's for Qwen2.5-VL): EarlyTom's
#: TTFT ratio over each baseline at each ratio listed, and the band of the full-token vision share
#: the benchmark checkpoint is sized for (Qwen2.5-VL: 25.8% from the 7B model's FLOPs,
#: ``earlytom_vllm.checkpoints.QWEN_BENCHMARK_SIZES``).
TARGETS: dict[str, dict[str, Any]] = {
    "llava_onevision": {"ratios": (0.10,), "vs": {"none": 2.65, "post_encoder": 1.3, "evs": 1.3},
                        "vision_share_band": (0.30, 0.45)},
    "qwen2_5_vl": {"ratios": (0.15, 0.10), "vs": {"none": 2.0, VLLM_EVS: 1.5},
                   "vision_share_band": (0.21, 0.31)},
}
PAPER = {"llava_onevision": {
    "ttft_ms": {"none": 889.9, "earlytom@0.25": 426.3, "earlytom@0.10": 336.2},
    "breakdown_ms_at_0.10": {"none": [323, 63, 500], "earlytom": [239, 35, 58]},
    "vision_share_none": round(323 / 889.9, 3)}}

PARTS = ("frontend", "vision", "tokens", "prefill")


# --------------------------------------------------------------------------------------------------
# Cells: (method, ratio, prune layers) combinations, with stable labels


def cell_label(method: str, ratio: float | None, prune_layers: Sequence[int] | None) -> str:
    """``none``, ``evs@0.10``, ``earlytom@0.25``, ``earlytom[4,14,24]@0.10``."""
    if method == "none":
        return "none"
    tag = f"[{','.join(map(str, prune_layers))}]" if prune_layers else ""
    return f"{method}{tag}@{ratio:.2f}"


PLUGIN = "plugin"  # the engine of the per-request methods: the plugin architecture, trace on


def build_cells(methods: Sequence[str], ratios: Sequence[float],
                extra_prune_layers: Sequence[tuple[int, ...]],
                serving: EarlyTomConfig) -> list[dict[str, Any]]:
    """The cells to time; ``serving``: the family's serving default EarlyTom setting. A cell's
    ``engine`` names the engine that serves it (:data:`PLUGIN`, or ``vllm_evs@r`` for vLLM's
    EVS at the rate of ratio r)."""
    cells: list[dict[str, Any]] = []
    if "none" in methods:
        cells.append({"method": "none", "ratio": None, "prune_layers": None,
                      "setting": "full tokens"})
    for r in ratios:
        for m in methods:
            if m == "none":
                continue
            setting = {"earlytom": "serving default",
                       VLLM_EVS: "vLLM's own EVS (own engine, stock architecture)"}
            cells.append({"method": m, "ratio": r,
                          "prune_layers": list(serving.prune_layers) if m == "earlytom" else None,
                          "setting": setting.get(m, "baseline")})
        if "earlytom" in methods:
            for layers in extra_prune_layers:
                cells.append({"method": "earlytom", "ratio": r, "prune_layers": list(layers),
                              "setting": "paper's alternative prune layers (not the default)"})
    for c in cells:
        extra = c["setting"].startswith("paper")
        c["label"] = cell_label(c["method"], c["ratio"], c["prune_layers"] if extra else None)
        c["extra"] = extra
        c["engine"] = c["label"] if c["method"] == VLLM_EVS else PLUGIN
    return cells


def request_kwargs(cell: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``mm_processor_kwargs`` (None for vLLM's EVS: its engine is stock)."""
    if cell["method"] == VLLM_EVS:
        return None
    et: dict[str, Any] = {"method": cell["method"]}
    if cell["ratio"] is not None:
        et["retain_ratio"] = cell["ratio"]
    if cell["extra"]:
        et["prune_layers"] = list(cell["prune_layers"])
    return {"earlytom": et}


# --------------------------------------------------------------------------------------------------
# Machine and engine


def keep_heap_warm() -> bool:
    """glibc: never hand freed memory back to the OS and never ``mmap`` single allocations.

    Without this the encoder's large tensors (tens of MB) are ``mmap``-ed and unmapped per
    request, and whether glibc's adaptive thresholds serve them from an already-faulted heap
    depends on the PREVIOUS request's size: the same encoder is slower right after a small
    request than after a full-token one (page faults), a swing that follows the request order
    (measured: ``benchmarks/README.md``). A warm heap removes it (vLLM recommends tcmalloc on CPU
    for the same reason). Returns False where mallopt is unavailable.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(
            libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def machine_info(device: str) -> dict[str, Any]:
    import torch

    extra: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(), "device": device,
        "env": {k: os.environ.get(k) for k in (
            "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE",
            "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS")},
    }
    if device == "cuda" and torch.cuda.is_available():
        extra["gpu"] = torch.cuda.get_device_name(0)
        extra["cuda"] = torch.version.cuda
    return harness.machine_info(**extra)


def set_engine_env(device: str, threads: int | None = None) -> None:
    """Must run before torch and vLLM are imported."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: apply_model is direct
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def make_engine(model: str, fam: harness.Family, spec: dict[str, Any], *, device: str,
                dtype: str, frames: int, per_frame: int, default_ratio: float):
    """An in-process engine for one :func:`engine_specs` entry: the plugin architecture with the
    ``trace`` setting on (the model times each video), or the stock architecture with vLLM's
    EVS at ``spec["video_pruning_rate"]`` (timed by :func:`install_stock_timer`)."""
    from vllm import LLM

    rows = fam.expected_rows("none", None, frames, per_frame)
    max_len = max(2048, 1024 * math.ceil((rows + 512) / 1024))
    kwargs: dict[str, Any] = dict(
        model=model, dtype=dtype, max_model_len=max_len, max_num_batched_tokens=max_len,
        limit_mm_per_prompt={"video": 1}, seed=0, enable_prefix_caching=False,
        mm_processor_cache_gb=0, disable_log_stats=False,
    )
    if spec["video_pruning_rate"] is None:
        kwargs["hf_overrides"] = {"architectures": [fam.arch],
                                  "earlytom": {"retain_ratio": default_ratio,
                                               "max_frames": fam.units(frames), "trace": True}}
    else:
        kwargs["hf_overrides"] = {"architectures": [fam.stock_arch]}
        kwargs["video_pruning_rate"] = spec["video_pruning_rate"]
    if device == "cpu":
        kwargs["enforce_eager"] = True
    llm = LLM(**kwargs)
    if spec["video_pruning_rate"] is not None:
        llm.apply_model(install_stock_timer)
    return llm


def engine_specs(cells: Sequence[dict[str, Any]], fam: harness.Family, frames: int,
                 per_frame: int) -> dict[str, dict[str, Any]]:
    """One engine per server-wide setting the cells need: :data:`PLUGIN` (every per-request
    method) and one vLLM EVS engine per ratio (``video_pruning_rate`` from the shared harness:
    the q whose EVS count is EarlyTom's count at that ratio)."""
    specs: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["engine"] in specs:
            continue
        q = fam.evs_rate(frames, per_frame, c["ratio"]) if c["method"] == VLLM_EVS else None
        specs[c["engine"]] = {"name": c["engine"], "video_pruning_rate": q}
    return specs


def _sync(x: Any) -> None:
    import torch

    t = x[0] if isinstance(x, (list, tuple)) else x
    if isinstance(t, torch.Tensor) and t.is_cuda:
        torch.cuda.synchronize(t.device)


def install_stock_timer(model: Any) -> None:
    """Benchmark only (applied to one engine's model with ``LLM.apply_model``): time the stock
    model's video encoder (``_process_video_input``: patch embedding, blocks, merger) and vLLM's
    EVS selection (``_postprocess_video_embeds_evs``: retention mask, positions), one device
    sync each, into ``model.bench_last`` in the trace's vocabulary. The wrappers are instance
    attributes of this model: no class or module is patched."""
    encode, select = model._process_video_input, model._postprocess_video_embeds_evs
    depth = len(model.visual.blocks)

    def timed_encode(video_input):
        t0 = time.perf_counter()
        out = encode(video_input)
        _sync(out)
        slices = int(video_input["video_grid_thw"][:, 0].sum())
        model.bench_last = {"encoder_seconds": time.perf_counter() - t0, "tokens_seconds": 0.0,
                            "frames_per_layer": [slices] * depth, "method": "none",
                            "rows": sum(int(e.shape[0]) for e in out)}
        return out

    def timed_select(embeds, video_input):
        t0 = time.perf_counter()
        out = select(embeds, video_input)
        _sync(out)
        model.bench_last.update(tokens_seconds=time.perf_counter() - t0, method=VLLM_EVS,
                                rows=sum(int(e.shape[0]) for e in out))
        return out

    model._process_video_input, model._postprocess_video_embeds_evs = timed_encode, timed_select


def _clear_trace(model: Any) -> None:
    model.earlytom_last = {}
    model.bench_last = {}


def read_trace(model: Any) -> dict[str, Any]:
    """The last video's trace: the plugin model's own, or :func:`install_stock_timer`'s."""
    from earlytom_vllm.vllm.observe import last_trace

    return dict(getattr(model, "bench_last", None) or last_trace(model))


# --------------------------------------------------------------------------------------------------
# One timed request


def time_request(llm, sampling, prompt: str, video, cell: dict[str, Any]) -> dict[str, Any]:
    llm.apply_model(_clear_trace)
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


def video_item(fam: harness.Family, frames):
    """What ``multi_modal_data["video"]`` takes for this family: the frames, with the sampling
    metadata Qwen2.5-VL's processor needs (its time positions and EVS use it)."""
    if fam.name == "qwen2_5_vl":
        from earlytom_vllm.synthetic import with_metadata

        return with_metadata(frames, fam.video_fps)
    return frames


def measure(llm, sampling, fam: harness.Family, video, cell: dict[str, Any], *,
            max_foreign: float | None, retries: int
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One accepted sample (re-measured up to ``retries`` times while other processes used more
    than ``max_foreign`` cores during it) and the discarded attempts. ``video``: the frames."""
    discarded: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        frames = video if attempt == 0 else perturbed(video, attempt)
        s = time_request(llm, sampling, fam.prompt, video_item(fam, frames), cell)
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
# Engine processes: each engine runs in-process in a worker process of its own (several engines
# cannot share one process), driven over a pipe; the CPU it uses is measured inside it.


def _engine_worker(conn, model: str, family: str, spec: dict[str, Any],
                   opts: dict[str, Any]) -> None:
    """Worker main: build the engine, answer ``("ready", info)``, then for each
    ``(frames, cell, max_foreign, retries)`` answer ``("ok", (sample, discarded))`` or
    ``("error", traceback)``; ``None`` stops it."""
    try:
        set_engine_env(opts["device"], opts["threads"])
        warm = keep_heap_warm() if opts["warm_heap"] else False
        fam = harness.FAMILIES[family]
        from vllm import SamplingParams

        t0 = time.perf_counter()
        llm = make_engine(model, fam, spec, device=opts["device"], dtype=opts["dtype"],
                          frames=opts["frames"], per_frame=opts["per_frame"],
                          default_ratio=opts["default_ratio"])
        import torch

        conn.send(("ready", {"engine_start_seconds": time.perf_counter() - t0,
                             "torch_threads_serving": torch.get_num_threads(),
                             "warm_heap": warm, "pid": os.getpid()}))
        sampling = SamplingParams(max_tokens=1, temperature=0.0)
        while (job := conn.recv()) is not None:
            frames, cell, max_foreign, retries = job
            try:
                conn.send(("ok", measure(llm, sampling, fam, frames, cell,
                                         max_foreign=max_foreign, retries=retries)))
            except Exception:  # reported to the controller, which stops
                conn.send(("error", traceback.format_exc()))
    except Exception:  # a start-up failure
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Engines:
    """The engine processes of one run, by :func:`engine_specs` name; started one after another
    (so start-up never competes with a measurement), stopped on exit."""

    def __init__(self, model: str, family: str, specs: dict[str, dict[str, Any]],
                 opts: dict[str, Any]) -> None:
        self.model, self.family, self.specs, self.opts = model, family, specs, opts
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Engines:
        ctx = multiprocessing.get_context("spawn")
        try:
            for name, spec in self.specs.items():
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_engine_worker, name=f"ttft-{name}", daemon=True,
                                   args=(child, self.model, self.family, spec, self.opts))
                proc.start()
                child.close()
                self.procs[name], self.conns[name] = proc, parent
                self.info[name] = {**spec, **self._answer(name)}
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _answer(self, name: str) -> Any:
        try:
            kind, payload = self.conns[name].recv()
        except EOFError:
            raise RuntimeError(f"engine {name} exited (code {self.procs[name].exitcode})") \
                from None
        if kind == "error":
            raise RuntimeError(f"engine {name} failed:\n{payload}")
        return payload

    def measure(self, video, cell: dict[str, Any], *, max_foreign: float | None,
                retries: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.conns[cell["engine"]].send((video, cell, max_foreign, retries))
        return self._answer(cell["engine"])

    def __exit__(self, *exc: object) -> None:
        for name, conn in self.conns.items():
            with contextlib.suppress(OSError):
                conn.send(None)
            self.procs[name].join(timeout=60)
            if self.procs[name].is_alive():
                self.procs[name].kill()
                self.procs[name].join()


# --------------------------------------------------------------------------------------------------
# Summaries


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values)}


def frames_summary(samples: Sequence[dict[str, Any]], prune_layers: Sequence[int] | None,
                   frames: int) -> dict[str, Any]:
    per_run = [s["frames_per_layer"] for s in samples]
    depth = len(per_run[0])
    median_fpl = [statistics.median(f[i] for f in per_run) for i in range(depth)]
    mean_frames = [statistics.fmean(f) for f in per_run]
    after = None
    if prune_layers:
        after = {str(p): [f[p + 1] if p + 1 < depth else None for f in per_run]
                 for p in prune_layers}
    return {
        "frames_per_layer_median": median_fpl,
        "mean_encoder_frames": statistics.median(mean_frames),
        "mean_encoder_frames_per_run": mean_frames,
        "encoder_frame_layer_fraction": statistics.median(mean_frames) / frames,
        "frames_after_prune_layer": after,
        "final_frames": [f[-1] for f in per_run],
    }


def cell_rows(fam: harness.Family, cell: dict[str, Any], frames: int, per_frame: int) -> int:
    """Visual tokens of a cell's video: the library's count, or vLLM's EVS count at its rate."""
    if cell["method"] == VLLM_EVS:
        q = fam.evs_rate(frames, per_frame, cell["ratio"])
        return harness.evs_tokens(fam.units(frames) * per_frame, per_frame, q)
    return fam.expected_rows(cell["method"], cell["ratio"], frames, per_frame)


def summarize_cell(cell: dict[str, Any], samples: list[dict[str, Any]], fam: harness.Family,
                   frames: int, per_frame: int, text_tokens: int,
                   discarded: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    keys = ("ttft", "wall", "engine", "frontend", "vision", "tokens", "prefill",
            "prefill_and_rest", "foreign_cpu_cores", "process_cpu_seconds")
    summary = {k: _stats([s[k] for s in samples]) for k in keys
               if all(s.get(k) is not None for s in samples)}
    prompt = sorted({s["prompt_tokens"] for s in samples})
    rows = cell_rows(fam, cell, frames, per_frame)
    return {
        **{k: cell[k] for k in ("label", "method", "ratio", "prune_layers", "setting", "extra")},
        "samples": samples,
        "discarded_contended_samples": discarded or [],
        "contended_samples_kept": sum(bool(s.get("contended")) for s in samples),
        "summary_seconds": summary,
        "breakdown_median_seconds": {p: summary[p]["median"] for p in PARTS},
        "prompt_tokens": prompt[0] if len(prompt) == 1 else prompt,
        "expected_prompt_tokens": text_tokens + rows,
        "video_rows": rows,
        "prompt_tokens_ok": prompt == [text_tokens + rows],
        "frames": frames_summary(samples, cell["prune_layers"], fam.units(frames)),
    }


def _paired(num: list[dict[str, Any]], den: list[dict[str, Any]]) -> float:
    by_run = {s["run"]: s["ttft"] for s in den}
    ratios = [s["ttft"] / by_run[s["run"]] for s in num if s["run"] in by_run]
    return statistics.median(ratios) if ratios else float("nan")


def speedups(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per compressed cell: TTFT(baseline) / TTFT(cell) for each baseline at the same ratio
    (every method of the run but EarlyTom is a baseline)."""
    out: dict[str, dict[str, Any]] = {}
    present = {c["method"] for c in cells.values()}
    baselines = [m for m in METHODS if m != "earlytom" and m in present]
    for label, c in cells.items():
        if c["method"] == "none":
            continue
        entry: dict[str, Any] = {}
        for base in baselines:
            if base == c["method"]:
                continue
            blabel = "none" if base == "none" else cell_label(base, c["ratio"], None)
            if blabel not in cells:
                continue
            b = cells[blabel]
            entry[f"vs_{base}"] = {
                "from_medians": b["summary_seconds"]["ttft"]["median"]
                / c["summary_seconds"]["ttft"]["median"],
                "paired_median": _paired(b["samples"], c["samples"]),
                "from_minima": b["summary_seconds"]["ttft"]["min"]
                / c["summary_seconds"]["ttft"]["min"],
            }
            if "process_cpu_seconds" in b["summary_seconds"] and \
                    "process_cpu_seconds" in c["summary_seconds"]:
                entry[f"vs_{base}"]["cpu_time_medians"] = (
                    b["summary_seconds"]["process_cpu_seconds"]["median"]
                    / c["summary_seconds"]["process_cpu_seconds"]["median"])
        out[label] = entry
    return out


def vision_share(none_cell: dict[str, Any], band: Sequence[float],
                 paper: float | None) -> dict[str, Any]:
    s = none_cell["summary_seconds"]
    ttft = s["ttft"]["median"]
    per_run = [x["vision"] / x["ttft"] for x in none_cell["samples"]]
    share = statistics.median(per_run)
    lo, hi = band
    return {
        "vision_encoding_share": share,
        "vision_plus_tokens_share": statistics.median(
            [(x["vision"] + x["tokens"]) / x["ttft"] for x in none_cell["samples"]]),
        "from_medians": s["vision"]["median"] / ttft,
        "band": [lo, hi], "in_band": lo <= share <= hi,
        "paper": paper,
    }


def miss_reason(et: dict[str, Any], base: dict[str, Any], base_name: str, frames: int) -> str:
    """Why EarlyTom's TTFT ratio over ``base`` is what it is, from frames_per_layer and timings."""
    se, sb = et["summary_seconds"], base["summary_seconds"]
    frac = et["frames"]["encoder_frame_layer_fraction"]
    mean_frames = et["frames"]["mean_encoder_frames"]
    after = et["frames"]["frames_after_prune_layer"] or {}
    after_txt = ", ".join(f"after layer {p}: {statistics.median(v):.0f}"
                          for p, v in after.items() if v and v[0] is not None)
    vis_b, vis_e = sb["vision"]["median"], se["vision"]["median"]
    tok_b, tok_e = sb["tokens"]["median"], se["tokens"]["median"]
    ttft_b = sb["ttft"]["median"]
    # Bound: keep the baseline's TTFT but shrink its encoder to EarlyTom's frame-layer fraction
    # and its token processing to EarlyTom's (prefill and frontend unchanged).
    ideal = ttft_b / max(ttft_b - vis_b * (1 - frac) - max(tok_b - tok_e, 0.0), 1e-9)
    txt = (f"EarlyTom still runs {frac:.0%} of the encoder's frame-layers "
           f"({mean_frames:.1f} of {frames} frames per layer on average; {after_txt}); its "
           f"vision encoding took {vis_e:.2f}s vs {vis_b:.2f}s for {base_name} "
           f"({vis_e / vis_b:.0%}; the {vis_e / vis_b - frac:+.0%} above the frame-layer share is "
           f"Stage I and the eager received-attention layer), token processing {tok_e:.2f}s vs "
           f"{tok_b:.2f}s. ")
    if base_name == "none":
        txt += (f"Full tokens spend {sb['prefill']['median']:.2f}s in LLM prefill, EarlyTom "
                f"{se['prefill']['median']:.2f}s; EarlyTom's remaining encoder time "
                f"({vis_e / se['ttft']['median']:.0%} of its TTFT) caps the speedup.")
    else:
        txt += (f"With the same token budget the prefill is equal, so only the encoder and token "
                f"processing can differ: even with zero Stage I overhead the ratio is bounded by "
                f"~{ideal:.2f}x here (the vision encoder is {vis_b / ttft_b:.0%} of "
                f"{base_name}'s TTFT). Merging more frames earlier (earlier prune layers) "
                f"lowers the frame-layer share.")
    return txt


def check_targets(videos: dict[str, dict[str, Any]], targets: dict[str, Any],
                  units: int) -> list[dict[str, Any]]:
    """``targets``: a :data:`TARGETS` entry; ``units``: Stage-I frames per video."""
    out = []
    lo, hi = targets["vision_share_band"]
    for vname, v in videos.items():
        cells = v["cells"]
        for ratio in targets["ratios"]:
            et_label = cell_label("earlytom", ratio, None)
            if et_label not in cells:
                continue
            et = cells[et_label]
            for base, need in targets["vs"].items():
                blabel = "none" if base == "none" else cell_label(base, ratio, None)
                if blabel not in cells:
                    continue
                r = v["speedups"][et_label][f"vs_{base}"]
                measured = r["from_medians"]
                met = measured >= need
                out.append({
                    "video": vname, "name": f"earlytom@{ratio:.2f} vs {base}",
                    "required": need, "measured_from_medians": measured,
                    "measured_paired_median": r["paired_median"],
                    "measured_from_minima": r["from_minima"],
                    "measured_cpu_time": r.get("cpu_time_medians"), "met": met,
                    "met_by_cpu_time": None if r.get("cpu_time_medians") is None
                    else r["cpu_time_medians"] >= need,
                    "reason": None if met else miss_reason(et, cells[blabel], base, units),
                })
        if "none" in cells:
            vs = v["vision_share_none"]
            share = vs["vision_encoding_share"]
            out.append({
                "video": vname, "name": "vision encoding share of TTFT, full tokens",
                "required": [lo, hi], "measured_from_medians": share, "met": vs["in_band"],
                "reason": None if vs["in_band"] else (
                    f"with full tokens the vision encoder takes {share:.0%} of TTFT on this "
                    f"model and machine: the LLM is {'too light' if share > hi else 'too heavy'}"
                    " relative to the encoder (only the default CPU benchmark checkpoint at 32"
                    " frames is sized for the band)"),
            })
    return out


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=tuple(harness.FAMILIES), default="llava_onevision",
                   help="model family: its plugin architecture, prompt, video size, methods, "
                        "ratios and targets (qwen2_5_vl: full tokens, vLLM's EVS on an engine of "
                        "its own per ratio, EarlyTom; r = 0.15, 0.10)")
    p.add_argument("--model", default=None,
                   help="checkpoint path or HF id (default: build the family's CPU benchmark "
                        "checkpoint)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", default=None,
                   help="engine dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--checkpoint-sizes", default=None,
                   help="JSON object overriding the built checkpoint's sizes (probing only)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--ratios", default=None, help="default: the family's (FAMILY_RATIOS)")
    p.add_argument("--methods", default=None, help="default: the family's (FAMILY_METHODS)")
    p.add_argument("--extra-prune-layers", default=None,
                   help="';'-separated EarlyTom prune-layer sets reported as extra rows "
                        "('' for none; default: the paper's alternatives for LLaVA-OV)")
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
    p.add_argument("--json", default=None,
                   help="default: results/ttft.json (results/ttft_<family>.json for others)")
    p.add_argument("--plot", default=None, help="PNG path ('' to skip; default beside --json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.runs, args.warmup, args.retries = 8, 1, 0, 0
    fam = args.family
    stem = "ttft" if fam == "llava_onevision" else f"ttft_{fam}"
    args.json = args.json if args.json is not None else str(harness.RESULTS / f"{stem}.json")
    if args.plot is None:
        args.plot = str(Path(args.json).with_suffix(".png"))
    args.ratios = FAMILY_RATIOS[fam] if args.ratios is None else args.ratios
    args.methods = ",".join(FAMILY_METHODS[fam]) if args.methods is None else args.methods
    if args.extra_prune_layers is None:
        args.extra_prune_layers = FAMILY_EXTRA[fam]
    args.ratio_list = [float(x) for x in args.ratios.split(",") if x.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.video_list = [v.strip() for v in args.videos.split(",") if v.strip()]
    args.extra_list = [tuple(int(x) for x in s.split(",")) for s in
                       args.extra_prune_layers.split(";") if s.strip()]
    for m in args.method_list:
        if m not in FAMILY_METHODS[fam]:
            p.error(f"unknown method {m!r} for {fam} (known: {', '.join(FAMILY_METHODS[fam])})")
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
    fam = harness.FAMILIES[args.family]
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    serving = fam.defaults()  # the family's serving default EarlyTom setting

    sizes = None
    if args.model:
        model = model_desc = args.model
    else:
        sizes = harness.family_sizes(fam, quick=args.quick)
        if args.checkpoint_sizes:
            sizes.update(json.loads(args.checkpoint_sizes))
        model, sizes = fam.checkpoint(sizes)
        model_desc = fam.checkpoint_desc(sizes)
    per_frame = fam.model_tokens_per_frame(model)
    units = fam.units(args.frames)

    from tqdm import tqdm
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    tok = processor.tokenizer
    text_tokens = len(tok(fam.prompt, add_special_tokens=False).input_ids) - 1  # minus the video

    cells = build_cells(args.method_list, args.ratio_list, args.extra_list, serving)
    specs = engine_specs(cells, fam, args.frames, per_frame)
    opts = {"device": args.device, "threads": args.threads, "dtype": dtype,
            "warm_heap": args.device == "cpu" and not args.no_warm_heap, "frames": args.frames,
            "per_frame": per_frame,
            "default_ratio": args.ratio_list[-1] if args.ratio_list else 0.1}
    total = len(args.video_list) * len(cells) * (args.warmup + args.runs)
    load_start = harness.loadavg()

    def video(kind: str, seed: int):
        return harness.synthetic_video(kind, args.frames, size=fam.video_size, seed=seed)

    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {c["label"]: [] for c in cells} for v in args.video_list}
    discarded: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {c["label"]: [] for c in cells} for v in args.video_list}
    max_foreign = args.max_foreign_cpu if args.max_foreign_cpu > 0 else None
    hf_proc: dict[str, list[float]] = {v: [] for v in args.video_list}
    seeds = [args.seed + i for i in range(args.runs)]
    with Engines(model, fam.name, specs, opts) as engines:
        bar = tqdm(total=total, desc="ttft", unit="req", disable=args.no_progress,
                   file=sys.stderr)
        # Warm-up: every cell on its own videos (seeds below the timed ones), untimed.
        for w in range(args.warmup):
            for vname in args.video_list:
                frames = video(vname, args.seed - 1 - w)
                for cell in cells:
                    bar.set_postfix_str(f"warm-up {vname} {cell['label']}")
                    engines.measure(frames, cell, max_foreign=None, retries=0)
                    bar.update()
        for run in range(args.runs):
            for vname in args.video_list:
                frames = video(vname, seeds[run])
                hf_proc[vname].append(time_hf_video_processor(processor, frames))
                order = list(cells)  # round-robin over cells AND engines, a fresh order each
                random.Random(args.seed * 7919 + run).shuffle(order)  # run: no fixed predecessor
                for cell in order:
                    bar.set_postfix_str(f"run {run} {vname} {cell['label']}")
                    s, dropped = engines.measure(frames, cell, max_foreign=max_foreign,
                                                 retries=args.retries)
                    for x in (s, *dropped):
                        x["run"], x["seed"] = run, seeds[run]
                    samples[vname][cell["label"]].append(s)
                    discarded[vname][cell["label"]].extend(dropped)
                    bar.update()
        bar.close()
        engine_info = engines.info
    load_end = harness.loadavg()

    targets = TARGETS[fam.name]
    paper = PAPER.get(fam.name, {})
    videos: dict[str, dict[str, Any]] = {}
    for vname in args.video_list:
        vcells = {c["label"]: summarize_cell(c, samples[vname][c["label"]], fam, args.frames,
                                             per_frame, text_tokens,
                                             discarded[vname][c["label"]])
                  for c in cells}
        entry: dict[str, Any] = {
            "generator": "scene_video(num_scenes=3)" if vname == "scene" else
            "high_motion_video", "seeds": seeds,
            "hf_video_processor_seconds": _stats(hf_proc[vname]),
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
            "family": fam.name, "architecture": fam.arch,
            "model": model, "model_desc": model_desc, "checkpoint_sizes": sizes,
            "device": args.device, "dtype": dtype, "frames": args.frames,
            "stage1_frames": units, "video_size": fam.video_size,
            "ratios": args.ratio_list, "methods": args.method_list, "videos": args.video_list,
            "runs": args.runs, "warmup": args.warmup, "quick": args.quick, "seed": args.seed,
            "max_foreign_cpu_cores": max_foreign, "retries": args.retries,
            "threads": args.threads if args.device == "cpu" else None,
            "warm_heap": plugin["warm_heap"],
            "order": "shuffled per run (seeded), same for both videos",
            "prompt": fam.prompt, "text_tokens": text_tokens,
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
        "machine": {**machine_info(args.device),
                    "torch_threads_serving": plugin["torch_threads_serving"]},
        "load_average": {"start": load_start, "end": load_end},
        "videos": videos,
        "paper": paper,
    }
    report["targets"] = check_targets(videos, targets, units)
    report["targets_met"] = all(t["met"] for t in report["targets"]) if report["targets"] \
        else None

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if args.plot:
        plot_ttft(report, Path(args.plot))
    print_ttft(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
