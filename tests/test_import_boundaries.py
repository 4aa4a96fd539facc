"""The core stays pure torch: importing it never pulls in vLLM, transformers or FastAPI, and no
source file of the core (or the config) imports them, not even lazily inside a function."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import earlytom_vllm
import earlytom_vllm.core

FORBIDDEN = ("vllm", "transformers", "fastapi")
PACKAGE_DIR = Path(earlytom_vllm.__file__).resolve().parent
CORE_DIR = PACKAGE_DIR / "core"


def core_modules() -> list[str]:
    names = ["earlytom_vllm.core"]
    names += [f"earlytom_vllm.core.{m.name}"
              for m in pkgutil.iter_modules(earlytom_vllm.core.__path__)]
    return names


def pure_sources() -> list[Path]:
    return [*sorted(CORE_DIR.rglob("*.py")), PACKAGE_DIR / "config.py", PACKAGE_DIR / "__init__.py"]


def test_core_has_the_expected_modules():
    mods = set(core_modules())
    for name in ("budget", "temporal", "attention", "selection", "encoder", "baselines"):
        assert f"earlytom_vllm.core.{name}" in mods


def test_importing_the_core_loads_no_serving_framework():
    modules = ["earlytom_vllm", "earlytom_vllm.config", *core_modules()]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the core loaded {loaded}"


def _imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):  # every depth: lazy imports inside functions count too
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__", "find_spec") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


def test_no_core_source_imports_a_serving_framework():
    offenders = []
    sources = pure_sources()
    assert len(sources) >= 8
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported_roots(tree):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(PACKAGE_DIR)}:{line} imports {module}")
    assert not offenders, offenders


def test_the_ast_scan_catches_lazy_imports():
    tree = ast.parse(
        "def f():\n    import vllm.engine\n"
        "def g():\n    from transformers import AutoModel\n"
        "def h():\n    importlib.import_module('fastapi')\n"
    )
    roots = {m.split(".")[0] for _, m in _imported_roots(tree)}
    assert roots == set(FORBIDDEN)


def test_counting_and_request_validation_import_no_torch():
    """The count and the request check run in the front end, which must not pay for torch: the
    config, the plan and the budget import nothing heavy, and neither does the front end's app."""
    code = (
        "import json, sys\n"
        "from earlytom_vllm.config import EarlyTomConfig, request_config\n"
        "from earlytom_vllm.plan import VideoPlan, video_rows\n"
        "from earlytom_vllm.core.budget import video_token_count\n"
        "import earlytom_server.app\n"
        "cfg = request_config(EarlyTomConfig(), {'retain_ratio': 0.25})\n"
        "assert video_rows(32, cfg, 196, 1) == 32 * 49 + 1\n"
        "assert VideoPlan.decode(VideoPlan(8, 196, 1, cfg).encode()).rows == 8 * 49 + 1\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'vllm', 'transformers', 'numpy'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
