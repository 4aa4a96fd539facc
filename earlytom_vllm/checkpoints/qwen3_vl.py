"""The random-weight Qwen3-VL checkpoint: Qwen3-VL-8B's vision geometry (27 blocks with full
attention inside each temporal slice, deepstack taps after blocks 8, 16 and 24, 16 px patches,
2 x 2 merge, temporal patches of 2 frames, 48 x 48 learned position embeddings) with small widths;
a Qwen3 LLM with interleaved M-RoPE (sections 24:20:20 of the rotary half, scaled to the head).
The tokenizer and special tokens are Qwen2.5-VL's (the same vision tokens); the chat template is
Qwen3-VL's shape: no default system message, media parts in order. Per-slice timestamps
(``<t seconds>``) are not in the template: vLLM's Qwen3-VL processor writes them around each
slice (``<t seconds><|vision_start|>...<|vision_end|>``) inside the template's outer markers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from earlytom_vllm.checkpoints.common import (
    TINY_SIZES,
    special_ids,
)
from earlytom_vllm.checkpoints.common import (
    text_config as lm_config,
)
from earlytom_vllm.checkpoints.qwen2_5_vl import CHAT_TEMPLATE as QWEN2_5_TEMPLATE
from earlytom_vllm.checkpoints.qwen2_5_vl import (
    IMAGE_PAD,
    MERGE,
    SPECIAL_TOKENS,
    TEMPORAL_PATCH,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    Qwen2_5_VLRecipe,
)

PATCH_SIZE = 16
DEEPSTACK = (8, 16, 24)
POSITION_GRID = 48  # learned position embeddings: 48 x 48 (interpolated per frame grid)
#: Pixel limits. Images: 32 x 32 .. 448 x 448. Videos: Qwen3VLVideoProcessor limits the pixels
#: of ALL frames together, so 32 frames of 448 x 448 (the benchmark geometry) keep their size.
IMAGE_PIXELS = (32 * 32, 448 * 448)
VIDEO_PIXELS = (2 * 32 * 32, 32 * 448 * 448)
_DEFAULT_SYSTEM = ("{%- if messages[0]['role'] != 'system' -%}"
                   "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
                   "{%- endif -%}")
#: Qwen2.5-VL's template without its default system message (as Qwen/Qwen3-VL-8B-Instruct's).
CHAT_TEMPLATE = QWEN2_5_TEMPLATE.replace(_DEFAULT_SYSTEM, "")
assert CHAT_TEMPLATE != QWEN2_5_TEMPLATE, "Qwen2.5-VL's template no longer starts as expected"


def mrope_sections(head_dim: int) -> list[int]:
    """Qwen3-VL-8B's M-RoPE sections (24, 20, 20 of 64 rotary frequencies) scaled to a head."""
    half = head_dim // 2
    t = half * 24 // 64
    h = (half - t) // 2
    return [t, h, half - t - h]


class Qwen3VLRecipe(Qwen2_5_VLRecipe):
    """Qwen3-VL (dense). The other architectures on this encoder change the language model
    (:meth:`text_config`), drop deepstack (:meth:`vision_config`) or the transformers classes."""

    config_class: ClassVar[str] = "Qwen3VLConfig"

    def validate(self, sizes: dict[str, Any]) -> None:
        super().validate(sizes)
        if sizes["vision_layers"] <= DEEPSTACK[-1]:
            raise ValueError(f"vision_layers must be > {DEEPSTACK[-1]} (deepstack taps after "
                             f"blocks {', '.join(map(str, DEEPSTACK))})")

    def text_config(self, tokenizer: Any, sizes: dict[str, Any]) -> dict[str, Any]:
        head = sizes["text_hidden"] // sizes["text_heads"]
        rope = {"rope_type": "default", "rope_theta": 5000000.0,
                "mrope_section": mrope_sections(head), "mrope_interleaved": True}
        return {**lm_config(tokenizer, sizes, rope), "head_dim": head}

    def vision_config(self, sizes: dict[str, Any]) -> dict[str, Any]:
        return {
            "depth": sizes["vision_layers"],
            "hidden_size": sizes["vision_hidden"],
            "intermediate_size": sizes["vision_intermediate"],
            "num_heads": sizes["vision_heads"],
            "hidden_act": "gelu_pytorch_tanh",
            "patch_size": PATCH_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH,
            "spatial_merge_size": MERGE,
            "out_hidden_size": sizes["text_hidden"],
            "num_position_embeddings": POSITION_GRID * POSITION_GRID,
            "deepstack_visual_indexes": list(DEEPSTACK),
        }

    def hf_config(self, tokenizer: Any, sizes: dict[str, Any]) -> Any:
        import transformers

        ids = special_ids(tokenizer, SPECIAL_TOKENS)
        config = getattr(transformers, self.config_class)(
            text_config=self.text_config(tokenizer, sizes),
            vision_config=self.vision_config(sizes),
            image_token_id=ids[IMAGE_PAD],
            video_token_id=ids[VIDEO_PAD],
            vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END],
            tie_word_embeddings=True,
        )
        config.architectures = [self.model_class]
        return config

    def hf_processor(self, tokenizer: Any) -> Any:
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        common = {"patch_size": PATCH_SIZE, "temporal_patch_size": TEMPORAL_PATCH,
                  "merge_size": MERGE}

        def size(pixels: tuple[int, int]) -> dict[str, int]:
            return {"shortest_edge": pixels[0], "longest_edge": pixels[1]}

        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size(IMAGE_PIXELS), **common),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(size=size(VIDEO_PIXELS), **common),
            chat_template=CHAT_TEMPLATE,
        )


#: A tiny mixture of experts: 4 experts of width 64, 2 per token.
EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}


class Qwen3VLMoeRecipe(Qwen3VLRecipe):
    config_class: ClassVar[str] = "Qwen3VLMoeConfig"

    def text_config(self, tokenizer: Any, sizes: dict[str, Any]) -> dict[str, Any]:
        return {**super().text_config(tokenizer, sizes), **EXPERTS, "decoder_sparse_step": 1,
                "norm_topk_prob": True}

    def after_save(self, path: Path) -> None:
        """transformers 5.19 writes the fused experts as ``[E, out, in]``; the hub's Qwen3-VL-MoE
        checkpoints (what vLLM 0.32 loads, ``is_fused_checkpoint_transposed``) as ``[E, in, out]``."""
        from safetensors.torch import load_file, save_file

        file = path / "model.safetensors"
        weights = load_file(file)
        for key in weights:
            if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
                weights[key] = weights[key].transpose(1, 2).contiguous()  # [E, o, i] -> [E, i, o]
        save_file(weights, file, metadata={"format": "pt"})


class Qwen3_5Recipe(Qwen3VLRecipe):
    """Qwen3.5: a hybrid LLM (gated delta-net linear attention in every other layer here) on the
    same encoder without deepstack. vLLM 0.32's CPU kernel for it needs bfloat16 and linear-head
    size 128 (float32: "CPU GDN attention requires BF16"; head 32: "Unexpected head dim size")."""

    config_class: ClassVar[str] = "Qwen3_5Config"

    def text_config(self, tokenizer: Any, sizes: dict[str, Any]) -> dict[str, Any]:
        text = super().text_config(tokenizer, sizes)
        rotary = text["head_dim"] // 4  # partial rotary factor 0.25, as Qwen3.5
        text["rope_parameters"] = {**text["rope_parameters"], "partial_rotary_factor": 0.25,
                                   "mrope_section": mrope_sections(rotary)}
        return {**text, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                "linear_value_head_dim": 128, "linear_num_key_heads": 1,
                "linear_num_value_heads": 1, "full_attention_interval": 2}

    def vision_config(self, sizes: dict[str, Any]) -> dict[str, Any]:
        vision = super().vision_config(sizes)
        del vision["deepstack_visual_indexes"]
        return vision


class Qwen3_5MoeRecipe(Qwen3_5Recipe):
    config_class: ClassVar[str] = "Qwen3_5MoeConfig"

    def text_config(self, tokenizer: Any, sizes: dict[str, Any]) -> dict[str, Any]:
        text = {**super().text_config(tokenizer, sizes), **EXPERTS,
                "shared_expert_intermediate_size": EXPERTS["moe_intermediate_size"]}
        del text["intermediate_size"]
        return text


_TINY = {**TINY_SIZES, "vision_layers": 27, "vision_intermediate": 128}
_COMMON = {"special_tokens": SPECIAL_TOKENS, "chat_template": CHAT_TEMPLATE}
RECIPE = Qwen3VLRecipe(**_COMMON, defaults=_TINY, model_class="Qwen3VLForConditionalGeneration")
#: The other architectures on this encoder (built by the tests of their adapter), by vLLM name.
VARIANTS: dict[str, Qwen3VLRecipe] = {
    "Qwen3VLMoeForConditionalGeneration": Qwen3VLMoeRecipe(
        **_COMMON, defaults={**_TINY, "text_layers": 4},
        model_class="Qwen3VLMoeForConditionalGeneration"),
    "Qwen3_5ForConditionalGeneration": Qwen3_5Recipe(
        **_COMMON, defaults={**_TINY, "text_layers": 4, "dtype": "bfloat16"},
        model_class="Qwen3_5ForConditionalGeneration"),
    "Qwen3_5MoeForConditionalGeneration": Qwen3_5MoeRecipe(
        **_COMMON, defaults={**_TINY, "text_layers": 4, "dtype": "bfloat16"},
        model_class="Qwen3_5MoeForConditionalGeneration"),
}
