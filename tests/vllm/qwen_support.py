"""What the Qwen engine test modules share: the chat prompt around media, the exact count they
check the library's against, and the family's tiny checkpoint."""

from __future__ import annotations

import math
from fractions import Fraction


def chat_prompt(*media: str, question: str = "What happens?", system: str | None = None) -> str:
    """One user turn with ``media`` (each a placeholder string) before the question."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return (f"{head}<|im_start|>user\n{''.join(media)}{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def exact_count(slices: int, per_slice: int, r: float) -> int:
    """``t * ceil((h/2)(w/2) * r)`` in exact arithmetic (independent of the library's guard)."""
    return slices * math.ceil(per_slice * Fraction(str(r)))


def plugin_overrides(arch: str, ratio: float, **earlytom) -> dict:
    """``--hf-overrides`` for the plugin architecture ``arch`` with ``trace`` on: the tests read
    the model's per-video traces and positions (serving leaves it off)."""
    return {"architectures": [arch], "earlytom": {"retain_ratio": ratio, "trace": True, **earlytom}}
