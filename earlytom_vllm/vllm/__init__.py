"""vLLM adapter. Import :mod:`earlytom_vllm.vllm.plugin` (cheap) or the model/processor modules
(heavy: they import vLLM's LLaVA-OneVision implementation)."""
