"""Known vulnerabilities of the installed environment from PyPI's project JSON, where pip-audit
cannot run.

pip-audit asks PyPI for ``/pypi/<name>/<version>/json``; where that per-release endpoint is not
served (a package mirror; docs/reliability.md shows the evidence) every package is skipped. PyPI's
project endpoint ``/pypi/<name>/json`` still lists the known vulnerabilities of the LATEST
release, each with the versions that fix it. So for every installed distribution that IS the
latest release this is PyPI's own answer; the others are listed as not checkable here.

    .venv/bin/python scripts/audit_latest.py [--json out.json]

Exit status 1 when a checked package has a known vulnerability, 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

INDEX = "https://pypi.org/pypi"


def project(name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{INDEX}/{name}/json", timeout=30) as r:
            return json.load(r)
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None


def check(dist: importlib.metadata.Distribution) -> dict:
    name, version = dist.metadata["Name"], dist.version
    data = project(name)
    if data is None:
        return {"name": name, "version": version, "status": "not on PyPI or unreachable"}
    latest = data["info"]["version"]
    if latest != version:
        return {"name": name, "version": version, "latest": latest,
                "status": "not the latest release: not checkable here"}
    vulns = [{"id": v.get("id"), "aliases": v.get("aliases"), "fixed_in": v.get("fixed_in")}
             for v in data.get("vulnerabilities") or []]
    return {"name": name, "version": version, "status": "checked", "vulns": vulns}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--json", default=None, help="write every package's result here")
    args = p.parse_args(argv)
    dists = {d.metadata["Name"].lower(): d for d in importlib.metadata.distributions()
             if d.metadata["Name"]}
    with ThreadPoolExecutor(8) as pool:
        results = sorted(pool.map(check, dists.values()), key=lambda r: r["name"].lower())
    checked = [r for r in results if r["status"] == "checked"]
    found = [r for r in checked if r["vulns"]]
    print(f"{len(results)} installed distributions: {len(checked)} are the latest release and "
          f"were checked, {len(results) - len(checked)} could not be checked here")
    for r in found:
        print(f"VULNERABLE {r['name']} {r['version']}: {r['vulns']}")
    if not found:
        print("no known vulnerability in the checked packages")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "checked": len(checked), "vulnerable": found}, f,
                      indent=1)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
