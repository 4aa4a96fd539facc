"""vLLM general-plugin entry point: registers the EarlyTom architecture.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers, the
model-inspection subprocess), so it is idempotent, cheap (lazy string registration, no model or
CUDA import) and safe to call any number of times.
"""

from __future__ import annotations

ARCHITECTURE = "EarlyTomLlavaOnevisionForConditionalGeneration"
_TARGET = "earlytom_vllm.vllm.model:EarlyTomLlavaOnevisionForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _TARGET)
