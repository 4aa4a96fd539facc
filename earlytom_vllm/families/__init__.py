"""The model-family registry: everyone who needs a family fact asks here.

The plugin registers every family's architectures; the processor and model adapters read their
family's defaults and counts; the front end and supervisor pick a family from a checkpoint's
config; the checkpoint builder, FLOPs and the benchmarks read recipes and geometry. Adding a
family = one module here (a :class:`Family` value named ``FAMILY``), its adapter under
``earlytom_vllm/vllm/``, and its name in :data:`FAMILY_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from earlytom_vllm.families.base import (
    BenchmarkSpec,
    CheckpointRecipe,
    Family,
    config_value,
    evs_kept,
    rate_for_count,
    vidcom2_kept,
    vllm_kept,
)

#: Registered families, in order of preference where a checkpoint names none of them.
FAMILY_MODULES = ("llava_onevision", "qwen2_5_vl", "qwen3_vl")
#: The family served when a checkpoint's config cannot be read (the embedded default).
DEFAULT_FAMILY = "llava_onevision"

__all__ = ["BenchmarkSpec", "CheckpointRecipe", "Family", "all_families", "architectures",
           "by_architecture", "config_value", "evs_kept", "family_for_config", "get",
           "rate_for_count", "vidcom2_kept", "vllm_kept"]


@cache
def all_families() -> tuple[Family, ...]:
    return tuple(importlib.import_module(f"{__name__}.{m}").FAMILY for m in FAMILY_MODULES)


def get(name: str) -> Family:
    """The family called ``name`` (``llava_onevision``, ``qwen2_5_vl``, ...)."""
    for family in all_families():
        if family.name == name:
            return family
    known = ", ".join(f.name for f in all_families())
    raise ValueError(f"unknown model family {name!r} (known: {known})")


def architectures() -> dict[str, str]:
    """Every EarlyTom architecture -> the ``module:Class`` vLLM loads for it."""
    return {arch: family.class_path(arch)
            for family in all_families() for arch in family.architectures}


def by_architecture(name: str) -> Family | None:
    """The family of an EarlyTom architecture or of the vLLM architecture one extends."""
    for family in all_families():
        if name in family.architectures or name in family.architectures.values():
            return family
    return None


def earlytom_architecture(name: str) -> str | None:
    """The EarlyTom architecture serving a checkpoint whose config names architecture ``name``
    (an EarlyTom name maps to itself)."""
    for family in all_families():
        for earlytom, base in family.architectures.items():
            if name in (earlytom, base):
                return earlytom
    return None


def family_for_config(config: Mapping[str, Any] | Any) -> Family | None:
    """The family serving a checkpoint: by the architectures its config names, then by its
    ``model_type``; None when neither is known."""
    for arch in config_value(config, "architectures", default=None) or ():
        family = by_architecture(arch)
        if family is not None:
            return family
    model_type = config_value(config, "model_type", default=None)
    for family in all_families():
        if model_type in family.model_types:
            return family
    return None


def architecture_for_config(config: Mapping[str, Any] | Any) -> str:
    """The EarlyTom architecture for a checkpoint config (the default family's when unknown)."""
    for arch in config_value(config, "architectures", default=None) or ():
        found = earlytom_architecture(arch)
        if found is not None:
            return found
    family = family_for_config(config) or get(DEFAULT_FAMILY)
    return family.architecture
