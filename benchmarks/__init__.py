"""Benchmarks: FLOPs accounting (``flops``), compression overhead (``compress_overhead``), TTFT
(``ttft``), throughput through ``earlytom-serve`` (``throughput``) and the accuracy runs
(``accuracy``), on one shared harness (``harness``); ``report`` prints the README tables. Run each
as ``python -m benchmarks.<name>`` from the repository root (README.md); results land in
``benchmarks/results/``."""
