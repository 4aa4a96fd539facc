"""``earlytom-serve``'s flags are generated from ``Settings``: every setting has a flag and an
environment variable, ``--help`` shows each default, and no name means two things."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from earlytom_server.cli import build_parser, env_name, flag_names, settings_from_args
from earlytom_server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).with_name("earlytom-serve"))


def all_option_strings() -> dict[str, str]:
    """flag -> dest over the whole parser."""
    out = {}
    for action in build_parser()._actions:
        for opt in action.option_strings:
            assert opt not in out, f"flag {opt} defined twice"
            out[opt] = action.dest
    return out


def test_every_setting_has_a_flag_and_an_env_var():
    flags = all_option_strings()
    for name, field in Settings.model_fields.items():
        primary = flag_names(name, field)[0]
        assert flags.get(primary) == name, f"{name}: no flag {primary}"
        assert env_name(name) == f"EARLYTOM_{name.upper()}"
        assert field.description, f"{name}: no docstring (it is the --help text)"


def test_help_shows_every_flag_env_var_and_default():
    out = subprocess.run([SERVE, "--help"], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    # one block per option: from its "  --flag" line to the next option or group
    blocks: dict[str, str] = {}
    current = None
    for line in out.stdout.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif line.startswith("    ") and current:
            blocks[current] += " " + line.strip()
        else:
            current = None
    for name, field in Settings.model_fields.items():
        primary = flag_names(name, field)[0]
        assert primary in blocks, f"--help lacks {primary}"
        assert f"[{env_name(name)}; default: " in blocks[primary], blocks[primary]


def test_no_flag_means_two_things():
    flags = all_option_strings()
    dests: dict[str, set[str]] = {}
    for opt, dest in flags.items():
        dests.setdefault(opt, set()).add(dest)
    assert all(len(d) == 1 for d in dests.values())
    # env names are one per field (case-insensitive)
    envs = [env_name(n) for n in Settings.model_fields]
    assert len(envs) == len(set(envs))


def test_the_container_probe_reads_no_server_setting_under_another_meaning():
    """docker/healthcheck.py's own variables (its timeout, its URL) are not Settings names; the
    ones it shares with the server (port, API key) mean the same thing."""
    tree = ast.parse((ROOT / "docker" / "healthcheck.py").read_text())
    names = {node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value.startswith("EARLYTOM_")}
    settings = {env_name(n) for n in Settings.model_fields}
    assert names & settings == {"EARLYTOM_PORT", "EARLYTOM_API_KEY"}
    assert "EARLYTOM_HEALTH_TIMEOUT" in names and "EARLYTOM_HEALTH_TIMEOUT" not in settings


def test_existing_flags_keep_working(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("EARLYTOM_")]:
        monkeypatch.delenv(key)
    s = settings_from_args([
        "--backend", "http://a:1", "--backend", "http://b:2/", "--retain-ratio", "0.25",
        "--kv-cache-space", "3", "--quiet-backend", "--no-enforce-eager", "--no-earlytom-arch",
        "--backend-arg", "--seed 3", "--backend-arg=--foo", "--max-in-flight", "7",
        "--drain-grace", "1.5", "--allow-private-urls",
    ])
    assert s.backends == ["http://a:1", "http://b:2"]
    assert s.compression == {"retain_ratio": 0.25}
    assert s.kv_cache_space_gib == 3 and s.backend_log is False
    assert s.enforce_eager is False and s.earlytom_arch is False
    assert s.backend_args == ["--seed", "3", "--foo"]
    assert s.max_in_flight == 7 and s.drain_grace == 1.5 and s.allow_private_urls is True
    assert settings_from_args(["--no-compression"]).earlytom_config.compresses is False
    assert settings_from_args(["--backend-log"]).backend_log is True


def test_flags_win_over_env(monkeypatch):
    monkeypatch.setenv("EARLYTOM_MAX_QUEUED", "5")
    monkeypatch.setenv("EARLYTOM_BACKEND_HEALTH_TIMEOUT", "2.5")
    assert settings_from_args([]).max_queued == 5
    assert settings_from_args([]).backend_health_timeout == 2.5
    assert settings_from_args(["--max-queued", "9"]).max_queued == 9


@pytest.mark.parametrize("argv, field", [
    (["--port", "70000"], "port"),
    (["--max-in-flight", "0"], "max_in_flight"),
    (["--compression", "{not json"], "compression"),
    (["--header-timeout", "soon"], "header_timeout"),
])
def test_bad_values_name_the_setting(argv, field):
    with pytest.raises(ValueError, match=field):
        settings_from_args(argv)
