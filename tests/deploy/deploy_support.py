"""Helpers shared by the deployment tests (tests/deploy): paths, the dashboard's PromQL, a real
Prometheus process, Grafana variable substitution, and a .dockerignore matcher.

Prometheus and promtool are Debian's binaries (``scripts/install_prometheus.sh``). Without them the
tests that need them are skipped locally and fail under CI (``CI`` set; ``tests/ci_policy.py``), so a
CI machine that lost the install step cannot pass silently.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DATA = Path(__file__).resolve().parent / "data"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DOCKER / "compose.yaml"
PROM_DIR = DOCKER / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES_DIR = PROM_DIR / "rules"
GRAFANA_DIR = DOCKER / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "earlytom.json"
DATASOURCES_DIR = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = GRAFANA_DIR / "provisioning" / "dashboards"
K8S_DIR = DOCKER / "k8s"

#: The front end's metric contract (server/metrics.py; names as exposed).
FRONTEND_METRICS = {
    "earlytom_time_to_first_token_seconds": "histogram",
    "earlytom_request_duration_seconds": "histogram",
    "earlytom_e2e_request_latency_seconds": "histogram",
    "earlytom_non_streaming_request_latency_seconds": "histogram",
    "earlytom_output_tokens_total": "counter",
    "earlytom_prompt_tokens_total": "counter",
    "earlytom_requests_total": "counter",
    "earlytom_requests_in_flight": "gauge",
    "earlytom_backend_up": "gauge",
}
#: The engine's earlytom_* metrics (earlytom_vllm/metrics.py, on vLLM's /metrics: the vllm job).
ENGINE_METRICS = {
    "earlytom_visual_tokens_before_total": "counter",
    "earlytom_visual_tokens_after_total": "counter",
}

METRIC_TOKEN = re.compile(r"\b(earlytom_[a-z0-9_]+|vllm:[a-z0-9_:]+)")


# ------------------------------------------------------------------------------------------------
# tools
# ------------------------------------------------------------------------------------------------
def require_binary(name: str) -> str:
    """Path of ``name``; skip when missing (a failure under CI, see tests/ci_policy.py: the
    install step must have run)."""
    path = shutil.which(name)
    if path:
        return path
    pytest.skip(f"{name} not found: run scripts/install_prometheus.sh (Debian package 'prometheus')")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ------------------------------------------------------------------------------------------------
# dashboard
# ------------------------------------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard) if p.get("type") != "row"]


@dataclass(frozen=True)
class PanelTarget:
    panel: str
    ref_id: str
    expr: str

    @property
    def label(self) -> str:
        return f"{self.panel} [{self.ref_id}]"

    @property
    def metrics(self) -> set[str]:
        return set(METRIC_TOKEN.findall(self.expr))


def panel_targets(dashboard: dict[str, Any] | None = None) -> list[PanelTarget]:
    dashboard = dashboard if dashboard is not None else load_dashboard()
    out = []
    for panel in data_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(PanelTarget(panel["title"], target.get("refId", "?"), target.get("expr", "")))
    return out


def template_variables(dashboard: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    dashboard = dashboard if dashboard is not None else load_dashboard()
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query or var.get("definition", ""))


LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.*),\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$")


def label_values_as_promql(query: str) -> tuple[str, str]:
    """Grafana's ``label_values(selector, label)`` as an equivalent instant query + the label."""
    m = LABEL_VALUES.match(query)
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    selector = (m.group("selector") or "").strip()
    label = m.group("label")
    if not selector:
        raise ValueError(f"label_values() without a selector scans every series: {query!r}")
    return f"count by ({label}) ({selector})", label


def substitute(expr: str, values: dict[str, str] | None = None, *,
               rate_interval: str = "15s", interval: str = "5s", range_: str = "5m") -> str:
    """Replace Grafana's built-in and template variables the way Grafana does before a query.

    ``values`` maps template variable names to their *regex* value (multi/All variables are used
    with ``=~``; Grafana's ``allValue`` here is ``.*``).
    """
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "__range_s": str(int(_duration_seconds(range_))),
        "__interval_ms": str(int(_duration_seconds(interval) * 1000)),
    }
    table = {**builtins, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group("b") or m.group("n") or m.group("s")
        if name not in table:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return table[name]

    out = re.sub(r"\$\{(?P<b>\w+)(?::\w+)?\}|\[\[(?P<s>\w+)\]\]|\$(?P<n>\w+)", repl, expr)
    assert "$" not in out, out
    return out


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * units[m.group(2)]


# ------------------------------------------------------------------------------------------------
# a real Prometheus
# ------------------------------------------------------------------------------------------------
def shipped_scrape_job(job: str) -> dict[str, Any]:
    for cfg in load_yaml(PROM_CONFIG)["scrape_configs"]:
        if cfg["job_name"] == job:
            return cfg
    raise KeyError(job)


def scrape_configs_for(jobs: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Scrape configs for a test Prometheus: the shipped jobs (same name, path and relabelling)
    with their file_sd targets replaced by ``jobs[name]`` (host:port list)."""
    configs = []
    for job, targets in jobs.items():
        shipped = dict(shipped_scrape_job(job))
        shipped.pop("file_sd_configs", None)
        shipped["static_configs"] = [{"targets": list(targets)}]
        configs.append(shipped)
    return configs


class Prometheus:
    """A throw-away Prometheus (Debian binary) on a free loopback port."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], *,
                 rule_files: list[Path] | None = None, interval: str = "1s") -> None:
        self.binary = require_binary("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "rule_files": [str(p) for p in (rule_files or [])],
            "scrape_configs": scrape_configs,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self, timeout: float = 60.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.25)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP API ------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            return json.loads(exc.read())

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a finite sample."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.query(expr)
            if last.get("status") == "success" and finite_samples(last):
                return last["data"]["result"]
            time.sleep(0.5)
        raise AssertionError(f"{expr!r} returned no finite sample in {timeout}s: {last}\n{self.log()}")


def finite_samples(response: dict[str, Any]) -> list[float]:
    data = response.get("data") or {}
    values: list[float] = []
    if data.get("resultType") == "vector":
        for item in data.get("result", []):
            v = float(item["value"][1])
            if math.isfinite(v):
                values.append(v)
    elif data.get("resultType") == "scalar":
        v = float(data["result"][1])
        if math.isfinite(v):
            values.append(v)
    return values


# ------------------------------------------------------------------------------------------------
# .dockerignore (Docker's semantics: last matching pattern wins; a pattern that matches a parent
# directory matches everything under it; ``**`` spans directories; ``!`` re-includes)
# ------------------------------------------------------------------------------------------------
def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.index("]", i)
            cls = pattern[i + 1:j]
            if cls.startswith("!") or cls.startswith("^"):
                cls = "^" + cls[1:]
            out.append(f"[{cls}]")
            i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = os.path.normpath(line.lstrip("/"))
        if line == ".":
            continue
        rules.append((negate, _glob_to_regex(line)))
    return rules


def dockerignore_excludes(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def build_context_files(root: Path = REPO) -> list[str]:
    """Relative paths of the files ``docker build`` would send from ``root``."""
    rules = dockerignore_rules(root / ".dockerignore")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        # prune directories that are excluded and can't be re-included by a later "!" rule
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d in (".git", ".venv") and dockerignore_excludes(rel, rules):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not dockerignore_excludes(rel, rules):
                files.append(rel)
    return sorted(files)


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def settings_env_names() -> set[str]:
    """EARLYTOM_* names earlytom-serve reads (one per Settings field)."""
    from earlytom_server.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "EARLYTOM_")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def interpolate_compose(value: str, env: dict[str, str] | None = None) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` interpolation."""
    env = env or {}

    def repl(m: re.Match[str]) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            if name not in env:
                raise KeyError(name)
            return env[name]
        return env.get(name, "")

    return re.sub(r"\$\{(\w+)(?:(:-|-|:\?|\?)([^}]*))?\}", repl, value)


def supported_vllm_versions() -> list[str]:
    """The vLLM releases the Dockerfile lists for its VLLM_VERSION build argument (its
    ``#   VLLM_VERSION: a | b | c`` line), the first being the default."""
    m = re.search(r"^#\s+VLLM_VERSION: (.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert m, "the Dockerfile lists the supported VLLM_VERSION values"
    return [v.strip() for v in m.group(1).split("|")]
