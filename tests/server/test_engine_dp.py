"""Scale-out on vLLM's own data parallelism, with the REAL engine: ``earlytom-serve`` spawns ONE
vLLM server with ``--data-parallel-size 2`` (two EngineCore ranks, one CPU core each through
``VLLM_CPU_OMP_THREADS_BIND=0|1``), the EarlyTom plugin loaded in every rank, on the tiny
checkpoint. Video requests through the front end get the library's exact prompt token counts, and
both ranks serve (vLLM's per-engine ``engine="0"`` / ``engine="1"`` metric labels).

Slow: two engines start on 2 shared cores (minutes under load). Run:
``pytest -m engine tests/server/test_engine_dp.py``.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from pathlib import Path

import httpx
import openai
import pytest
from frontend_fakes import write_mp4

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.plan import video_rows

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package (its earlytom-serve launcher) is at the root
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

pytestmark = pytest.mark.engine

FRAMES = 4
PER_FRAME = 196  # the tiny checkpoint: SigLIP 384 px / 14 -> 27 x 27, pooled to 14 x 14
NEWLINE_ROWS = 1
DP = 2
QUESTION = "Describe the video."


def prometheus_samples(text: str, name: str) -> dict[str, float]:
    """``engine`` label -> value of counter ``name`` (``_total`` sample) in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.removesuffix("_total") != name:
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                engine = s.labels.get("engine", "")
                out[engine] = out.get(engine, 0.0) + float(s.value)
    return out


def text_tokens(checkpoint: Path) -> int:
    """Tokens of the chat prompt around the video (the placeholder not counted)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) - 1


@pytest.fixture(scope="module")
def dp_served(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("dp")
    media = tmp / "media"
    media.mkdir()
    videos = [write_mp4(media / f"clip{i}.mp4", frames=8, size=(96 + 16 * i, 64))
              for i in range(4)]
    env = {  # one core per rank (vLLM splits the list by local DP rank); 1 GiB KV per rank
        "VLLM_CPU_OMP_THREADS_BIND": "0|1" if (os.cpu_count() or 1) >= DP else "nobind",
        "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = harness.launch_serve(
        ["--media-dir", str(media), "--num-frames", str(FRAMES), "--max-model-len", "2048",
         "--health-interval", "0.5", f"--backend-arg=--data-parallel-size={DP}",
         "--backend-arg=--max-num-seqs=4"], tmp / "earlytom-serve.log", env=env)
    try:
        harness.wait_ready(server, 900, "none")
        health = httpx.get(f"{server.url}/health").json()
        yield {"url": server.url, "log": server.log, "videos": videos,
               "model": health["backends"][0]["models"][0],
               "backend": health["supervisor"]["url"].rstrip("/")}
    finally:
        server.stop(timeout=90)


def test_dp2_serves_exact_counts_on_both_ranks(dp_served, tiny_checkpoint):
    client = openai.OpenAI(base_url=f"{dp_served['url']}/v1", api_key="none", max_retries=0,
                           timeout=600)

    def ask(video: Path, earlytom: dict | None) -> int:
        content = [{"type": "video_url", "video_url": {"url": f"file://{video}"}},
                   {"type": "text", "text": QUESTION}]
        out = client.chat.completions.create(
            model=dp_served["model"], max_tokens=2, temperature=0,
            messages=[{"role": "user", "content": content}],
            extra_body={"earlytom": earlytom} if earlytom else None)
        return out.usage.prompt_tokens

    text = text_tokens(tiny_checkpoint)
    plans = [(v, e) for v in dp_served["videos"]
             for e in ({"method": "earlytom", "retain_ratio": 0.1}, {"method": "none"})]
    # all at once: vLLM's DP client balances requests in flight across the ranks
    with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
        got = list(pool.map(lambda p: ask(*p), plans))
    for (_, e), prompt in zip(plans, got, strict=True):
        cfg = EarlyTomConfig(method=e["method"], retain_ratio=e.get("retain_ratio", 1.0))
        assert prompt == text + video_rows(FRAMES, cfg, PER_FRAME, NEWLINE_ROWS), (e, prompt)

    metrics = httpx.get(f"{dp_served['backend']}/metrics", timeout=30).text
    done = prometheus_samples(metrics, "vllm:request_success")
    prompts = prometheus_samples(metrics, "vllm:prompt_tokens")
    assert set(done) >= {"0", "1"}, done
    assert sum(done.values()) == len(plans)
    assert all(done[str(r)] >= 1 and prompts[str(r)] > 0 for r in range(DP)), (done, prompts)
    log = dp_served["log"].read_text(errors="replace")
    assert "EngineCore_DP0" in log and "EngineCore_DP1" in log
