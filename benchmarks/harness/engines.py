"""In-process vLLM engines for the TTFT benchmark, each in a worker process of its own (several
engines cannot share one process), driven over a pipe so that a request's CPU time is measured
inside the engine's process.

An engine is the plugin architecture with the server-wide ``trace`` setting on (the model times
each video), or a vLLM arm: the family's vLLM architecture with vLLM's own pruning (timed from
outside by :func:`install_stock_timer`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.harness import families
from benchmarks.harness.arms import VLLM_EVS, VLLM_METHOD
from benchmarks.harness.machine import machine_info
from earlytom_vllm.families import Family


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


def engine_machine_info(device: str) -> dict[str, Any]:
    """:func:`machine_info` with the engine's threads, device and environment."""
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
    return machine_info(**extra)


def set_engine_env(device: str, threads: int | None = None) -> None:
    """Must run before torch and vLLM are imported."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: apply_model is direct
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def make_engine(model: str, fam: Family, spec: dict[str, Any], *, device: str,
                dtype: str, frames: int, per_frame: int, default_ratio: float):
    """An in-process engine for one :func:`engine_specs` entry: the plugin architecture with the
    ``trace`` setting on (the model times each video), or the family's vLLM architecture with
    vLLM's EVS at ``spec["video_pruning_rate"]`` (timed by :func:`install_stock_timer`)."""
    from vllm import LLM

    rows = families.expected_rows(fam, "none", None, frames, per_frame)
    max_len = max(2048, 1024 * math.ceil((rows + 512) / 1024))
    kwargs: dict[str, Any] = dict(
        model=model, dtype=dtype, max_model_len=max_len, max_num_batched_tokens=max_len,
        limit_mm_per_prompt={"video": 1}, seed=0, enable_prefix_caching=False,
        mm_processor_cache_gb=0, disable_log_stats=False,
    )
    if spec["video_pruning_rate"] is None:
        kwargs["hf_overrides"] = {"architectures": [fam.architecture],
                                  "earlytom": {"retain_ratio": default_ratio,
                                               "max_frames": fam.units(frames), "trace": True}}
    else:
        kwargs["hf_overrides"] = {"architectures": [fam.base_architecture]}
        kwargs["video_pruning_rate"] = spec["video_pruning_rate"]
        kwargs["video_pruning_method"] = spec["video_pruning_method"]
    if device == "cpu":
        kwargs["enforce_eager"] = True
    llm = LLM(**kwargs)
    if spec["video_pruning_rate"] is not None:
        llm.apply_model(functools.partial(install_stock_timer, arm=spec["arm"]))
    return llm


def engine_specs(cells: Sequence[dict[str, Any]], fam: Family, frames: int,
                 per_frame: int) -> dict[str, dict[str, Any]]:
    """One engine per server-wide setting the cells need: :data:`PLUGIN` (every per-request
    method) and one engine per vLLM arm and ratio (``video_pruning_rate``: the q whose count
    under that arm's method is EarlyTom's count at that ratio)."""
    specs: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["engine"] in specs:
            continue
        method = VLLM_METHOD.get(c["method"])
        q = (families.vllm_pruning_rate(fam, frames, per_frame, c["ratio"], method)
             if method else None)
        specs[c["engine"]] = {"name": c["engine"], "arm": c["method"],
                              "video_pruning_rate": q, "video_pruning_method": method}
    return specs


def _sync(x: Any) -> None:
    import torch

    t = x[0] if isinstance(x, (list, tuple)) else x
    if isinstance(t, torch.Tensor) and t.is_cuda:
        torch.cuda.synchronize(t.device)


def install_stock_timer(model: Any, arm: str = VLLM_EVS) -> None:
    """Benchmark only (applied to one engine's model with ``LLM.apply_model``): time the stock
    model's video encoder (``_process_video_input``: patch embedding, blocks, merger) and vLLM's
    selection (``_postprocess_video_embeds_evs``, EVS's or VidCom2's retention mask and the
    positions; ``arm`` names which), one device
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
        model.bench_last.update(tokens_seconds=time.perf_counter() - t0, method=arm,
                                rows=sum(int(e.shape[0]) for e in out))
        return out

    model._process_video_input, model._postprocess_video_embeds_evs = timed_encode, timed_select


def clear_trace(model: Any) -> None:
    model.earlytom_last = {}
    model.bench_last = {}


def read_trace(model: Any) -> dict[str, Any]:
    """The last video's trace: the plugin model's own, or :func:`install_stock_timer`'s."""
    from earlytom_vllm.vllm.observe import last_trace

    return dict(getattr(model, "bench_last", None) or last_trace(model))


#: What an engine process runs per job: ``job(llm, sampling, family, *args)`` (a module-level
#: function: it travels to the spawned process by name).
Job = Callable[..., Any]


def _engine_worker(conn, model: str, family: str, spec: dict[str, Any],
                   opts: dict[str, Any], job: Job) -> None:
    """Worker main: build the engine, answer ``("ready", info)``, then for each ``args`` answer
    ``("ok", job(llm, sampling, family, *args))`` or ``("error", traceback)``; ``None`` stops
    it."""
    try:
        set_engine_env(opts["device"], opts["threads"])
        warm = keep_heap_warm() if opts["warm_heap"] else False
        fam = families.get(family)
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
        while (args := conn.recv()) is not None:
            try:
                conn.send(("ok", job(llm, sampling, fam, *args)))
            except Exception:  # reported to the controller, which stops
                conn.send(("error", traceback.format_exc()))
    except Exception:  # a start-up failure
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Engines:
    """The engine processes of one run, by :func:`engine_specs` name; started one after another
    (so start-up never competes with a measurement), stopped on exit. Each runs ``job``."""

    def __init__(self, model: str, family: str, specs: dict[str, dict[str, Any]],
                 opts: dict[str, Any], job: Job) -> None:
        self.model, self.family, self.specs, self.opts = model, family, specs, opts
        self.job = job
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Engines:
        ctx = multiprocessing.get_context("spawn")
        try:
            for name, spec in self.specs.items():
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_engine_worker, name=f"ttft-{name}", daemon=True,
                                   args=(child, self.model, self.family, spec, self.opts,
                                         self.job))
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

    def run(self, engine: str, *args: Any) -> Any:
        """``job(llm, sampling, family, *args)`` on ``engine``, its result."""
        self.conns[engine].send(args)
        return self._answer(engine)

    def __exit__(self, *exc: object) -> None:
        for name, conn in self.conns.items():
            with contextlib.suppress(OSError):
                conn.send(None)
            self.procs[name].join(timeout=60)
            if self.procs[name].is_alive():
                self.procs[name].kill()
                self.procs[name].join()


