"""The spawned backend (command line, supervision, restart, clean stop) and the CLI, with a fake
backend process standing in for vLLM."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from frontend_fakes import (
    ServerThread,
    free_port,
    group_members,
    health_ok,
    make_fake_backend,
    wait_for,
)

from earlytom_server.app import create_app
from earlytom_server.cli import example_request, settings_from_args
from earlytom_server.settings import Settings
from earlytom_server.supervisor import backend_env, build_vllm_command
from earlytom_vllm.families import get as get_family

ARCHITECTURE = get_family("llava_onevision").architecture  # the default family

HERE = Path(__file__).parent
FAKE = str(HERE / "frontend_fakes.py")
SERVE = str(Path(sys.executable).with_name("earlytom-serve"))




def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False




# -- the vLLM command line ----------------------------------------------------------------------------


def test_vllm_command_has_the_plugin_flags(tmp_path):
    s = Settings(num_frames=16, max_model_len=8192, compression={"retain_ratio": 0.2},
                 backend_args=["--seed", "1"])
    cmd = build_vllm_command(s, model="/m", served_model_name="tiny", port=1234,
                             media_dir=tmp_path)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = dict(itertools.pairwise(cmd))
    assert args["--model"] == "/m"
    assert args["--host"] == "127.0.0.1"
    assert args["--port"] == "1234"
    assert args["--served-model-name"] == "tiny"
    assert json.loads(args["--media-io-kwargs"]) == {"video": {"num_frames": 16}}
    assert args["--allowed-local-media-path"] == str(tmp_path)
    assert json.loads(args["--limit-mm-per-prompt"]) == {"video": 1, "image": 1}
    assert json.loads(args["--hf-overrides"]) == {
        "architectures": [ARCHITECTURE], "earlytom": {"max_frames": 16, "retain_ratio": 0.2}}
    assert args["--max-model-len"] == "8192"
    assert "--trust-request-mm-kwargs" in cmd and "--enforce-eager" in cmd
    assert cmd[-2:] == ["--seed", "1"]
    assert "--api-key" not in cmd  # the key travels in the environment
    stock = build_vllm_command(Settings(earlytom_arch=False, enforce_eager=False), model="/m",
                               served_model_name="x", port=1, media_dir=tmp_path)
    assert "--hf-overrides" not in stock and "--enforce-eager" not in stock


def test_backend_env(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    env = backend_env(Settings(kv_cache_space_gib=2), "key")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["VLLM_API_KEY"] == "key"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert backend_env(Settings(), None)["VLLM_CPU_KVCACHE_SPACE"] == "4"


@pytest.mark.slow
def test_vllm_accepts_the_command_line(tmp_path):
    """Every flag we pass parses with the installed vLLM's own argument parser (~7 s: imports
    vLLM)."""
    code = (
        "import json, sys\n"
        "from earlytom_vllm.vllm.compat import make_arg_parser\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])\n"
        "print(json.dumps({'hf': args.hf_overrides, 'media': args.media_io_kwargs,\n"
        "  'limit': args.limit_mm_per_prompt, 'trust': args.trust_request_mm_kwargs,\n"
        "  'eager': args.enforce_eager, 'name': args.served_model_name, 'port': args.port,\n"
        "  'path': args.allowed_local_media_path, 'len': args.max_model_len}))\n"
    )
    s = Settings(max_model_len=4096)
    cmd = build_vllm_command(s, model=str(tmp_path), served_model_name="tiny", port=4321,
                             media_dir=tmp_path)
    out = subprocess.run([sys.executable, "-c", code, *cmd[3:]], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["hf"]["architectures"] == [ARCHITECTURE]
    assert got["media"] == {"video": {"num_frames": 32}}
    assert got["limit"] == {"video": 1, "image": 1}
    assert got["trust"] is True and got["eager"] is True
    assert got["name"] == ["tiny"] and got["port"] == 4321 and got["len"] == 4096
    assert got["path"] == str(tmp_path)


# -- supervision (a fake backend process) -------------------------------------------------------------


def fake_command(port: int) -> list[str]:
    return [sys.executable, FAKE, "--port", str(port)]




def fake_command_with_worker(port: int) -> list[str]:
    # like vLLM: a long-lived helper process shares the group and the stdout pipe
    return ["sh", "-c", f"sleep 600 & exec {sys.executable} {FAKE} --port {port}"]


def test_spawned_backend_is_supervised_restarted_and_stopped(tmp_path):
    s = Settings(health_interval=0.2, media_dir=tmp_path, restart_backoff_max=0.2,
                 stop_timeout=5)
    app = create_app(s, command_factory=fake_command_with_worker)
    front = app.state.front
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert wait_for(lambda: c.get("/health").status_code == 200)
            sup = front.supervisor
            pid = sup.pid
            r = c.post("/v1/chat/completions", json={"messages": [
                {"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            # the front end talks to its backend with a private key
            assert front.pool.api_key and front.pool.api_key == sup.api_key
            helpers = [p for p in group_members(pid) if p != pid]
            assert len(helpers) == 1
            # the backend dies -> unready -> restarted -> ready again
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: c.get("/health").status_code == 503, timeout=10)
            assert wait_for(lambda: sup.pid != pid and c.get("/health").status_code == 200)
            assert sup.restarts == 1
            assert not alive(helpers[0])  # the dead backend's helper was reaped
            assert "earlytom_backend_restarts_total 1.0" in c.get("/metrics").text
            assert c.post("/v1/chat/completions", json={"messages": [
                {"role": "user", "content": "hi"}]}).status_code == 200
            new_pid = sup.pid
    finally:
        server.stop()
    assert not alive(new_pid)
    assert not group_members(new_pid)


def test_backend_that_never_starts_is_given_up(tmp_path):
    s = Settings(health_interval=0.2, media_dir=tmp_path, restart_backoff_max=0.1)
    app = create_app(s, command_factory=lambda port: [sys.executable, "-c", "raise SystemExit(7)"])
    front = app.state.front
    fatal: list[str] = []
    front.supervisor.on_fatal = fatal.append
    server = ServerThread(app).start()
    try:
        assert wait_for(lambda: bool(fatal), timeout=30)
        assert "failed to become ready 3 times" in fatal[0]
        assert httpx.get(f"{server.url}/health").status_code == 503
    finally:
        server.stop()


def test_stop_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path, caplog):
    # the "backend" ignores SIGTERM and has a child of its own
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    s = Settings(health_interval=0.2, media_dir=tmp_path, stop_timeout=0.5)
    app = create_app(s, command_factory=lambda port: [sys.executable, "-c", code])
    front = app.state.front
    server = ServerThread(app).start()
    try:
        sup = front.supervisor
        assert wait_for(lambda: any(line.startswith("child ") for line in sup.log_tail))
        pid = sup.pid
        child = int(next(x for x in sup.log_tail if x.startswith("child ")).split()[1])
        assert alive(pid) and alive(child)
    finally:
        with caplog.at_level(logging.WARNING, logger="earlytom_server.supervisor"):
            server.stop()
            server.thread.join(timeout=60)  # stop() waits 10 s; a loaded machine may need more
    assert not server.thread.is_alive()
    # it escalated (the backend would otherwise have slept for 600 s) ...
    assert any("ignored SIGTERM" in r.getMessage() and "SIGKILL" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # ... to the whole group: the backend's own child is gone too
    assert wait_for(lambda: not alive(pid) and not alive(child), timeout=10)


# -- CLI ----------------------------------------------------------------------------------------------


def test_cli_flags_and_env(monkeypatch):
    monkeypatch.setenv("EARLYTOM_PORT", "9001")
    monkeypatch.setenv("EARLYTOM_BACKENDS", "http://a:1,http://b:2/")
    monkeypatch.setenv("EARLYTOM_COMPRESSION", '{"tau": 0.4}')
    s = settings_from_args([])
    assert s.port == 9001
    assert s.backends == ["http://a:1", "http://b:2"]
    assert s.earlytom_config.tau == 0.4
    s = settings_from_args(["--port", "9002", "--backend", "http://c:3", "--retain-ratio",
                            "0.25", "--method", "evs", "--api-key", "k", "--media-dir", "/tmp",
                            "--backend-arg", "--seed 3"])
    assert s.port == 9002 and s.backends == ["http://c:3"]
    assert s.compression == {"tau": 0.4, "retain_ratio": 0.25, "method": "evs"}
    assert s.api_key.get_secret_value() == "k"
    assert s.backend_args == ["--seed", "3"]
    assert settings_from_args(["--no-compression"]).earlytom_config.compresses is False
    with pytest.raises(ValueError, match="retain_ratio"):
        settings_from_args(["--retain-ratio", "3"])


def test_frames_as_video_switch_from_cli_and_env(monkeypatch):
    monkeypatch.delenv("EARLYTOM_FRAMES_AS_VIDEO", raising=False)
    assert settings_from_args([]).frames_as_video is False
    assert settings_from_args(["--frames-as-video"]).frames_as_video is True
    monkeypatch.setenv("EARLYTOM_FRAMES_AS_VIDEO", "true")
    assert settings_from_args([]).frames_as_video is True
    monkeypatch.setenv("EARLYTOM_FRAMES_AS_VIDEO", "maybe")
    with pytest.raises(ValueError, match="frames_as_video"):
        settings_from_args([])


def test_cli_rejects_bad_settings():
    out = subprocess.run([SERVE, "--retain-ratio", "2"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "retain_ratio" in out.stderr


def test_example_request_is_valid_json(tmp_path):
    s = Settings(media_dir=tmp_path, port=8123)
    video = tmp_path / "v.mp4"
    cmd = example_request(s, "m", video)
    body = cmd.split(" -d '", 1)[1].rstrip("'")
    data = json.loads(body)
    assert data["messages"][0]["content"][0]["video_url"]["url"] == f"file://{video.resolve()}"
    assert "http://127.0.0.1:8123/v1/chat/completions" in cmd


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_proxy_mode_serves_and_exits_cleanly(sig):
    backend = ServerThread(make_fake_backend()).start()
    port = free_port()
    proc = subprocess.Popen([SERVE, "--port", str(port), "--backend", backend.url,
                             "--health-interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        assert wait_for(lambda: health_ok(url), timeout=60)
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, 130, -signal.SIGTERM), out
        assert "READY at" in out and "curl -s" in out
        assert "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.stop()


def test_backend_dies_with_a_killed_front_end(tmp_path):
    """PR_SET_PDEATHSIG: even a SIGKILLed front end leaves no backend behind."""
    port = free_port()
    code = (
        "import sys, uvicorn\n"
        "from earlytom_server.app import create_app\n"
        "from earlytom_server.settings import Settings\n"
        f"cmd = lambda p: [sys.executable, {FAKE!r}, '--port', str(p)]\n"
        f"app = create_app(Settings(health_interval=0.2, media_dir={str(tmp_path)!r}),\n"
        "                 command_factory=cmd)\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/health"

        def ready() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, timeout=60)
        child = httpx.get(url).json()["supervisor"]["pid"]
        assert alive(child)
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not alive(child), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_architecture_follows_the_checkpoint_config(tmp_path):
    """``--model`` of either family gets its EarlyTom architecture; an unknown or unreadable
    config keeps the LLaVA-OneVision default."""
    from earlytom_server.supervisor import earlytom_architecture, hf_overrides

    def checkpoint(name: str, config: dict | None) -> str:
        d = tmp_path / name
        d.mkdir()
        if config is not None:
            (d / "config.json").write_text(json.dumps(config))
        return str(d)

    qwen = checkpoint("qwen", {"model_type": "qwen2_5_vl",
                               "architectures": ["Qwen2_5_VLForConditionalGeneration"]})
    qwen_type_only = checkpoint("qwen-type", {"model_type": "qwen2_5_vl"})
    llava = checkpoint("llava", {"model_type": "llava_onevision",
                                 "architectures": ["LlavaOnevisionForConditionalGeneration"]})
    other = checkpoint("other", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    missing = checkpoint("missing", None)
    qwen_arch = "EarlyTomQwen2_5_VLForConditionalGeneration"
    assert earlytom_architecture(qwen) == earlytom_architecture(qwen_type_only) == qwen_arch
    for model in (llava, other, missing, None, "no/such-repo"):
        assert earlytom_architecture(model) == ARCHITECTURE
    s = Settings(num_frames=16)
    cmd = build_vllm_command(s, model=qwen, served_model_name="q", port=1, media_dir=tmp_path)
    args = dict(itertools.pairwise(cmd))
    assert json.loads(args["--hf-overrides"])["architectures"] == [qwen_arch]
    assert hf_overrides(s)["architectures"] == [ARCHITECTURE]
