"""What the benchmarks share, one module per concern; a benchmark imports this package, never
another benchmark.

* :mod:`~benchmarks.harness.families`: a family's facts as the benchmarks need them, from the
  family registry (:mod:`earlytom_vllm.families`): checkpoint, token counts, result files.
* :mod:`~benchmarks.harness.arms`: what is compared (the library's methods, vLLM's own pruning
  arms), TTFT cells and throughput arms.
* :mod:`~benchmarks.harness.video`: synthetic videos, mp4 files, hidden-state videos.
* :mod:`~benchmarks.harness.serve`, :mod:`~benchmarks.harness.client`,
  :mod:`~benchmarks.harness.counters`, :mod:`~benchmarks.harness.load`: an ``earlytom-serve``
  subprocess, one streamed request to it, its backends' cache counters, the load offered.
* :mod:`~benchmarks.harness.engines`: in-process vLLM engines in worker processes (TTFT).
* :mod:`~benchmarks.harness.machine`: machine facts and the CPU meter.
* :mod:`~benchmarks.harness.ttft_summary`, :mod:`~benchmarks.harness.throughput_summary`:
  statistics, speedups, targets; :mod:`~benchmarks.harness.tables`,
  :mod:`~benchmarks.harness.plots`, :mod:`~benchmarks.harness.results`: reporting.

The names most benchmarks use are re-exported here (``harness.loadavg()``). Nothing here imports
torch or vLLM at import time (the functions that need them import them).
"""

from benchmarks.harness.arms import METHODS, VLLM_ARMS, VLLM_EVS
from benchmarks.harness.client import RequestRecord, Streamed, stream_chat
from benchmarks.harness.machine import (
    CpuMark,
    cpu_mark,
    cpu_model,
    cpu_since,
    loadavg,
    machine_info,
)
from benchmarks.harness.plots import save_figure
from benchmarks.harness.results import (
    RESULTS,
    ROOT,
    add_output_args,
    resolve_outputs,
    write_results,
)
from benchmarks.harness.serve import (
    DEFAULT_API_KEY,
    Server,
    add_endpoint_args,
    backend_urls,
    batching_budget,
    launch_bench_server,
    launch_serve,
    served_model,
    vllm_arm_servers,
    wait_ready,
)
from benchmarks.harness.video import (
    VIDEO_KINDS,
    VideoFile,
    synthetic_hidden_states,
    synthetic_video,
    video_files,
    video_url,
    write_mp4,
)

__all__ = [
    "DEFAULT_API_KEY", "METHODS", "RESULTS", "ROOT", "VIDEO_KINDS", "VLLM_ARMS", "VLLM_EVS",
    "CpuMark", "RequestRecord", "Server", "Streamed", "VideoFile", "add_endpoint_args", "add_output_args", "backend_urls",
    "batching_budget", "cpu_mark", "cpu_model", "cpu_since", "launch_bench_server",
    "launch_serve", "loadavg", "machine_info", "resolve_outputs", "save_figure", "served_model",
    "stream_chat", "synthetic_hidden_states", "synthetic_video", "video_files", "video_url",
    "vllm_arm_servers",
    "wait_ready", "write_mp4", "write_results",
]
