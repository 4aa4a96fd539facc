"""The published API is the API served: schemathesis (``st run``, every check on) against a live
front end on the fake backend, from the ``/openapi.json`` it serves by default.

Every operation gets ``SCHEMATHESIS_EXAMPLES`` generated cases per phase (examples, coverage,
fuzzing), valid ones (each must be accepted: 2xx, or 404 for an unknown model) and invalid ones
(each must be refused with a 4xx), and every answer must conform to the document: its status
listed, its content type and body as declared, the declared headers there; without the API key a
keyed route must answer 401. The seed is fixed (``SCHEMATHESIS_SEED``) and printed in the
report, so a failure reproduces; ``make fuzz-long`` runs many more cases. What a JSON Schema cannot
express (media bytes that decode, sorted prune layers) is filled in by ``schemathesis_hooks.py``
for the valid cases only. The real engine's run is in ``test_engine_e2e.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261206"))
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))
API_KEY = "schemathesis-key"


def run_schemathesis(url: str, workdir: Path, *, examples: int, seed: int, timeout: float,
                     headers: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    """``st run URL/openapi.json --checks all`` with bounded examples and a fixed seed, in
    ``workdir`` (its cache of past failures starts empty); fails the test (with schemathesis'
    report) unless every check passed. Its report, on success."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
           "--checks", "all", "--max-examples", str(examples), "--seed", str(seed),
           "--workers", "1", "--request-timeout", "60", "--continue-on-failure"]
    for header in headers:
        cmd += ["--header", header]
    run_env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               "NO_COLOR": "1", "COLUMNS": "120", **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                         cwd=workdir, env=run_env)
    report = out.stdout + out.stderr
    assert out.returncode == 0, f"schemathesis (seed {seed}) found failures:\n{report[-12000:]}"
    assert f"Seed: {seed}" in report, report[-3000:]
    generated = re.search(r"(\d+) generated", report)
    assert generated is not None and int(generated.group(1)) > 0, report[-3000:]
    return report


def test_the_served_api_conforms_to_its_schema(fake_backend, make_front, tmp_path):
    front = make_front(backends=[fake_backend.url], api_key=API_KEY)
    report = run_schemathesis(front.url, tmp_path, examples=EXAMPLES, seed=SEED, timeout=600,
                              headers=(f"Authorization: Bearer {API_KEY}",))
    tested = re.search(r"Tested: (\d+)", report)
    assert tested is not None and int(tested.group(1)) == 8, report[-3000:]
    # the generated requests reached the backend (valid ones were accepted, not all refused)
    kinds = {path for path, _ in fake_backend.app.state.relayed}
    assert {"/v1/completions", "/tokenize", "/detokenize"} <= kinds
    parts = {part.get("type") for body in fake_backend.app.state.received
             for message in body["messages"] if isinstance(message.get("content"), list)
             for part in message["content"]}
    assert {"text", "image_url", "video_url"} <= parts, parts  # media checked and forwarded


def test_openapi_and_docs_are_served_by_default_and_offline(client):
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.") and "/v1/chat/completions" in schema["paths"]
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text and "https://" not in r.text  # nothing from the network
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', r.text)
        assert assets
        for asset in assets:
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 1000, asset


def test_no_expose_openapi_turns_them_off(fake_backend, make_front):
    front = make_front(backends=[fake_backend.url], expose_openapi=False)
    with httpx.Client(base_url=front.url) as c:
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/assets/swagger-ui.css"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "hi"}], "seed": False}, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "0.5"}, "temperature"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "not a url"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "hi"}], "earlytom": {"bogus": 1}},
     "earlytom.bogus"),
])
def test_what_the_schema_refuses_the_server_refuses(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_integral_numbers_are_integers(client, fake_backend):
    """JSON has one number type: ``2.0`` is the integer 2 (JSON Schema's ``integer`` too)."""
    r = client.post("/v1/chat/completions", content=b'{"messages": [{"role": "user", '
                    b'"content": "hi"}], "seed": 7.0, "max_tokens": 2.0, "earlytom": '
                    b'{"max_window": 3.0}}', headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    sent = fake_backend.app.state.received[-1]
    assert sent["seed"] == 7 and type(sent["seed"]) is int and type(sent["max_tokens"]) is int
