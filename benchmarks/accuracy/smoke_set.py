"""The accuracy smoke set (``smoke_set.json``): six multiple-choice questions about deterministic
synthetic videos, shared by the plumbing smoke run (``smoke``) and the lmms-eval recipe run
(``lmms_eval_smoke``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.harness import synthetic_video

DEFAULT_SET = Path(__file__).resolve().parent / "smoke_set.json"
LETTERS = "ABCD"


def load_set(path: Path = DEFAULT_SET) -> dict[str, Any]:
    data = json.loads(path.read_text())
    for item in data["items"]:
        if item["answer"] not in LETTERS:
            raise ValueError(f"{item['id']}: answer must be one of {LETTERS}")
    return data


def render_video(spec: dict[str, Any], frames: int, size: int):
    """A question's video ``{"kind", "seed"[, "num_scenes"]}`` as RGB uint8 ``[frames, size,
    size, 3]``."""
    return synthetic_video(spec["kind"], frames, size=size, seed=int(spec["seed"]),
                           num_scenes=int(spec.get("num_scenes", 3)))


def question_text(data: dict[str, Any], item: dict[str, Any]) -> str:
    """The question, its four options and the answer instruction, one per line."""
    question = item.get("question", data["question"])
    options = item.get("options", data["options"])
    instruction = item.get("instruction", data["instruction"])
    return "\n".join([question, *options, instruction])
