"""The one place that touches vLLM internals which may move between releases (private helpers,
runner attributes, the runners' pruning decisions). Public APIs (ModelRegistry,
MULTIMODAL_REGISTRY, the model and processor classes the families subclass, ``video_prune/evs.py``
whose position plumbing the Qwen adapters call) are used directly where they are needed, each
with a note of what it mirrors and the test that pins it."""

from __future__ import annotations

import functools
import importlib.abc
import sys
import threading


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


# --------------------------------------------------------------------------------------------------
# vLLM's multimodal-pruning plumbing (EVS): which runners turn it on
#
# A model whose video embeddings carry their own M-RoPE positions (4 extra channels, as vLLM's
# EVS returns them) needs the runner to strip those channels and rewrite the prompt's positions
# (``recompute_mrope_positions``). vLLM 0.32 turns that on only when ``--video-pruning-rate`` is
# set (``MultiModalConfig.is_multimodal_pruning_enabled``), which is EVS's own server-wide rate.
# The EarlyTom Qwen2.5-VL model opts in with a class attribute instead, and three runner
# decisions learn to read it. The CPU runner also gets vLLM 0.32's missing line (its
# ``load_model`` never sets the flag, so stock ``--video-pruning-rate`` crashes on CPU with
# "shape mismatch: value tensor of shape [n, D+4] ...").

#: Class attribute of a model that returns position channels with its media embeddings.
PRUNING_OPT_IN = "earlytom_mm_pruning"
_PATCHED = "_earlytom_patched"

_CPU_RUNNER = "vllm.v1.worker.cpu_model_runner"
_GPU_RUNNER = "vllm.v1.worker.gpu_model_runner"
_V2_MODEL_STATE = "vllm.v1.worker.gpu.model_states.default"


def pruning_hooks_apply() -> bool:
    """The runner hooks below are written against vLLM 0.32.x and applied to it only."""
    from vllm.version import __version_tuple__

    return tuple(__version_tuple__[:2]) == (0, 32)


def opts_into_pruning(model: object) -> bool:
    return bool(getattr(model, PRUNING_OPT_IN, False))


def pruning_enabled(model: object, model_config) -> bool:
    """The runner's ``is_multimodal_pruning_enabled``: vLLM 0.32's rule
    (``GPUModelRunner.load_model``) or the model's opt-in."""
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
            # The line vLLM 0.32's CPUModelRunner.load_model lacks (GPUModelRunner.load_model has it).
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


def _patch_v2_model_state(module) -> None:
    """Model runner V2 (the GPU default in 0.32 where Triton works) builds a
    ``MultiModalPruner`` only for ``--video-pruning-rate``; build it for an opted-in model too."""

    def make(maybe_create_mm_pruner):
        def patched(model_config, model, rope_state, encoder_cache):
            pruner = maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache)
            if (pruner is None and rope_state is not None and encoder_cache is not None
                    and pruning_enabled(model, model_config)):
                from vllm.v1.worker.gpu.model_states.mm_pruning import MultiModalPruner

                # mirrors mm_pruning.maybe_create_mm_pruner's construction
                pruner = MultiModalPruner(model, rope_state, encoder_cache,
                                          model_config.get_inputs_embeds_size())
            return pruner
        return patched

    _wrap(module, "maybe_create_mm_pruner", make)


def install_pruning_hooks() -> None:
    """Patch the three runner decisions as their modules load (now, if already loaded).

    Called from the plugin's ``register()`` in every vLLM process; cheap (no runner import: an
    API-server process never loads them) and idempotent.
    """
    if not pruning_hooks_apply():
        return
    after_import(_CPU_RUNNER, _patch_cpu_runner)
    after_import(_GPU_RUNNER, _patch_gpu_runner)
    after_import(_V2_MODEL_STATE, _patch_v2_model_state)


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
