"""Random-weight checkpoints of every model family, built locally and cached.

No weights can be downloaded here, so tests, benchmarks and the demo serve checkpoints built with
transformers: the real geometry where it matters to EarlyTom and to vLLM, small widths so that
they run fast on a CPU. ONE builder (:func:`build`) is parameterised by the family: the family
registry names each family's recipe (``earlytom_vllm/checkpoints/<family>.py``: its config,
processor and chat template) and its benchmark sizes; what every family shares (the local
byte-level BPE tokenizer, random weights from a seed, the files) is in :mod:`.common`.

Weights are drawn from ``torch.manual_seed(seed)`` in float32 on the CPU, so the same arguments
give byte-identical files. :func:`ensure` builds once per distinct set of arguments and caches the
result under :data:`DEFAULT_CACHE_DIR` (``$EARLYTOM_CACHE`` if set when this module is imported,
else ``~/.cache/earlytom-vllm/checkpoints``) as ``<name>-<hash>``. Concurrent builders race
safely: each builds into its own temporary directory next to the target and renames it into
place; a loser discards its copy and uses the winner's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from earlytom_vllm.checkpoints.common import BUILD_LOCK, Recipe, make_model, make_tokenizer, save
from earlytom_vllm.families import DEFAULT_FAMILY, Family, get

#: Cache root, resolved once at import: ``$EARLYTOM_CACHE`` or ``~/.cache/earlytom-vllm/checkpoints``.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("EARLYTOM_CACHE") or Path.home() / ".cache" / "earlytom-vllm" / "checkpoints"
).expanduser()
COMPLETE_MARKER = ".earlytom-complete"


def recipe(family: str | Family) -> Recipe:
    """The transformers-side recipe of ``family`` (a name or a :class:`Family`)."""
    fam = get(family) if isinstance(family, str) else family
    module, name = fam.checkpoint.recipe.split(":")
    return getattr(importlib.import_module(module), name)


def sizes(family: str | Family, *, bench: bool = False, **overrides: Any) -> dict[str, Any]:
    """Every size of a checkpoint: the recipe's tiny sizes, the family's benchmark sizes when
    ``bench``, then ``overrides`` (validated; unknown names raise TypeError)."""
    fam = get(family) if isinstance(family, str) else family
    rec = recipe(fam)
    unknown = sorted(set(overrides) - set(rec.defaults))
    if unknown:
        raise TypeError(f"unknown checkpoint argument(s): {', '.join(unknown)}")
    resolved = {**rec.defaults, **(fam.checkpoint.bench_sizes if bench else {}), **overrides}
    rec.validate(resolved)
    return resolved


def _payload(family: Family, resolved: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"builder_version": family.checkpoint.version, "args": resolved}
    if family.checkpoint.cache_tag is not None:
        payload["family"] = family.checkpoint.cache_tag
    return payload


def checkpoint_key(family: str | Family = DEFAULT_FAMILY, **overrides: Any) -> str:
    """The cache key of a checkpoint: a hash of the resolved sizes and the builder version."""
    fam = get(family) if isinstance(family, str) else family
    payload = json.dumps(_payload(fam, sizes(fam, **overrides)), sort_keys=True,
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build(family: str | Family, path: str | os.PathLike[str], **overrides: Any) -> Path:
    """Write a random-weight checkpoint of ``family`` into ``path`` (created if needed).

    The same arguments always give the same files (weights byte for byte). Thread-safe (builds in
    one process are serialised); torch's global RNG state is preserved."""
    fam = get(family) if isinstance(family, str) else family
    resolved = sizes(fam, **overrides)
    rec = recipe(fam)
    out = Path(path)
    with BUILD_LOCK:
        tokenizer = make_tokenizer(rec.special_tokens, rec.chat_template)
        model = make_model(rec.hf_config(tokenizer, resolved), resolved["seed"], rec.model_class)
        save(out, model, rec.hf_processor(tokenizer), tokenizer, resolved["dtype"])
        rec.after_save(out)
    return out


def ensure(family: str | Family = DEFAULT_FAMILY, cache_dir: str | os.PathLike[str] | None = None,
           **overrides: Any) -> Path:
    """The path of a cached checkpoint built with ``build(family, **overrides)``: the directory
    ``<cache_dir>/<name>-<key>``. Safe to call from several processes at once."""
    fam = get(family) if isinstance(family, str) else family
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    resolved = sizes(fam, **overrides)
    target = root / f"{fam.checkpoint.name}-{checkpoint_key(fam, **overrides)}"
    if (target / COMPLETE_MARKER).is_file():
        return target
    # Threads of one process build one at a time (transformers' lazy imports and torch's global
    # generator are not thread-safe) and reuse each other's result; processes race on the rename.
    with BUILD_LOCK:
        if (target / COMPLETE_MARKER).is_file():
            return target
        return _build_into_cache(fam, root, target, resolved)


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The embedded default: the default family's tiny checkpoint."""
    return ensure(DEFAULT_FAMILY, cache_dir)


def _build_into_cache(family: Family, root: Path, target: Path,
                      resolved: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if (target / COMPLETE_MARKER).is_file():  # another process finished meanwhile
        return target
    if target.exists():
        # Only a rename of a complete build (marker written first) creates ``target``, so this is
        # debris from elsewhere (say a manual copy): move it out of the way atomically, rebuild.
        stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.stale-"))
        if not (target / COMPLETE_MARKER).is_file():
            with contextlib.suppress(OSError):
                os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
        if (target / COMPLETE_MARKER).is_file():
            return target

    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.tmp-"))
    try:
        build(family, tmp, **resolved)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(_payload(family, resolved), sort_keys=True))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, target)
        except OSError:
            # Lost the race: the winner's directory is complete (it was renamed in whole).
            if not (target / COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
