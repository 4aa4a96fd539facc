"""Schemathesis hooks for the runs of ``test_frontend_schemathesis.py`` (``SCHEMATHESIS_HOOKS``).

What JSON Schema cannot say, and so what schemathesis cannot generate, is filled in here for the
requests it generates as *valid* (positive), so that a 400 for them is a real disagreement:

- a media URL that matches the published pattern gets real bytes: a small PNG (image parts) or an
  mp4 (video parts) as a data URL (the pattern stands for http(s) and file URLs too: the fuzzer
  never fetches anything from the network);
- ``prune_layers`` is sorted (the schema says "strictly increasing" in words; it has unique
  items).

Against the real engine (``SCHEMATHESIS_ENGINE``: a JSON object of the served model's facts), also
what depends on the model, and bounds that keep the run short: prune layers below the encoder
``depth``, token ids below ``vocab``, at most ``images`` images and ``videos`` videos a request
(vLLM's ``--limit-mm-per-prompt``, counted across messages), at most ``max_tokens`` generated
tokens and ``n`` choices.

Requests generated as invalid (negative) are sent as generated.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from frontend_fakes import png_bytes, write_mp4

from earlytom_server.schemas import media_url_pattern

_PATTERNS = {kind: re.compile(media_url_pattern(kind)) for kind in ("image", "video")}
#: The served model's facts and the run's bounds (the engine run); empty: the fake backend.
_ENGINE: dict[str, int] = json.loads(os.environ.get("SCHEMATHESIS_ENGINE") or "{}")


def _samples() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = write_mp4(Path(tmp) / "clip.mp4", frames=4, size=(32, 32)).read_bytes()
    return {"image": "data:image/png;base64," + base64.b64encode(png_bytes()).decode(),
            "video": "data:video/mp4;base64," + base64.b64encode(mp4).decode()}


_SAMPLES = _samples()


def _fill_media(messages: Any) -> None:
    left = {kind: _ENGINE.get(f"{kind}s", -1) for kind in ("image", "video")}  # -1: no limit
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in list(content) if isinstance(content, list) else ():
            for kind in ("image", "video"):
                media = part.get(f"{kind}_url") if isinstance(part, dict) else None
                url = media.get("url") if isinstance(media, dict) else None
                if isinstance(url, str) and _PATTERNS[kind].match(url):
                    if left[kind] == 0:
                        content.remove(part)
                        continue
                    left[kind] -= 1
                    media["url"] = _SAMPLES[kind]


def _integral(values: Any) -> bool:
    return isinstance(values, list) and all(
        type(v) in (int, float) and float(v).is_integer() for v in values)  # 7.0 is 7


def _fix_layers(settings: Any) -> None:
    layers = settings.get("prune_layers") if isinstance(settings, dict) else None
    if _integral(layers):
        depth = _ENGINE.get("depth")
        settings["prune_layers"] = sorted({int(v) % depth if depth else int(v) for v in layers})


def _fix_tokens(body: dict[str, Any], key: str) -> None:
    vocab = _ENGINE.get("vocab")
    value = body.get(key)
    if vocab and _integral(value):
        body[key] = [int(v) % vocab for v in value]
    elif vocab and isinstance(value, list) and all(_integral(v) for v in value):
        body[key] = [[int(t) % vocab for t in v] for v in value]


def _bound_generation(body: dict[str, Any]) -> None:
    for key, bound in (("max_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens"),
                       ("n", "n")):
        limit = _ENGINE.get(bound)
        present = body.get(key) is not None
        if limit is None or (key == "max_completion_tokens" and not present):
            continue
        if not present or body[key] > limit:
            body[key] = limit


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    body = case.body
    if meta is None or not meta.generation.mode.is_positive or not isinstance(body, dict):
        return
    _fill_media(body.get("messages"))
    _fix_layers(body.get("earlytom"))
    mm = body.get("mm_processor_kwargs")
    _fix_layers(mm.get("earlytom") if isinstance(mm, dict) else None)
    for key in ("prompt", "tokens"):
        _fix_tokens(body, key)
    if _ENGINE and case.operation.method.upper() == "POST" and case.operation.path.startswith(
            "/v1/"):
        _bound_generation(body)
