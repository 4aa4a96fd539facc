"""The contract tests load the project's scripts (scripts/vllm_sources.py, scripts/vllm_contract.py)
and fetch the vLLM releases they check (once; cached, see scripts/vllm_sources.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import vllm_sources


@pytest.fixture(scope="session")
def release_trees() -> dict[str, Path]:
    """``{version: vllm package dir}`` for every pinned sdist (downloaded on first use)."""
    return {version: vllm_sources.fetch(version) for version in vllm_sources.SDISTS}


@pytest.fixture(scope="session")
def installed_tree() -> Path:
    return vllm_sources.installed_tree()
