"""vLLM general-plugin entry point: registers every family's EarlyTom architectures.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers, the
model-inspection subprocess), so it is idempotent, cheap (lazy string registration, no model or
CUDA import) and safe to call any number of times. The architectures come from the family
registry (:mod:`earlytom_vllm.families`); select one with
``--hf-overrides '{"architectures": ["<name>"]}'``.
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from earlytom_vllm.families import architectures
    from earlytom_vllm.vllm.compat import install_pruning_hooks, require_supported_vllm

    # A vLLM outside the supported range stops here, naming the range (vLLM calls general
    # plugins unguarded at start-up), instead of failing at the first video.
    minor = require_supported_vllm()
    supported = ModelRegistry.get_supported_archs()
    for name, target in architectures().items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    # vLLM's multimodal-pruning plumbing, per release: the opt-in the Qwen architectures need
    # and the V1 CPU-runner bug (patched as the runner modules load; nothing heavy here).
    install_pruning_hooks(minor)
