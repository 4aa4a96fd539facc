"""End to end with the REAL engine: ``earlytom-serve`` starts vLLM (CPU) with the EarlyTom plugin on
the tiny local checkpoint; the ``openai`` client talks to it; a real Prometheus scrapes it.

One server per module (start ~30-60 s on 2 cores); the affinity test starts one more vLLM engine
and puts both behind a second front end. Run: ``pytest -m engine tests/server``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from frontend_fakes import free_port, group_members, png_bytes, wait_for, write_mp4

from earlytom_vllm.core.budget import video_token_budget

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).with_name("earlytom-serve"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
FRAMES = 8
BACKEND_KEY = "engine-e2e-backend-key"  # the spawned backend's VLLM_API_KEY
TTFT_P50 = ("histogram_quantile(0.5, sum by (le) "
            "(rate(earlytom_time_to_first_token_seconds_bucket[1m])))")


def _plugin_ready() -> bool:
    plugin = ROOT / "earlytom_vllm" / "vllm" / "plugin.py"
    return plugin.is_file() and "def register" in plugin.read_text()




def _get(url: str, **kw) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: Path
    model: str
    media_dir: Path
    video: Path
    backend_url: str
    backend_pid: int

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0,
                             timeout=300)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_serve(args: list[str], log: Path, url: str, timeout: float) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    with log.open("w") as out:
        proc = subprocess.Popen([SERVE, *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        r = _get(f"{url}/health")
        return r is not None and r.status_code == 200

    ok = wait_for(ready, timeout)
    if proc.poll() is not None or not ok:
        proc.kill()
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"earlytom-serve did not become ready ({' '.join(args)}):\n{tail}")
    return proc


def stop_serve(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    if not _plugin_ready():
        pytest.skip("the EarlyTom vLLM plugin (earlytom_vllm/vllm/plugin.py) is not there yet")
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint

    ensure_tiny_checkpoint()  # build (or find) it up front: start-up time is then vLLM's only
    tmp = tmp_path_factory.mktemp("engine")
    media_dir = tmp / "media"
    media_dir.mkdir()
    video = write_mp4(media_dir / "clip.mp4", frames=FRAMES, size=(96, 64))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "earlytom-serve.log"
    # a known backend key (not a random one): a second front end can then use this backend too
    proc = start_serve(["--port", str(port), "--media-dir", str(media_dir),
                        "--backend-api-key", BACKEND_KEY, "--health-interval", "0.5"],
                       log, url, timeout=600)
    health = httpx.get(f"{url}/health").json()
    model = health["backends"][0]["models"][0]
    sup = health["supervisor"]
    s = Served(url=url, proc=proc, log=log, model=model, media_dir=media_dir, video=video,
               backend_url=sup["url"], backend_pid=sup["pid"])
    yield s
    stop_serve(proc)


def video_content(url: str, text: str = "Describe the video.") -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}]


def data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def prompt_tokens(client: openai.OpenAI, model: str, content: list[dict], **earlytom) -> int:
    extra = {"earlytom": earlytom} if earlytom else None
    out = client.chat.completions.create(model=model, max_tokens=1, temperature=0,
                                         messages=[{"role": "user", "content": content}],
                                         extra_body=extra)
    return out.usage.prompt_tokens


# -- chat ---------------------------------------------------------------------------------------------


def test_video_chat_non_streaming(served):
    client = served.client()
    for url in (data_url(served.video), f"file://{served.video}"):
        out = client.chat.completions.create(
            model=served.model, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": video_content(url)}])
        assert out.choices[0].finish_reason in ("length", "stop")
        assert isinstance(out.choices[0].message.content, str)
        assert out.usage.completion_tokens >= 1
        # default retain_ratio 0.1: the video takes budget(8, 0.1) + 1 tokens
        assert out.usage.prompt_tokens > video_token_budget(FRAMES, 0.1, 196) + 1
        assert out.usage.prompt_tokens < 196 * FRAMES


def test_video_chat_streaming(served):
    client = served.client()
    stream = client.chat.completions.create(
        model=served.model, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": video_content(data_url(served.video))}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    assert isinstance(text, str)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    plain = client.chat.completions.create(
        model=served.model, max_tokens=1, temperature=0,
        messages=[{"role": "user", "content": video_content(data_url(served.video))}])
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_retain_ratio_changes_prompt_tokens_as_the_budget_predicts(served):
    client = served.client()
    content = video_content(f"file://{served.video}")
    p = {r: prompt_tokens(client, served.model, content, retain_ratio=r)
         for r in (0.1, 0.15, 0.5)}
    full = prompt_tokens(client, served.model, content, enabled=False)
    for r1, r2 in ((0.1, 0.5), (0.15, 0.5), (0.1, 0.15)):
        assert p[r2] - p[r1] == (video_token_budget(FRAMES, r2, 196)
                                 - video_token_budget(FRAMES, r1, 196)), (r1, r2, p)
    assert full - p[0.1] == 196 * FRAMES - video_token_budget(FRAMES, 0.1, 196)
    assert prompt_tokens(client, served.model, content) == p[0.1]  # server default 0.1


def test_frames_as_video_is_compressed_as_one_video(served):
    client = served.client()
    n = 6
    frames = [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(
            png_bytes((i * 40, 255 - i * 40, 90), (96, 64))).decode()}} for i in range(n)]
    content = [*frames, {"type": "text", "text": "Describe the video."}]
    a = prompt_tokens(client, served.model, content, frames_as_video=True, retain_ratio=0.1)
    b = prompt_tokens(client, served.model, content, frames_as_video=True, retain_ratio=0.5)
    assert b - a == video_token_budget(n, 0.5, 196) - video_token_budget(n, 0.1, 196)
    # the same as an mp4 of 6 frames with the same text
    clip = write_mp4(served.media_dir / "six.mp4", frames=n, size=(96, 64))
    c = prompt_tokens(client, served.model, video_content(f"file://{clip}"), retain_ratio=0.1)
    assert a == c


def test_bad_input_is_rejected_and_the_engine_keeps_serving(served, tmp_path):
    client = served.client()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(served.video.read_bytes()[:-300])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=served.model, max_tokens=1, messages=[
            {"role": "user", "content": video_content(data_url(broken))}])
    assert err.value.body["code"] == "invalid_video"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=served.model, max_tokens=1, messages=[
            {"role": "user", "content": video_content(data_url(served.video))}],
            extra_body={"earlytom": {"retain_ratio": 0}})
    assert err.value.body["param"] == "earlytom.retain_ratio"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", max_tokens=1, messages=[
            {"role": "user", "content": "hi"}])
    out = client.chat.completions.create(model=served.model, max_tokens=1, messages=[
        {"role": "user", "content": video_content(data_url(served.video))}])
    assert out.usage.prompt_tokens > 0


def test_client_disconnect_aborts_the_request_in_vllm(served):
    def backend_metric(name: str) -> float:
        r = httpx.get(f"{served.backend_url}/metrics", timeout=10)
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
                   if line.startswith(name + "{"))

    generated = backend_metric("vllm:generation_tokens_total")
    body = {"model": served.model, "stream": True, "max_tokens": 4000, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to one thousand."}]}
    chunks = 0
    with httpx.Client(base_url=served.url, timeout=60) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 20:  # decoding at full speed
                break
    # the front end closed its upstream stream: vLLM stops the request (far from its 4000) ...
    assert wait_for(lambda: backend_metric("vllm:num_requests_running") == 0, timeout=30)
    stopped_at = backend_metric("vllm:generation_tokens_total")
    assert stopped_at - generated < 4000
    # ... and generates nothing more: once a later request has run to its end, its own tokens
    # are the only ones added (no waiting for a quiet period that a loaded machine may stretch)
    probe = served.client().chat.completions.create(
        model=served.model, max_tokens=3, temperature=0, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "hi"}])
    n = probe.usage.completion_tokens
    assert n == 3
    assert wait_for(lambda: backend_metric("vllm:generation_tokens_total") >= stopped_at + n,
                    timeout=30)
    assert backend_metric("vllm:generation_tokens_total") == stopped_at + n


# -- auth ---------------------------------------------------------------------------------------------


def test_auth_off_and_on(served, tmp_path):
    # off: the module's server takes requests without a key
    assert served.client(api_key="anything").models.list().data[0].id == served.model
    # on: a second front end in proxy mode (--backend) with a key, in front of the first one
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(["--port", str(port), "--backend", served.url, "--api-key", "t0ken",
                        "--health-interval", "0.5"], tmp_path / "proxy.log", url, timeout=120)
    try:
        content = video_content(data_url(served.video))
        for key in ("wrong", "t0ke", "t0ken0"):
            bad = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                bad.chat.completions.create(model=served.model, max_tokens=1, messages=[
                    {"role": "user", "content": content}])
        assert httpx.post(f"{url}/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "hi"}]}).status_code == 401
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="t0ken", max_retries=0)
        out = good.chat.completions.create(model=served.model, max_tokens=1, messages=[
            {"role": "user", "content": content}], extra_body={"earlytom": {"retain_ratio": 0.5}})
        direct = prompt_tokens(served.client(), served.model, content, retain_ratio=0.5)
        assert out.usage.prompt_tokens == direct
        assert httpx.get(f"{url}/health").status_code == 200  # open unless configured
    finally:
        stop_serve(proc)


# -- metrics ------------------------------------------------------------------------------------------


def test_engine_metrics_count_visual_tokens(served):
    """The EarlyTom processor counts visual tokens on vLLM's /metrics (the engine's own count);
    the front end does not guess them."""
    def value(text: str, name: str, method: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and f'method="{method}"' in line and \
                    f'model_name="{served.model}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{served.backend_url}/metrics").text
    prompt_tokens(served.client(), served.model, video_content(f"file://{served.video}"),
                  retain_ratio=0.25)
    after = httpx.get(f"{served.backend_url}/metrics").text
    assert "earlytom_visual_tokens" not in httpx.get(f"{served.url}/metrics").text
    d_before = value(after, "earlytom_visual_tokens_before_total", "earlytom") - \
        value(before, "earlytom_visual_tokens_before_total", "earlytom")
    d_after = value(after, "earlytom_visual_tokens_after_total", "earlytom") - \
        value(before, "earlytom_visual_tokens_after_total", "earlytom")
    assert d_before == 196 * FRAMES + 1
    assert d_after == video_token_budget(FRAMES, 0.25, 196) + 1


def test_visual_token_count_is_the_engines_for_edit_lists_and_long_videos(served):
    """The visual-token metrics equal what the engine put in the prompt (its prompt tokens minus
    the text), also for an mp4 whose edit list hides frames and for a video longer than the
    frames the engine samples (num_frames 32): they are counted where the frames are sampled."""
    from mp4_edits import hide_leading_frames

    trimmed = served.media_dir / "trimmed.mp4"
    raw = write_mp4(served.media_dir / "raw40.mp4", frames=40, size=(96, 64))
    trimmed.write_bytes(hide_leading_frames(raw.read_bytes(), 12))  # 28 presented frames
    long = write_mp4(served.media_dir / "long48.mp4", frames=48, size=(96, 64))
    text = "Describe the video."
    # The prompt's text tokens: the same chat with the video placeholder as one literal token.
    tok = httpx.post(f"{served.backend_url}/tokenize", json={
        "model": served.model, "add_generation_prompt": True,
        "messages": [{"role": "user", "content": f"<video>\n{text}"}]}, timeout=60)
    assert tok.status_code == 200, tok.text
    text_tokens = tok.json()["count"] - 1

    def counters() -> tuple[float, float]:
        body = httpx.get(f"{served.backend_url}/metrics").text
        got = []
        for name in ("earlytom_visual_tokens_before_total", "earlytom_visual_tokens_after_total"):
            got.append(sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                           if line.startswith(name + "{") and f'model_name="{served.model}"' in line))
        return got[0], got[1]

    for path, frames in ((trimmed, 28), (long, 32)):
        b0, a0 = counters()
        prompt = prompt_tokens(served.client(), served.model, video_content(data_url(path), text),
                               retain_ratio=0.25)
        b1, a1 = counters()
        assert a1 - a0 == prompt - text_tokens, path.name
        assert a1 - a0 == video_token_budget(frames, 0.25, 196) + 1, path.name
        assert b1 - b0 == 196 * frames + 1, path.name


def test_prometheus_scrapes_ttft(served, tmp_path):
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (scripts/install_prometheus.sh)")
    port = free_port()
    target = served.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: earlytom\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def scraped() -> bool:
            r = _get(f"{api}/query", params={"query": 'up{job="earlytom"}'})
            result = r.json()["data"]["result"] if r is not None and r.status_code == 200 else []
            return bool(result) and result[0]["value"][1] == "1"

        assert wait_for(scraped, timeout=60), "prometheus never scraped the front end"
        client = served.client()

        def ttft_count_scraped(n: int) -> bool:
            r = _get(f"{api}/query", params={
                "query": "sum(earlytom_time_to_first_token_seconds_count)"})
            result = r.json()["data"]["result"] if r is not None and r.status_code == 200 else []
            return bool(result) and float(result[0]["value"][1]) >= n

        front_metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
        before = sum(float(line.rsplit(" ", 1)[1]) for line in front_metrics.splitlines()
                     if line.startswith("earlytom_time_to_first_token_seconds_count{"))
        for i in range(4):
            stream = client.chat.completions.create(
                model=served.model, max_tokens=4, stream=True, temperature=0,
                messages=[{"role": "user", "content": video_content(
                    f"file://{served.video}", f"Describe the video ({i}).")}])
            list(stream)
            # each request lands in its own scrape, so rate() sees an increase (no sleep)
            assert wait_for(lambda i=i: ttft_count_scraped(before + i + 1), timeout=60)
        result: list = []

        def p50() -> bool:
            r = _get(f"{api}/query", params={"query": TTFT_P50})
            if r is None or r.status_code != 200:
                return False
            result[:] = r.json()["data"]["result"]
            return bool(result) and result[0]["value"][1] not in ("NaN", "+Inf", "-Inf")

        assert wait_for(p50, timeout=30), f"no TTFT p50 from prometheus: {result}"
        ttft = float(result[0]["value"][1])
        assert 0 < ttft < 60
    finally:
        prom.terminate()
        prom.wait(timeout=30)


# -- multimodal cache keys ------------------------------------------------------------------------


def test_equal_settings_hit_the_multimodal_cache(served, tmp_path):
    """vLLM's multimodal cache key hashes mm_processor_kwargs as sent: the front end's canonical
    form makes reordered-equal settings hit the entry the first request made, and different
    settings miss it (read from vLLM's own vllm:mm_cache_* counters on the backend)."""
    clip = write_mp4(tmp_path / "cache.mp4", frames=FRAMES, size=(80, 64))  # new to the cache
    content = video_content(data_url(clip))
    client = served.client()

    def cache() -> tuple[float, float]:
        text = httpx.get(f"{served.backend_url}/metrics", timeout=30).text
        out = []
        for name in ("vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total"):
            out.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(name + "{")))
        return out[0], out[1]

    def ask(earlytom: dict) -> tuple[float, float]:
        before = cache()
        client.chat.completions.create(model=served.model, max_tokens=1, temperature=0,
                                       messages=[{"role": "user", "content": content}],
                                       extra_body={"earlytom": earlytom})
        after = cache()
        return after[0] - before[0], after[1] - before[1]

    queries, hits = ask({"retain_ratio": 0.3, "tau": 0.4})
    assert queries >= 1 and hits == 0
    queries, hits = ask({"tau": 0.4, "retain_ratio": 0.3})  # the same settings, reordered
    assert queries >= 1 and hits == queries
    queries, hits = ask({"tau": 0.4, "retain_ratio": 0.35})  # different: a miss
    assert queries >= 1 and hits == 0


def vllm_counters(backend_url: str) -> dict[str, float]:
    """vLLM's multimodal- and prefix-cache counters on one backend, summed over labels."""
    text = httpx.get(f"{backend_url}/metrics", timeout=30).text
    names = ("vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total",
             "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")
    return {name.split(":")[1].removesuffix("_total"): sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name + "{")) for name in names}


def test_follow_up_about_a_video_hits_the_cache_of_the_backend_that_saw_it(served, tmp_path):
    """Two real engines behind one front end (``--backend A --backend B``): the module's backend
    (A) and ONE more vLLM started here exactly as the supervisor starts it (B). A follow-up question
    about a video goes to the backend its digest ranks first, and hits that backend's multimodal
    and prefix caches; the other backend's counters do not move; a video that ranks B first goes
    to B."""
    from earlytom_server.media import media_digest
    from earlytom_server.proxy import rendezvous_score
    from earlytom_server.settings import Settings
    from earlytom_server.supervisor import (
        backend_env,
        build_vllm_command,
        resolve_dtype,
        resolve_model,
    )

    a = served.backend_url
    b = f"http://127.0.0.1:{free_port()}"
    settings = Settings(backend_api_key=BACKEND_KEY)  # the fixture's front end's defaults
    model, name = resolve_model(settings)
    assert name == served.model  # both engines serve the name the front end routes by
    cmd = build_vllm_command(settings, model=model, served_model_name=name,
                             port=int(b.rsplit(":", 1)[1]), media_dir=served.media_dir,
                             dtype=resolve_dtype(settings.dtype))
    b_log = tmp_path / "vllm-b.log"
    with b_log.open("w") as out:  # start B first: it loads while the clips are made
        engine_b = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env=backend_env(settings, BACKEND_KEY),
                                    start_new_session=True)
    front = None
    try:
        # one clip new to every cache that ranks A first, one that ranks B first
        by_backend: dict[str, bytes] = {}
        for i in range(16):
            clip = write_mp4(tmp_path / f"affinity{i}.mp4", frames=FRAMES,
                             size=(72 + 8 * (i % 4), 40 + 8 * (i // 4))).read_bytes()
            first = max((a, b), key=lambda u: rendezvous_score(media_digest(clip), u))
            by_backend.setdefault(first, clip)
            if len(by_backend) == 2:
                break
        assert len(by_backend) == 2

        def b_ready() -> bool:
            r = _get(f"{b}/health")
            return engine_b.poll() is not None or (r is not None and r.status_code == 200)

        assert wait_for(b_ready, timeout=600, interval=0.5) and engine_b.poll() is None, \
            "\n".join(b_log.read_text(errors="replace").splitlines()[-60:])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        front = start_serve(["--port", str(port), "--backend", a, "--backend", b,
                             "--backend-api-key", BACKEND_KEY, "--media-dir",
                             str(served.media_dir), "--health-interval", "0.5"],
                            tmp_path / "front.log", url, timeout=120)

        def both_ready() -> bool:
            backends = httpx.get(f"{url}/health", timeout=10).json()["backends"]
            return sorted(x["url"] for x in backends if x["ready"]) == sorted((a, b))

        assert wait_for(both_ready, timeout=60)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                               timeout=300)

        def ask(clip: bytes, text: str) -> tuple[dict[str, float], dict[str, float]]:
            before = {u: vllm_counters(u) for u in (a, b)}
            client.chat.completions.create(
                model=served.model, max_tokens=1, temperature=0,
                messages=[{"role": "user", "content": video_content(
                    "data:video/mp4;base64," + base64.b64encode(clip).decode(), text)}])
            after = {u: vllm_counters(u) for u in (a, b)}
            delta = {u: {k: after[u][k] - before[u][k] for k in after[u]} for u in (a, b)}
            return delta[a], delta[b]

        clip_a = by_backend[a]
        first_a, first_b = ask(clip_a, "Describe the video.")
        assert first_a["mm_cache_queries"] >= 1 and first_a["mm_cache_hits"] == 0  # new to A
        assert not any(first_b.values())  # B never saw it
        follow_a, follow_b = ask(clip_a, "What colour is it?")
        print(f"\nfirst question on A: {first_a}\nfollow-up on A: {follow_a}\n"
              f"follow-up on B: {follow_b}")
        assert follow_a["mm_cache_queries"] >= 1
        assert follow_a["mm_cache_hits"] == follow_a["mm_cache_queries"]  # the video: cached
        assert follow_a["prefix_cache_hits"] > 0  # and the prompt up to the question
        assert not any(follow_b.values())
        other_a, other_b = ask(by_backend[b], "Describe the video.")  # ranks B first: on B
        print(f"other video on A: {other_a}\nother video on B: {other_b}")
        assert other_b["mm_cache_queries"] >= 1 and other_b["mm_cache_hits"] == 0
        assert not any(other_a.values())
        routed = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'earlytom_requests_routed_total{policy="affinity"} 3.0' in routed
    finally:
        if front is not None:
            stop_serve(front)
        if engine_b.poll() is None:
            os.killpg(engine_b.pid, signal.SIGTERM)
            try:
                engine_b.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(engine_b.pid, signal.SIGKILL)
                engine_b.wait()
    assert wait_for(lambda: group_members(engine_b.pid) == [], timeout=10)


def test_relayed_routes_against_the_engine(served):
    """/v1/completions (JSON, SSE, the openai client's completions API), /tokenize (prompt and
    chat form with a compressed video), /detokenize and /version, through the front end, answered
    by the real vLLM."""
    client = served.client()
    out = client.completions.create(model=served.model, prompt="Hello", max_tokens=3,
                                    temperature=0)
    assert isinstance(out.choices[0].text, str) and out.usage.prompt_tokens > 0
    stream = client.completions.create(model=served.model, prompt="Hello", max_tokens=3,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in stream if c.choices)
    with httpx.Client(base_url=served.url, timeout=300) as c:
        tok = c.post("/tokenize", json={"model": served.model, "prompt": "Hello world"})
        assert tok.status_code == 200, tok.text
        tokens = tok.json()["tokens"]
        detok = c.post("/detokenize", json={"model": served.model, "tokens": tokens})
        assert detok.status_code == 200 and "Hello" in detok.json()["prompt"], detok.text

        def counted(ratio: float) -> int:
            r = c.post("/tokenize", json={
                "model": served.model, "earlytom": {"retain_ratio": ratio},
                "messages": [{"role": "user", "content": video_content(
                    f"file://{served.video}")}]})
            assert r.status_code == 200, r.text
            return r.json()["count"]

        assert counted(0.25) < counted(1.0)  # the count is the compressed prompt's
        version = c.get("/version")
        assert version.status_code == 200 and version.json()["version"].startswith("0.32")
        bad = c.post("/v1/completions", json={"model": served.model, "prompt": "x",
                                              "max_tokens": "many"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
        metrics = c.get("/metrics").text
    assert f'earlytom_time_to_first_token_seconds_count{{method="none",model_name="{served.model}"}}' \
        in metrics


def test_the_served_api_conforms_to_its_schema_on_the_engine(served, tmp_path):
    """schemathesis (every check) against earlytom-serve on the real engine: a short run (3 cases
    per operation and phase, the fake-backend run's seed), with the served model's facts the
    schema cannot know (encoder depth, vocabulary, media per prompt) and short generations."""
    from test_frontend_schemathesis import SEED, run_schemathesis

    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint
    from earlytom_vllm.families import family_for_config

    config = json.loads((ensure_tiny_checkpoint() / "config.json").read_text())
    facts = {"depth": family_for_config(config).encoder_depth(config),
             "vocab": config["text_config"]["vocab_size"], "images": 1, "videos": 1,
             "max_tokens": 2, "n": 1}
    run_schemathesis(served.url, tmp_path, examples=3, seed=SEED, timeout=600,
                     env={"SCHEMATHESIS_ENGINE": json.dumps(facts)})


# -- faults -------------------------------------------------------------------------------------------


def test_backend_killed_mid_stream_is_reported_and_restarted(served):
    """SIGKILL the vLLM API server during a stream: the client gets an SSE error, /health turns
    503, the supervisor restarts vLLM (no leftover engine processes) and serving resumes."""
    old_pid = httpx.get(f"{served.url}/health").json()["supervisor"]["pid"]
    body = {"model": served.model, "stream": True, "max_tokens": 4000, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to one thousand."}]}
    events: list[str] = []
    with httpx.Client(base_url=served.url, timeout=60) as c, \
            c.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(old_pid, signal.SIGKILL)
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2]
    assert httpx.get(f"{served.url}/health").status_code == 503
    assert wait_for(lambda: not pid_alive(old_pid), timeout=10)

    def restarted() -> bool:
        r = _get(f"{served.url}/health")
        return r is not None and r.status_code == 200

    assert wait_for(restarted, timeout=300), served.log_tail()
    sup = httpx.get(f"{served.url}/health").json()["supervisor"]
    assert sup["restarts"] == 1 and sup["pid"] != old_pid
    assert not any(group_members(old_pid))  # the old engine core / workers are gone
    out = served.client().chat.completions.create(
        model=served.model, max_tokens=1,
        messages=[{"role": "user", "content": video_content(f"file://{served.video}")}])
    assert out.usage.prompt_tokens > 0




# -- shutdown (last: stops the module's server) --------------------------------------------------------


def test_ctrl_c_stops_the_backend_without_orphans(served):
    backend_pid = httpx.get(f"{served.url}/health").json()["supervisor"]["pid"]
    assert pid_alive(backend_pid)
    # it exits by itself on Ctrl-C (stop_serve's SIGKILL after 60 s would give -9, not 0/130)
    code = stop_serve(served.proc, signal.SIGINT, timeout=60)
    assert code in (0, 130), served.log_tail()
    assert wait_for(lambda: not pid_alive(backend_pid), timeout=10)
    # nothing left in the backend's process group (API server, engine core, workers)
    assert wait_for(lambda: group_members(backend_pid) == [], timeout=10), served.log_tail()
