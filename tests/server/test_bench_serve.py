"""``earlytom-bench-serve`` (vLLM's ``vllm bench serve``, whose console command the CPU wheel
breaks) against earlytom-serve on a fake backend: the chat backend with random-mm videos goes
through the front end's media path and vLLM's benchmark reports on it. Runs in a subprocess, so
that this test process never imports vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from earlytom_server.bench_serve import PROG

REPO = Path(__file__).resolve().parents[2]


def test_parser_is_vllm_bench_serve_s():
    code = ("from earlytom_server.bench_serve import build_parser; "
            "a = build_parser().parse_args(['--backend', 'openai-chat', '--endpoint', "
            "'/v1/chat/completions', '--dataset-name', 'random-mm', "
            "'--random-mm-bucket-config', '{(64, 64, 8): 1.0}']); "
            "print(a.backend, a.endpoint, a.dataset_name, a.random_mm_bucket_config)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == \
        "openai-chat /v1/chat/completions random-mm {(64, 64, 8): 1.0}"


@pytest.mark.slow
def test_bench_serve_with_videos_through_the_front_end(front, fake_backend, tmp_path):
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    tokenizer = ensure_tiny_checkpoint()
    out = subprocess.run(
        [sys.executable, "-m", "earlytom_server.bench_serve",
         "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
         "--base-url", front.url, "--model", "fake-model", "--tokenizer", str(tokenizer),
         "--dataset-name", "random-mm", "--num-prompts", "3", "--random-input-len", "16",
         "--random-output-len", "4", "--random-mm-base-items-per-request", "1",
         "--random-mm-limit-mm-per-prompt", '{"image": 0, "video": 1}',
         "--random-mm-bucket-config", "{(64, 64, 8): 1.0}", "--ready-check-timeout-sec", "0",
         "--save-result", "--result-dir", str(tmp_path), "--result-filename", "bench.json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["completed"] == 3 and result["failed"] == 0
    assert result["mean_ttft_ms"] > 0 and result["backend"] == "openai-chat"
    # every benchmark request reached the backend as a checked video (warm-up included)
    sent = fake_backend.app.state.received
    assert len(sent) >= 3
    for body in sent:
        kinds = [p["type"] for p in body["messages"][0]["content"] if isinstance(p, dict)]
        assert "video_url" in kinds, kinds
    assert PROG == "earlytom-bench-serve"
