"""The engine's media code as each supported vLLM release runs it, for the agreement tests.

Only vLLM 0.32 is installed (the CPU engine). The media code the front end mirrors changed in 0.33
in three functions and a method, and 0.34 has 0.33's (``server/vllm_rules.py``); the rest of the
path (``multimodal/video.py`` loaders, frame reading, sampling, ``open_image``) is the same code.
So 0.33/0.34 run here as the installed loader with those four replaced by the release's own
source, read from its sdist (``scripts/vllm_sources.py``) and compiled in the installed module's
namespace: the oracle is vLLM's code, not a restatement of it.
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import vllm_sources

#: module -> the functions/methods of it that changed in 0.33 (the same in 0.34).
CHANGED = {
    "vllm.multimodal.video_decoders.opencv": (
        "decode_opencv",  # get_video_metadata(data) instead of (cap)
        "OpenCVVideoBackendMixin.demux_count_frames",  # new in 0.33
        "OpenCVVideoBackendMixin.get_video_metadata",  # own capture, demux count
    ),
    "vllm.multimodal.image": ("convert_image_mode",),  # transparency before same mode
    "vllm.multimodal.media.image": ("ImageMediaIO._convert_image_mode",),  # always converts
}
#: Names a module imported from another module of CHANGED (rebound after the patch).
REIMPORTED = {("vllm.multimodal.media.image", "convert_image_mode"): "vllm.multimodal.image"}

#: The releases the agreement tests run: "0.32" is the installed engine; the others its sdist.
RELEASES = ("0.32", *vllm_sources.SDISTS)


def _compile(tree: ast.Module, qualname: str, namespace: dict, filename: str):
    """The release's ``qualname`` (``f`` or ``Class.f``) as a function over ``namespace``, with
    its staticmethod/classmethod decorator applied."""
    nodes = tree.body
    *owners, name = qualname.split(".")
    for owner in owners:
        nodes = next(n for n in nodes if isinstance(n, ast.ClassDef) and n.name == owner).body
    node = next(n for n in nodes if isinstance(n, ast.FunctionDef) and n.name == name)
    kinds = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
    node.decorator_list = []
    code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    local: dict = {}
    exec(code, namespace, local)  # the release's own source, in the installed module's globals
    fn = local[name]
    if "staticmethod" in kinds:
        return staticmethod(fn)
    if "classmethod" in kinds:
        return classmethod(fn)
    return fn


@contextlib.contextmanager
def engine_of(release: str) -> Iterator[None]:
    """Within the block, the installed vLLM's media code behaves as ``release``'s."""
    if release == "0.32":
        yield
        return
    tree_root = vllm_sources.fetch(release)
    with pytest.MonkeyPatch.context() as mp:
        for module_name, names in CHANGED.items():
            module = importlib.import_module(module_name)
            path = tree_root.joinpath(*module_name.split(".")[1:]).with_suffix(".py")
            tree = ast.parse(path.read_text(), str(path))
            for qualname in names:
                fn = _compile(tree, qualname, module.__dict__, str(path))
                owner, _, name = qualname.rpartition(".")
                mp.setattr(getattr(module, owner) if owner else module, name, fn, raising=False)
        for (module_name, name), source in REIMPORTED.items():
            mp.setattr(importlib.import_module(module_name), name,
                       getattr(importlib.import_module(source), name))
        yield
