"""One in-process EarlyTom engine for the whole session (the real vLLM CPU engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARCH = "EarlyTomLlavaOnevisionForConditionalGeneration"
DEFAULT_RATIO = 0.1
PROMPT = "<|im_start|>user\n<video>\nWhat happens in this video?<|im_end|>\n<|im_start|>assistant\n"
RUNNER = Path(__file__).with_name("_runner.py")


def overrides(**earlytom):
    # trace: the tests read the model's per-video traces (serving leaves it off)
    return {"architectures": [ARCH],
            "earlytom": {"retain_ratio": DEFAULT_RATIO, "trace": True, **earlytom}}


@pytest.fixture(scope="session")
def llm(tiny_checkpoint):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: ~3 s start
    from vllm import LLM

    engine = LLM(model=str(tiny_checkpoint), enforce_eager=True, dtype="float32",
                 max_model_len=8192, limit_mm_per_prompt={"video": 2, "image": 1}, seed=0,
                 hf_overrides=overrides())
    yield engine
    del engine


@pytest.fixture(scope="session")
def run_engine(tiny_checkpoint, tmp_path_factory):
    """Run requests in a separate engine process; returns the runner's JSON results."""

    def run(requests, *, hf_overrides=None, tensor_parallel_size=1, trace=False,
            max_model_len=8192, model=None, engine_kwargs=None):
        d = tmp_path_factory.mktemp("engine")
        job = {"model": str(model or tiny_checkpoint), "hf_overrides": hf_overrides,
               "requests": requests, "tensor_parallel_size": tensor_parallel_size,
               "trace": trace, "max_model_len": max_model_len, "engine_kwargs": engine_kwargs}
        (d / "job.json").write_text(json.dumps(job))
        # apply_model ships a function to the workers: pickle is needed across processes.
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
               "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
        proc = subprocess.run([sys.executable, str(RUNNER), str(d / "job.json"),
                               str(d / "out.json")], env=env, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise AssertionError(f"engine runner failed:\n{proc.stderr[-4000:]}")
        return json.loads((d / "out.json").read_text())

    return run
