"""Fixtures for the core tests (pure torch, CPU)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The core tests use tiny tensors: intra-op threading only adds overhead (and contention on a
    shared 2-core machine). Restored after each test so other test packages are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
