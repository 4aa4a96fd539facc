"""What the benchmarks compare: the library's methods (chosen per request) and the arms that
are vLLM's own engines (server-wide settings, so each runs on an engine or server of its own).

Method names are the library's (:data:`earlytom_vllm.config.METHODS`); the only names defined
here are the vLLM arms. The TTFT benchmark's cells and the throughput benchmark's arms are
built here from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from earlytom_vllm import config as _library
from earlytom_vllm.families import Family

#: The library's methods in table order: full tokens first, EarlyTom last.
METHODS: tuple[str, ...] = (
    "none", *(m for m in _library.METHODS if m not in ("none", "earlytom")), "earlytom")

#: vLLM's own pruning (``--video-pruning-method m --video-pruning-rate q``): server-wide, so each
#: runs on an engine of its own (the family's vLLM architecture, same checkpoint) at the q whose
#: kept count is EarlyTom's. Arm -> vLLM's method name; a family runs the methods its vLLM
#: classes support (``Family.vllm_pruning``).
VLLM_EVS = "vllm_evs"
VLLM_VIDCOM2 = "vllm_vidcom2"
VLLM_METHOD = {VLLM_EVS: "evs", VLLM_VIDCOM2: "vidcom2"}
VLLM_ARMS: tuple[str, ...] = tuple(VLLM_METHOD)
ALL_ARMS: tuple[str, ...] = (*METHODS, *VLLM_ARMS)

#: For tables and plots.
LABELS = {"none": "full tokens", "post_encoder": "post-encoder", "evs": "EVS",
          "earlytom": "EarlyTom", VLLM_EVS: "vLLM EVS", VLLM_VIDCOM2: "vLLM VidCom2"}
SHORT = {"none": "none", "post_encoder": "post", "evs": "evs", VLLM_EVS: "vLLM-evs",
         VLLM_VIDCOM2: "vLLM-vidcom2"}
COLORS = {"none": "#7f7f7f", "post_encoder": "#1f77b4", "evs": "#ff7f0e",
          "earlytom": "#d62728", VLLM_EVS: "#2ca02c", VLLM_VIDCOM2: "#9467bd"}


def vllm_arms(family: Family) -> tuple[str, ...]:
    """The vLLM arms ``family`` can run (its vLLM classes' own pruning methods)."""
    return tuple(arm for arm, method in VLLM_METHOD.items() if method in family.vllm_pruning)


def family_arms(family: Family) -> tuple[str, ...]:
    """A family's default arms, in table order: where vLLM prunes this family itself, full
    tokens, vLLM's arms and EarlyTom (its same-budget peers); else every library method."""
    if family.vllm_pruning:
        return ("none", *vllm_arms(family), "earlytom")
    return METHODS


def check_arms(arms: Sequence[str], family: Family) -> str | None:
    """Why ``arms`` cannot run for ``family`` (None: they can)."""
    for arm in arms:
        if arm not in ALL_ARMS:
            return f"unknown method {arm!r} (choose from {', '.join(ALL_ARMS)})"
        if arm in VLLM_ARMS and arm not in vllm_arms(family):
            return (f"{arm}: vLLM has no {VLLM_METHOD[arm]} video pruning for {family.title} "
                    f"(it has: {', '.join(family.vllm_pruning) or 'none'})")
    return None


def earlytom_field(method: str, ratio: float | None) -> dict[str, Any]:
    """A request's per-request compression settings (the front end's ``earlytom`` body field,
    the engine's ``mm_processor_kwargs["earlytom"]``)."""
    if method == "none" or ratio is None:
        return {"method": method}
    return {"method": method, "retain_ratio": ratio}


# --------------------------------------------------------------------------------------------------
# TTFT cells: (method, ratio, prune layers) with stable labels

PLUGIN = "plugin"  # the engine of the per-request methods: the plugin architecture, trace on


def cell_label(method: str, ratio: float | None, prune_layers: Sequence[int] | None) -> str:
    """``none``, ``evs@0.10``, ``earlytom@0.25``, ``earlytom[4,14,24]@0.10``."""
    if method == "none":
        return "none"
    tag = f"[{','.join(map(str, prune_layers))}]" if prune_layers else ""
    return f"{method}{tag}@{ratio:.2f}"


def build_cells(methods: Sequence[str], ratios: Sequence[float],
                extra_prune_layers: Sequence[tuple[int, ...]],
                serving_prune_layers: Sequence[int]) -> list[dict[str, Any]]:
    """The TTFT cells to time. A cell's ``engine`` names the engine that serves it
    (:data:`PLUGIN`, or the cell's label for a vLLM arm: one engine per ratio)."""
    cells: list[dict[str, Any]] = []
    if "none" in methods:
        cells.append({"method": "none", "ratio": None, "prune_layers": None,
                      "setting": "full tokens"})
    for r in ratios:
        for m in methods:
            if m == "none":
                continue
            setting = {"earlytom": "serving default",
                       VLLM_EVS: "vLLM's own EVS (own engine, stock architecture)",
                       VLLM_VIDCOM2: "vLLM's own VidCom2 (own engine, stock architecture)"}
            cells.append({"method": m, "ratio": r,
                          "prune_layers": list(serving_prune_layers) if m == "earlytom"
                          else None, "setting": setting.get(m, "baseline")})
        if "earlytom" in methods:
            for layers in extra_prune_layers:
                cells.append({"method": "earlytom", "ratio": r, "prune_layers": list(layers),
                              "setting": "paper's alternative prune layers (not the default)"})
    for c in cells:
        extra = c["setting"].startswith("paper")
        c["label"] = cell_label(c["method"], c["ratio"], c["prune_layers"] if extra else None)
        c["extra"] = extra
        c["engine"] = c["label"] if c["method"] in VLLM_ARMS else PLUGIN
    return cells


def request_kwargs(cell: dict[str, Any]) -> dict[str, Any] | None:
    """A TTFT cell's ``mm_processor_kwargs`` (None for a vLLM arm: its engine is stock)."""
    if cell["method"] in VLLM_ARMS:
        return None
    et = earlytom_field(cell["method"], cell["ratio"])
    if cell["extra"]:
        et["prune_layers"] = list(cell["prune_layers"])
    return {"earlytom": et}


# --------------------------------------------------------------------------------------------------
# Throughput arms: a method at a ratio, and the server it goes to


@dataclass(frozen=True)
class Arm:
    """One compared setting of the throughput benchmark."""

    label: str  # the JSON's "method": "earlytom", or "earlytom@0.15" when a run has several ratios
    method: str  # a library method (per request) or a vLLM arm (server-wide)
    ratio: float | None  # None: full tokens
    server: str  # "main" (the plugin architecture), or the vLLM arm's server key (its label)

    def earlytom_field(self) -> dict[str, Any] | None:
        """The request's ``earlytom`` body field (None for a vLLM arm: a stock model)."""
        if self.method in VLLM_ARMS:
            return None
        return earlytom_field(self.method, 1.0 if self.ratio is None else self.ratio)


def build_arms(methods: Sequence[str], ratios: Sequence[float]) -> list[Arm]:
    """Full tokens once, then every other method at each ratio (labels ``m@r`` with several)."""
    tag = len(ratios) > 1
    arms = [Arm("none", "none", None, "main")] if "none" in methods else []
    for r in ratios:
        for m in methods:
            if m == "none":
                continue
            label = f"{m}@{r:.2f}" if tag else m
            arms.append(Arm(label, m, r, label if m in VLLM_ARMS else "main"))
    return arms


def split_label(label: str) -> tuple[str, str | None]:
    """``earlytom@0.15`` -> ("earlytom", "0.15"); ``earlytom`` -> ("earlytom", None)."""
    method, _, ratio = label.partition("@")
    return method, ratio or None
