"""The one place that touches vLLM internals which may move between releases (private helpers,
runner attributes, the runners' pruning decisions). Public APIs (ModelRegistry,
MULTIMODAL_REGISTRY, the model and processor classes the families subclass, ``video_prune/evs.py``
whose position plumbing the Qwen adapters call) are used directly where they are needed, each
with a note of what it mirrors and the test that pins it."""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass


def cast_overflow_tensors(x):
    """vLLM's fp16 overflow clamp (``models/utils.py``), as Qwen2.5-VL's vision forward applies
    it before the merger."""
    from vllm.model_executor.models.utils import cast_overflow_tensors as cast

    return cast(x)


def host_to_device(values, *, dtype, device):
    """A host list as a device tensor without a blocking copy (``utils/torch_utils.py:
    async_tensor_h2d``)."""
    from vllm.utils.torch_utils import async_tensor_h2d

    return async_tensor_h2d(values, dtype=dtype, device=device)


def sync_allowed():
    """The context in which vLLM's GPU-sync debugging (``utils/gpu_sync_debug.py``) allows a
    device-to-host copy: the position rewrite reads the prompt's ids once per step."""
    from vllm.utils.gpu_sync_debug import gpu_sync_allowed

    return gpu_sync_allowed()


def all_reduce_tp(t):
    """Sum a tensor over the tensor-parallel group (no-op when there is one rank)."""
    from vllm.distributed import (
        get_tensor_model_parallel_world_size,
        tensor_model_parallel_all_reduce,
    )

    if get_tensor_model_parallel_world_size() == 1:
        return t
    return tensor_model_parallel_all_reduce(t)


def siglip_embed(vision, pixels):
    """SigLIP patch embeddings of ``[F, 3, H, W]`` pixels -> ``[F, N, C]``.

    Mirrors the head of ``siglip.SiglipVisionTransformer.forward``: vLLM 0.34 runs
    ``self.input_norm(pixels, dtype)`` before the embeddings (0.32/0.33 have no ``input_norm``).
    """
    norm = getattr(vision, "input_norm", None)
    if norm is not None:
        pixels = norm(pixels.to(device=vision.device), vision.dtype)
    return vision.embeddings(pixels)


# --------------------------------------------------------------------------------------------------
# The supported vLLM releases

#: ``[low, high)`` (major, minor) of the vLLM releases this plugin supports: pyproject's
#: ``vllm>=0.32,<0.35``, the Dockerfile's ``VLLM_VERSION`` choices, docs/vllm-versions.md.
SUPPORTED_VLLM = ((0, 32), (0, 35))
SUPPORTED_RANGE = ">=0.32,<0.35"


def vllm_minor(version_tuple) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``vllm.version.__version_tuple__`` (None for a dev tree's
    ``(0, 0, "dev")`` or anything unparsable)."""
    head = tuple(version_tuple[:2])
    if len(head) != 2 or not all(isinstance(p, int) for p in head) or head == (0, 0):
        return None
    return head


def unsupported_vllm(version: str, version_tuple) -> str | None:
    """Why this vLLM cannot run the plugin (None when it can)."""
    minor = vllm_minor(version_tuple)
    low, high = SUPPORTED_VLLM
    if minor is not None and low <= minor < high:
        return None
    return (f"earlytom-vllm supports vLLM {SUPPORTED_RANGE} (0.32, 0.33, 0.34); this is vLLM "
            f"{version}. Install a supported vLLM (pip install 'vllm{SUPPORTED_RANGE}') or an "
            "earlytom-vllm release made for this one.")


def require_supported_vllm() -> tuple[int, int]:
    """The running vLLM's ``(major, minor)``; a RuntimeError naming the range otherwise."""
    from vllm.version import __version__, __version_tuple__

    why = unsupported_vllm(__version__, __version_tuple__)
    if why is not None:
        raise RuntimeError(why)
    return vllm_minor(__version_tuple__)


#: Where ``make_arg_parser`` (the ``vllm serve`` flags) lives per release: it moved from
#: ``entrypoints/launchers/cli_args.py`` to ``entrypoints/common/cli_args.py`` in 0.33.
CLI_ARGS_MODULE = {
    (0, 32): "vllm.entrypoints.launchers.cli_args",
    (0, 33): "vllm.entrypoints.common.cli_args",
    (0, 34): "vllm.entrypoints.common.cli_args",
}


def make_arg_parser(parser):
    """``vllm serve``'s flags added to ``parser`` (a ``FlexibleArgumentParser``), by this
    release's ``make_arg_parser``."""
    module = importlib.import_module(CLI_ARGS_MODULE[require_supported_vllm()])
    return module.make_arg_parser(parser)


# --------------------------------------------------------------------------------------------------
# vLLM's multimodal-pruning plumbing (EVS): which runners turn it on
#
# A model whose video embeddings carry their own M-RoPE positions (4 extra channels, as vLLM's
# EVS returns them) needs the runner to strip those channels and rewrite the prompt's positions
# (``recompute_mrope_positions``). vLLM turns that on only when ``--video-pruning-rate`` is set
# (``MultiModalConfig.is_multimodal_pruning_enabled``), which is EVS's own server-wide rate.
# The EarlyTom Qwen2.5-VL model opts in with a class attribute instead, and the runner decisions
# of each release learn to read it:
#
# - 0.32, 0.33: the V1 runners' ``load_model`` (which sets ``is_multimodal_pruning_enabled``) and
#   the V2 runner's model state. The V1 CPU runner also gets its missing line (its ``load_model``
#   never sets the flag, so stock ``--video-pruning-rate`` crashes on CPU with "shape mismatch:
#   value tensor of shape [n, D+4] ...").
# - 0.34: the V1 runners are gone; the V2 model state (GPU, and x86 CPU's ``CPUModelRunner``,
#   a V2 runner) and the standalone CPU runner's own model state (``v1/worker/cpu/``) each build
#   a ``MultiModalPruner`` in ``maybe_create_mm_pruner``.
#
# The V2 runner's ``get_model_state_cls()`` would be a model-level alternative, but the V1
# runners (the default in 0.32/0.33) never call it and 0.34's standalone CPU runner refuses a
# custom model state (``cpu/model_states/__init__.py``), so one small patch per decision it is.

#: Class attribute of a model that returns position channels with its media embeddings.
PRUNING_OPT_IN = "earlytom_mm_pruning"
_PATCHED = "_earlytom_patched"


def opts_into_pruning(model: object) -> bool:
    return bool(getattr(model, PRUNING_OPT_IN, False))


def pruning_enabled(model: object, model_config) -> bool:
    """The runner's ``is_multimodal_pruning_enabled``: vLLM's rule
    (``GPUModelRunner.load_model``, ``maybe_create_mm_pruner``) or the model's opt-in."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    mm_config = model_config.multimodal_config
    return bool(supports_multimodal_pruning(model) and (
        (mm_config is not None and mm_config.is_multimodal_pruning_enabled())
        or opts_into_pruning(model)))


def _wrap(owner: object, name: str, make) -> None:
    """Replace ``owner.name`` by ``make(original)`` once (idempotent)."""
    original = getattr(owner, name)
    if getattr(original, _PATCHED, False):
        return
    wrapped = functools.wraps(original)(make(original))
    setattr(wrapped, _PATCHED, True)
    setattr(owner, name, wrapped)


def _patch_cpu_runner(module) -> None:
    def make(load_model):
        def patched(self, *args, **kwargs):
            load_model(self, *args, **kwargs)
            # The line V1 CPUModelRunner.load_model lacks (GPUModelRunner.load_model has it).
            self.is_multimodal_pruning_enabled = pruning_enabled(self.get_model(),
                                                                 self.model_config)
        return patched

    _wrap(module.CPUModelRunner, "load_model", make)


def _patch_gpu_runner(module) -> None:
    def make(load_model):
        def patched(self, *args, **kwargs):
            load_model(self, *args, **kwargs)
            if not self.is_multimodal_pruning_enabled:
                self.is_multimodal_pruning_enabled = pruning_enabled(self.get_model(),
                                                                     self.model_config)
        return patched

    _wrap(module.GPUModelRunner, "load_model", make)


def _pruner_factory_patch(pruner_module: str):
    """The patch of a model-state module's ``maybe_create_mm_pruner`` (imported there by name
    from ``pruner_module``): it builds a ``MultiModalPruner`` only for ``--video-pruning-rate``;
    build it for an opted-in model too."""

    def patch(module) -> None:
        def make(maybe_create_mm_pruner):
            def patched(model_config, model, rope_state, encoder_cache):
                pruner = maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache)
                if (pruner is None and rope_state is not None and encoder_cache is not None
                        and pruning_enabled(model, model_config)):
                    # mirrors maybe_create_mm_pruner's construction
                    pruner = importlib.import_module(pruner_module).MultiModalPruner(
                        model, rope_state, encoder_cache, model_config.get_inputs_embeds_size())
                return pruner
            return patched

        _wrap(module, "maybe_create_mm_pruner", make)

    return patch


_patch_v2_model_state = _pruner_factory_patch("vllm.v1.worker.gpu.model_states.mm_pruning")


@dataclass(frozen=True)
class RunnerHook:
    """One runner decision patched as its module loads: ``target`` (``Class.method`` or a
    module-level name) in ``module``; ``pruner`` is where the patch builds its pruner."""

    module: str
    target: str
    patch: Callable[[object], None]
    mirrors: str
    pruner: str | None = None


_V1_CPU = RunnerHook(
    "vllm.v1.worker.cpu_model_runner", "CPUModelRunner.load_model", _patch_cpu_runner,
    "V1 GPUModelRunner.load_model's is_multimodal_pruning_enabled line (CPU lacks it)")
_V1_GPU = RunnerHook(
    "vllm.v1.worker.gpu_model_runner", "GPUModelRunner.load_model", _patch_gpu_runner,
    "V1 GPUModelRunner.load_model's is_multimodal_pruning_enabled rule")
_V2_GPU = RunnerHook(
    "vllm.v1.worker.gpu.model_states.default", "maybe_create_mm_pruner", _patch_v2_model_state,
    "gpu/model_states/mm_pruning.maybe_create_mm_pruner (V2 runner: GPU, 0.34's x86 CPU)",
    pruner="vllm.v1.worker.gpu.model_states.mm_pruning")
_V2_CPU = RunnerHook(
    "vllm.v1.worker.cpu.model_states.default", "maybe_create_mm_pruner",
    _pruner_factory_patch("vllm.v1.worker.cpu.mm_pruning"),
    "cpu/mm_pruning.maybe_create_mm_pruner (0.34's StandaloneCPUModelRunner)",
    pruner="vllm.v1.worker.cpu.mm_pruning")

#: The runner decisions patched on each supported release.
PRUNING_HOOKS: dict[tuple[int, int], tuple[RunnerHook, ...]] = {
    (0, 32): (_V1_CPU, _V1_GPU, _V2_GPU),
    (0, 33): (_V1_CPU, _V1_GPU, _V2_GPU),
    (0, 34): (_V2_GPU, _V2_CPU),
}


def install_pruning_hooks(minor: tuple[int, int]) -> None:
    """Patch this release's runner decisions as their modules load (now, if already loaded).

    Called from the plugin's ``register()`` in every vLLM process; cheap (no runner import: an
    API-server process never loads them) and idempotent.
    """
    for hook in PRUNING_HOOKS[minor]:
        after_import(hook.module, hook.patch)


class _HookedLoader(importlib.abc.Loader):
    """Delegates to a module's real loader and runs hooks once the module has executed."""

    def __init__(self, loader, hooks: list) -> None:
        self._loader = loader
        self._hooks = hooks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        for hook in self._hooks:
            hook(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a hooked module name it asks the other finders for the spec and
    wraps its loader so that the hooks run after the module body."""

    def __init__(self) -> None:
        self.hooks: dict[str, list] = {}

    def find_spec(self, fullname, path, target=None):
        hooks = self.hooks.get(fullname)
        if not hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.hooks[fullname]
        spec.loader = _HookedLoader(spec.loader, hooks)
        return spec


_FINDER_LOCK = threading.Lock()


def after_import(name: str, hook) -> None:
    """Run ``hook(module)`` once module ``name`` is imported (at once if it already is)."""
    with _FINDER_LOCK:
        module = sys.modules.get(name)
        if module is None:
            finder = next((f for f in sys.meta_path if isinstance(f, _PostImportFinder)), None)
            if finder is None:
                finder = _PostImportFinder()
                sys.meta_path.insert(0, finder)
            hooks = finder.hooks.setdefault(name, [])
            if hook not in hooks:
                hooks.append(hook)
            return
    hook(module)
