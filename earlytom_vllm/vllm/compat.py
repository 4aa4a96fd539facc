"""The one place that touches vLLM internals which may move between releases (private helpers,
runner attributes). Public APIs (ModelRegistry, MULTIMODAL_REGISTRY, the model classes the
families subclass) are used directly where they are needed."""

from __future__ import annotations

from vllm.model_executor.models.llava import _get_num_hidden_layers


def llava_encoder_depth(hf_config) -> int:
    """Vision-encoder layers vLLM instantiates for this LLaVA-style config."""
    if not isinstance(hf_config.vision_feature_layer, int):
        raise ValueError(
            "EarlyTom needs a single vision_feature_layer; "
            f"got {hf_config.vision_feature_layer!r}"
        )
    return int(_get_num_hidden_layers(hf_config))


def all_reduce_tp(t):
    """Sum a tensor over the tensor-parallel group (no-op when there is one rank)."""
    from vllm.distributed import (
        get_tensor_model_parallel_world_size,
        tensor_model_parallel_all_reduce,
    )

    if get_tensor_model_parallel_world_size() == 1:
        return t
    return tensor_model_parallel_all_reduce(t)
