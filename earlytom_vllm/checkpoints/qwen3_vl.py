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

from typing import Any

from earlytom_vllm.checkpoints.common import (
    IM_END,
    MAX_POSITIONS,
    PAD_TOKEN,
    TINY_SIZES,
    padded_vocab,
    special_ids,
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
    def validate(self, sizes: dict[str, Any]) -> None:
        super().validate(sizes)
        if sizes["vision_layers"] <= DEEPSTACK[-1]:
            raise ValueError(f"vision_layers must be > {DEEPSTACK[-1]} (deepstack taps after "
                             f"blocks {', '.join(map(str, DEEPSTACK))})")

    def hf_config(self, tokenizer: Any, sizes: dict[str, Any]) -> Any:
        from transformers import Qwen3VLConfig

        ids = special_ids(tokenizer, SPECIAL_TOKENS)
        head = sizes["text_hidden"] // sizes["text_heads"]
        text = {
            "vocab_size": padded_vocab(tokenizer),
            "hidden_size": sizes["text_hidden"],
            "intermediate_size": sizes["text_intermediate"],
            "num_hidden_layers": sizes["text_layers"],
            "num_attention_heads": sizes["text_heads"],
            "num_key_value_heads": sizes["text_kv_heads"],
            "head_dim": head,
            "max_position_embeddings": MAX_POSITIONS,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                "mrope_section": mrope_sections(head),
                                "mrope_interleaved": True},
            "tie_word_embeddings": True,
            "bos_token_id": ids[PAD_TOKEN],
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids[PAD_TOKEN],
        }
        vision = {
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
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=ids[IMAGE_PAD],
            video_token_id=ids[VIDEO_PAD],
            vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END],
            tie_word_embeddings=True,
        )
        config.architectures = ["Qwen3VLForConditionalGeneration"]
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


RECIPE = Qwen3VLRecipe(special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE,
                       defaults={**TINY_SIZES, "vision_layers": 27, "vision_intermediate": 128},
                       model_class="Qwen3VLForConditionalGeneration")
