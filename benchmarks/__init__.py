"""Benchmarks: exact FLOPs accounting (``flops``) and the compression-overhead micro-benchmark
(``compress_overhead``). Run them as ``python -m benchmarks.flops`` or ``python benchmarks/flops.py``
from the repository root; results land in ``benchmarks/results/``."""
