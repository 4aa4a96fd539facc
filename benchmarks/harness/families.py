"""What a benchmark asks about a model family: everything comes from the family registry
(:mod:`earlytom_vllm.families`); this module only adds the benchmark's view of it (the
checkpoint it builds, token counts at the benchmark's video size, result file names)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm import families as registry
from earlytom_vllm.families import Family, vllm_kept

#: Every registered family's name: what ``--family`` accepts.
NAMES: tuple[str, ...] = tuple(f.name for f in registry.all_families())
DEFAULT = registry.DEFAULT_FAMILY


def get(name: str) -> Family:
    return registry.get(name)


def add_family_arg(p: Any) -> None:
    """``--family`` (``p``: an ``argparse.ArgumentParser``), any registered family."""
    p.add_argument("--family", choices=NAMES, default=DEFAULT,
                   help="model family (earlytom_vllm.families): its benchmark checkpoint, "
                        "prompt, video geometry, arms, ratios and targets")


def results_stem(benchmark: str, family: Family) -> str:
    """``ttft`` for the default family, ``ttft_<family>`` for the others (the committed files)."""
    return benchmark if family.name == DEFAULT else f"{benchmark}_{family.name}"


def results_files(benchmark: str) -> tuple[str, ...]:
    """Every family's results file name of ``benchmark``, default family first."""
    return tuple(f"{results_stem(benchmark, f)}.json" for f in registry.all_families())


# --------------------------------------------------------------------------------------------------
# The benchmark checkpoint


def sizes(family: Family, *, quick: bool) -> dict[str, Any]:
    """The family's checkpoint sizes over its recipe's tiny ones (``quick``: the tiny model)."""
    return {} if quick else dict(family.checkpoint.bench_sizes)


def sizes_source(family: Family, *, quick: bool) -> str:
    """Where :func:`sizes` came from, for a results file."""
    return (f"earlytom_vllm.checkpoints.{family.name} (tiny sizes)" if quick else
            f"earlytom_vllm.families.{family.name}: checkpoint.bench_sizes")


def checkpoint(family: Family, sizes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, every size) of the family's random-weight checkpoint built with ``sizes``
    (cached on disk by :mod:`earlytom_vllm.checkpoints`)."""
    from earlytom_vllm import checkpoints

    return str(checkpoints.ensure(family, **sizes)), checkpoints.sizes(family, **sizes)


def checkpoint_desc(family: Family, sizes: Mapping[str, Any]) -> str:
    """``random-weight LLaVA-OneVision: vision 26x128, LLM 12x768`` (``sizes``: every size)."""
    return (f"random-weight {family.title}: vision {sizes['vision_layers']}x"
            f"{sizes['vision_hidden']}, LLM {sizes['text_layers']}x{sizes['text_hidden']}")


def load_config(model: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's ``config.json``: read from a local directory, else through transformers
    (an HF id, from its cache or the hub)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model)).to_dict()


# --------------------------------------------------------------------------------------------------
# Counts


def tokens_per_frame(family: Family, config: Mapping[str, Any], video_size: int | None = None
                     ) -> int:
    """Tokens of one encoder frame of a square ``video_size`` video (default: the family's
    benchmark size), as the family counts them."""
    side = video_size or family.benchmark.video_size
    return family.frame_tokens(config, family.patch_grid(config, side, side))


def model_tokens_per_frame(family: Family, model: str | os.PathLike[str],
                           video_size: int | None = None) -> int:
    """:func:`tokens_per_frame` of a checkpoint path or HF id; a clear error where its config
    cannot be read (say a remote server's model name that is not an HF id)."""
    try:
        return tokens_per_frame(family, load_config(model), video_size)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"cannot read the config.json of {str(model)!r} for its tokens per "
                         f"frame ({type(exc).__name__}: {exc}); pass --checkpoint with a local "
                         "copy or the HF id of the served model") from exc


def expected_rows(family: Family, method: str, ratio: float | None, frames: int,
                  per_frame: int) -> int:
    """Placeholder tokens of one ``frames``-frame video (the library's count); ``ratio`` None
    means full tokens."""
    cfg = EarlyTomConfig(method=method, retain_ratio=1.0 if ratio is None else ratio)
    return family.rows(family.units(frames), cfg, per_frame)


def vllm_pruning_rate(family: Family, frames: int, per_frame: int, ratio: float,
                      method: str = "evs") -> float:
    """vLLM's ``--video-pruning-rate`` whose ``method`` keeps EarlyTom's count at ``ratio``."""
    count = expected_rows(family, "earlytom", ratio, frames, per_frame)
    return family.vllm_pruning_rate(family.units(frames), per_frame, count, method)


def vllm_pruning_rows(family: Family, frames: int, per_frame: int, ratio: float,
                      method: str = "evs") -> int:
    """Tokens vLLM's ``method`` keeps of a video at :func:`vllm_pruning_rate` (its own count)."""
    q = vllm_pruning_rate(family, frames, per_frame, ratio, method)
    return vllm_kept(method, family.units(frames), per_frame, q) + family.extra_rows
