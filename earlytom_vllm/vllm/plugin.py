"""vLLM general-plugin entry point: registers the EarlyTom architectures.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers, the
model-inspection subprocess), so it is idempotent, cheap (lazy string registration, no model or
CUDA import) and safe to call any number of times.
"""

from __future__ import annotations

#: Architecture name -> the class vLLM loads for it (select with
#: ``--hf-overrides '{"architectures": ["<name>"]}'``).
ARCHITECTURES = {
    "EarlyTomLlavaOnevisionForConditionalGeneration":
        "earlytom_vllm.vllm.llava_onevision:EarlyTomLlavaOnevisionForConditionalGeneration",
}
#: The LLaVA-OneVision architecture (the default family).
ARCHITECTURE = "EarlyTomLlavaOnevisionForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
