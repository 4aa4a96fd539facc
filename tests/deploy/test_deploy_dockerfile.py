"""The Dockerfile (parsed with dockerfile-parse), its build context (.dockerignore), the wheel the
builder stage makes from that context, and the container health probe."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from deploy_support import (
    DOCKER,
    DOCKERFILE,
    REPO,
    build_context_files,
    dockerignore_excludes,
    dockerignore_rules,
    free_port,
    settings_env_names,
    supported_vllm_versions,
)
from dockerfile_parse import DockerfileParser

HEALTHCHECK_SCRIPT = DOCKER / "healthcheck.py"


@pytest.fixture(scope="module")
def parser():
    return DockerfileParser(path=str(DOCKERFILE))


def stages(parser):
    """[(FROM value, [instructions])] per stage."""
    out = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append((ins["value"], []))
        elif out:
            out[-1][1].append(ins)
    return out


def final_stage(parser):
    return stages(parser)[-1][1]


def exec_form(value: str) -> list[str]:
    return json.loads(value)


def test_parses_multi_stage(parser):
    froms = [f for f, _ in stages(parser)]
    assert len(froms) >= 2, "expected a builder stage and a runtime stage"
    assert any(" AS builder" in f or " as builder" in f for f in froms)
    copies = [i["value"] for i in final_stage(parser) if i["instruction"] == "COPY"]
    assert any(c.startswith("--from=builder") for c in copies)


def global_args(parser, **build_args: str) -> dict[str, str]:
    """The ARGs before the first FROM, each default substituted as docker does (an ARG may use
    the ones above it), ``build_args`` as ``--build-arg`` would set them."""
    out: dict[str, str] = {}
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG":
            name, _, default = ins["value"].partition("=")
            value = build_args.get(name, default)
            out[name] = re.sub(r"\$\{(\w+)\}", lambda m: out.get(m.group(1), ""), value)
    return out


def base_images(parser, **build_args: str) -> list[str]:
    args = global_args(parser, **build_args)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.split()[0])
            for value, _ in stages(parser)]


def test_base_images_pinned(parser):
    for image in base_images(parser):
        assert image and "latest" not in image
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and re.fullmatch(r"v?\d+(\.\d+)+([-.\w]*)", tag), f"unpinned base {image!r}"
    text = DOCKERFILE.read_text()
    assert "@sha256:" in text, "document digest pinning"


def test_the_vllm_release_is_a_build_argument(parser):
    """VLLM_VERSION picks the base image among the releases the plugin supports (the same list
    as the plugin's range and the contract test's sources); the default is the CPU engine's."""
    sys.path.insert(0, str(REPO / "scripts"))
    import vllm_sources

    from earlytom_vllm.vllm.compat import SUPPORTED_VLLM

    versions = supported_vllm_versions()
    assert versions == ["0.32.0", *vllm_sources.SDISTS]
    low, high = SUPPORTED_VLLM
    assert [tuple(int(p) for p in v.split(".")[:2]) for v in versions] == \
        [(0, m) for m in range(low[1], high[1])]
    assert global_args(parser)["VLLM_VERSION"] == versions[0]
    for version in versions:
        assert set(base_images(parser, VLLM_VERSION=version)) == {f"vllm/vllm-openai:v{version}"}
    # a digest-pinned image still goes through VLLM_IMAGE
    pinned = "vllm/vllm-openai:v0.33.0@sha256:" + "0" * 64
    assert set(base_images(parser, VLLM_IMAGE=pinned)) == {pinned}
    # the runtime stage labels the image with its release
    labels = " ".join(i["value"] for i in final_stage(parser) if i["instruction"] == "LABEL")
    assert 'io.earlytom.vllm-version="${VLLM_VERSION}"' in labels
    assert any(i["instruction"] == "ARG" and i["value"] == "VLLM_VERSION"
               for i in final_stage(parser))


def _release_check(parser) -> str:
    """The runtime stage's ``python3 -c`` that refuses a base image with an unsupported vLLM."""
    runs = " ".join(i["value"] for i in final_stage(parser) if i["instruction"] == "RUN")
    m = re.search(r'python3 -c "([^"]*unsupported_vllm[^"]*)"', runs)
    assert m, "the runtime stage checks the base image's vLLM release"
    return m.group(1)


@pytest.mark.parametrize(("installed", "ok"), [
    ("0.32.0", True), ("0.34.1", True), ("0.31.2", False), ("0.35.0", False)])
def test_a_base_image_with_an_unsupported_vllm_fails_the_build(parser, tmp_path, installed, ok):
    """The check run against a distribution named ``vllm`` at ``installed`` (what the base image
    ships): a release outside the range stops the build with the plugin's message."""
    dist = tmp_path / f"vllm-{installed}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {installed}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", _release_check(parser)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert f"supports vLLM >=0.32,<0.35 (0.32, 0.33, 0.34); this is vLLM {installed}" \
            in done.stderr


def test_non_root_user(parser):
    users = [i["value"].strip() for i in final_stage(parser) if i["instruction"] == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), users
    # the user is created in the same stage
    runs = " ".join(i["value"] for i in final_stage(parser) if i["instruction"] == "RUN")
    assert re.search(rf"useradd\b[^;&]*\b{re.escape(user)}\b", runs)


def test_healthcheck(parser):
    hcs = [i["value"] for i in final_stage(parser) if i["instruction"] == "HEALTHCHECK"]
    assert hcs and "CMD" in hcs[-1] and "NONE" not in hcs[-1].upper().split()
    cmd = exec_form(hcs[-1].split("CMD", 1)[1].strip())
    assert cmd == ["python3", "/opt/earlytom/healthcheck.py"]
    assert re.search(r"--start-period=\d+m", hcs[-1])


def test_entrypoint_runs_earlytom_serve(parser):
    entry = [i["value"] for i in final_stage(parser) if i["instruction"] == "ENTRYPOINT"]
    assert entry, "the base image's `vllm serve` entrypoint must be replaced"
    assert exec_form(entry[-1]) == ["earlytom-serve"]
    cmds = [i["value"] for i in final_stage(parser) if i["instruction"] == "CMD"]
    assert not cmds or exec_form(cmds[-1]) == []


def test_exposes_frontend_and_engine_metrics(parser):
    exposed = set()
    for ins in final_stage(parser):
        if ins["instruction"] == "EXPOSE":
            exposed.update(p.split("/")[0] for p in ins["value"].split())
    assert {"8000", "8001"} <= exposed
    env = parser.envs
    assert env["EARLYTOM_PORT"] == "8000"
    assert env["EARLYTOM_BACKEND_PORT"] == "8001"
    # Prometheus scrapes the engine from another container: it must not bind loopback only
    assert env["EARLYTOM_HOST"] == "0.0.0.0"
    assert env["EARLYTOM_BACKEND_HOST"] == "0.0.0.0"


def test_installs_server_extra_without_dev_tools(parser):
    runs = " ".join(i["value"] for i in final_stage(parser) if i["instruction"] == "RUN")
    assert "[server]" in runs
    for dev in ("[dev]", "pytest", "ruff", "hypothesis", ",dev"):
        assert dev not in runs


def test_env_settings_are_known(parser, monkeypatch):
    env = parser.envs
    names = {k for k in env if k.startswith("EARLYTOM_")}
    known = settings_env_names()
    assert names <= known, f"unknown settings: {sorted(names - known)}"
    assert "EARLYTOM_MODEL" in names
    from earlytom_server.settings import Settings

    for key in list(os.environ):
        if key.startswith("EARLYTOM_"):
            monkeypatch.delenv(key)
    for key in names:
        monkeypatch.setenv(key, env[key])
    settings = Settings()
    assert settings.port == 8000 and settings.backend_port == 8001
    assert settings.earlytom_config.retain_ratio == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# build context
# ------------------------------------------------------------------------------------------------
def test_dockerignore_excludes_the_bulk():
    rules = dockerignore_rules()
    for path in (".venv/bin/python", ".git/HEAD", "tests/deploy/test_x.py", ".cache/x",
                 "earlytom_vllm/__pycache__/config.cpython-311.pyc", "server/__pycache__/a.pyc",
                 "earlytom_vllm.egg-info/PKG-INFO", ".pytest_cache/v", "benchmarks/results/x.json",
                 "docker/k8s/deployment.yaml", "build/lib/x.py", "dist/x.whl"):
        assert dockerignore_excludes(path, rules), path
    for path in ("pyproject.toml", "README.md", "earlytom_vllm/__init__.py",
                 "earlytom_vllm/vllm/plugin.py", "server/settings.py", "docker/healthcheck.py"):
        assert not dockerignore_excludes(path, rules), path


def test_build_context_is_small_and_complete():
    files = build_context_files()
    assert "pyproject.toml" in files and "docker/healthcheck.py" in files
    assert any(f.startswith("earlytom_vllm/") for f in files)
    assert any(f.startswith("server/") for f in files)
    assert not [f for f in files if f.startswith((".venv/", ".git/", "tests/"))]
    size = sum((REPO / f).stat().st_size for f in files)
    assert size < 5 * 1024 * 1024, f"build context is {size} bytes"
    # every file the Dockerfile COPYs from the context is in it
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(\S+)\s", line)
        if m and m.group(1) != ".":
            assert m.group(1) in files, f"COPY {m.group(1)} is excluded by .dockerignore"


def test_builder_stage_wheel(tmp_path):
    """What the builder stage does, on the files the context would hold: `pip wheel .`, then the
    wheel must carry both packages, the earlytom-serve script and the [server] extra."""
    # pyproject.toml names README.md as readme; .dockerignore lets it through (setuptools only
    # warns while it is missing, but says that will become an error).
    ctx = tmp_path / "ctx"
    for rel in build_context_files():
        dst = ctx / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    out = tmp_path / "wheels"
    # --no-build-isolation: use this venv's setuptools instead of downloading one
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "--wheel-dir", str(out), str(ctx)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = list(out.glob("earlytom_vllm-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert "earlytom_vllm/__init__.py" in names
    assert "earlytom_vllm/vllm/plugin.py" in names
    assert "earlytom_server/__init__.py" in names
    if (REPO / "server/cli.py").is_file():
        assert "earlytom_server/cli.py" in names
    missing = sorted(
        f"earlytom_server/{p.relative_to(REPO / 'server')}" for p in (REPO / "server").rglob("*.py")
        if f"earlytom_server/{p.relative_to(REPO / 'server')}" not in names
    )
    assert not missing, f"server modules missing from the wheel: {missing}"
    assert "Provides-Extra: server" in metadata
    assert re.search(r"earlytom-serve\s*=\s*earlytom_server\.cli:main", entry_points)
    assert re.search(r"earlytom\s*=\s*earlytom_vllm\.vllm\.plugin:register", entry_points)
    assert not any(n.startswith("tests/") for n in names)


# ------------------------------------------------------------------------------------------------
# health probe
# ------------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen_auth: list[str | None] = []  # noqa: RUF012

    def do_GET(self):
        type(self).seen_auth.append(self.headers.get("Authorization"))
        body = b'{"status": "ok"}' if self.path == "/health" else b"{}"
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    handler = type("H", (_Handler,), {"status": 200, "seen_auth": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def run_probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_probe_healthy(health_server):
    server, handler = health_server
    port = server.server_address[1]
    assert run_probe({"EARLYTOM_PORT": str(port)}).returncode == 0
    assert handler.seen_auth == [None]


def test_probe_sends_api_key(health_server):
    server, handler = health_server
    result = run_probe({"EARLYTOM_PORT": str(server.server_address[1]), "EARLYTOM_API_KEY": "k"})
    assert result.returncode == 0
    assert handler.seen_auth == ["Bearer k"]


def test_probe_unhealthy(health_server):
    server, handler = health_server
    handler.status = 503
    result = run_probe({"EARLYTOM_PORT": str(server.server_address[1])})
    assert result.returncode == 1 and "503" in result.stderr


def test_probe_nothing_listening():
    result = run_probe({"EARLYTOM_PORT": str(free_port()), "EARLYTOM_HEALTH_TIMEOUT": "2"})
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_probe_default_url():
    sys.path.insert(0, str(HEALTHCHECK_SCRIPT.parent))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(HEALTHCHECK_SCRIPT.parent))
    assert healthcheck.health_url({}) == "http://127.0.0.1:8000/health"
    assert healthcheck.health_url({"EARLYTOM_PORT": "9"}) == "http://127.0.0.1:9/health"
    assert Path(healthcheck.__file__).resolve() == HEALTHCHECK_SCRIPT.resolve()
