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
    "EarlyTomQwen2_5_VLForConditionalGeneration":
        "earlytom_vllm.vllm.qwen2_5_vl:EarlyTomQwen2_5_VLForConditionalGeneration",
}
#: The LLaVA-OneVision architecture (the default family).
ARCHITECTURE = "EarlyTomLlavaOnevisionForConditionalGeneration"


#: The Qwen2.5-VL architecture.
QWEN2_5_VL_ARCHITECTURE = "EarlyTomQwen2_5_VLForConditionalGeneration"
#: The vLLM architecture each EarlyTom architecture serves (what a checkpoint's config names).
BASE_ARCHITECTURES = {
    ARCHITECTURE: "LlavaOnevisionForConditionalGeneration",
    QWEN2_5_VL_ARCHITECTURE: "Qwen2_5_VLForConditionalGeneration",
}


def register() -> None:
    from vllm import ModelRegistry

    from earlytom_vllm.vllm.compat import install_pruning_hooks, require_supported_vllm

    # A vLLM outside the supported range stops here, naming the range (vLLM calls general
    # plugins unguarded at start-up), instead of failing at the first video.
    minor = require_supported_vllm()
    supported = ModelRegistry.get_supported_archs()
    for name, target in ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    # vLLM's multimodal-pruning plumbing, per release: the opt-in the Qwen2.5-VL architecture
    # needs and the V1 CPU-runner bug (patched as the runner modules load; nothing heavy here).
    install_pruning_hooks(minor)
