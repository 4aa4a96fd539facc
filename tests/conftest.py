"""Shared fixtures: the tiny checkpoint (built once, cached) and the CPU engine environment.

Also the CI policy (``tests/ci_policy.py``): under ``CI`` a skipped test fails.
"""

from __future__ import annotations

import os

import pytest
from ci_policy import (  # noqa: F401 - pytest hooks, registered by being in this conftest
    pytest_configure,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)

# The real vLLM CPU engine, tuned for tests (see README "CPU environment"): a small KV cache,
# no thread pinning (2 cores), and never torch.compile.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_checkpoint():
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()
