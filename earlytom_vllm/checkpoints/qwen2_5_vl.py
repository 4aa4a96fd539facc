"""The random-weight Qwen2.5-VL checkpoint: the real vision geometry (``vision_layers`` blocks with
full attention in every 8th: 7, 15, 23, 31 at depth 32; windows of 112 px; 14 px patches; 2 x 2
merge; temporal patches of 2 frames; 2 tokens per second) with small widths; a Qwen2 LLM with
M-RoPE. Tokenizer: the local BPE plus Qwen's vision tokens; processors: ``Qwen2_5_VLProcessor``
with ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` sharing one pixel range (vLLM estimates
video counts from the image processor's ``size``, so they must agree). Weights are saved as
transformers writes them (vLLM 0.32 maps that layout itself).
"""

from __future__ import annotations

from typing import Any

from earlytom_vllm.checkpoints.common import (
    IM_END,
    IM_START,
    PAD_TOKEN,
    TINY_SIZES,
    Recipe,
    special_ids,
    validate_sizes,
)
from earlytom_vllm.checkpoints.common import (
    text_config as lm_config,
)

PATCH_SIZE = 14
TEMPORAL_PATCH = 2
MERGE = 2
WINDOW = 112  # px: 8 x 8 patches = 4 x 4 merge units
TOKENS_PER_SECOND = 2
#: Full attention every 8th block, as in every released Qwen2.5-VL (depth 32: 7, 15, 23, 31).
FULLATT_EVERY = 8
#: Pixel limits of both processors: 56 x 56 .. 448 x 448 keeps tiny prompts tiny.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 448 * 448
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

#: Chat template with the structure of Qwen/Qwen2.5-VL-7B-Instruct's: a default system message,
#: then per message its parts IN ORDER, an image as ``<|vision_start|><|image_pad|><|vision_end|>``
#: and a video as ``<|vision_start|><|video_pad|><|vision_end|>``.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'text' -%}"
    "{{- content['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

class Qwen2_5_VLRecipe(Recipe):
    def validate(self, sizes: dict[str, Any]) -> None:
        validate_sizes(sizes)
        for width, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads")):
            if (sizes[width] // sizes[heads]) % 16:
                # vision: 2-D rotary over half the head; text: M-RoPE sections 1/4, 3/8, 3/8
                raise ValueError(f"{width} / {heads} (the head size) must be a multiple of 16")
        if sizes["vision_layers"] < FULLATT_EVERY:
            raise ValueError(f"vision_layers must be >= {FULLATT_EVERY} (a full-attention block)")

    def hf_config(self, tokenizer: Any, sizes: dict[str, Any]) -> Any:
        from transformers import Qwen2_5_VLConfig

        ids = special_ids(tokenizer, SPECIAL_TOKENS)
        depth = sizes["vision_layers"]
        half = sizes["text_hidden"] // sizes["text_heads"] // 2  # rotary frequencies per head
        mrope = [half // 4, 3 * half // 8, 3 * half // 8]  # 7B: head 128 -> [16, 24, 24]
        text = lm_config(tokenizer, sizes, {"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": mrope})
        vision = {
            "depth": depth,
            "hidden_size": sizes["vision_hidden"],
            "intermediate_size": sizes["vision_intermediate"],
            "num_heads": sizes["vision_heads"],
            "hidden_act": "silu",
            "patch_size": PATCH_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH,
            "spatial_merge_size": MERGE,
            "window_size": WINDOW,
            "tokens_per_second": TOKENS_PER_SECOND,
            "out_hidden_size": sizes["text_hidden"],
            "fullatt_block_indexes": list(range(FULLATT_EVERY - 1, depth, FULLATT_EVERY)),
        }
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=ids[IMAGE_PAD],
            video_token_id=ids[VIDEO_PAD],
            vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END],
            tie_word_embeddings=True,
        )
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
        return config

    def hf_processor(self, tokenizer: Any) -> Any:
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        common = {
            "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            "patch_size": PATCH_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH,
            "merge_size": MERGE,
        }
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**common),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**common),
            chat_template=CHAT_TEMPLATE,
        )


RECIPE = Qwen2_5_VLRecipe(special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE,
                          defaults={**TINY_SIZES, "vision_layers": 32, "vision_intermediate": 128},
                          model_class="Qwen2_5_VLForConditionalGeneration")
