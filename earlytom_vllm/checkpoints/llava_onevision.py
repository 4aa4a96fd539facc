"""The random-weight LLaVA-OneVision checkpoint: the real geometry where it matters to EarlyTom and
to vLLM (SigLIP at 384 px with 14 px patches, i.e. a 27 x 27 = 729-token grid, 26 encoder layers,
no attention-pooling head; a Qwen2 language model), small widths.

- ``config.json`` / ``model.safetensors``: a ``LlavaOnevisionForConditionalGeneration``; the
  vision-tower keys are renamed to the hub layout (``vision_tower.vision_model.*``) that vLLM 0.32
  loads (transformers 5.19 writes ``vision_tower.{embeddings,encoder,post_layernorm}.*`` and maps
  the hub layout back when it loads).
- the local tokenizer with ``<image>`` and ``<video>``; a ``LlavaOnevisionProcessor`` (mean = std =
  0.5 at 384 x 384) and a chat template shaped like the llava-hf LLaVA-OneVision ones: per
  message, ``<image>`` for every image part, then ``<video>`` for every video part, then the text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from earlytom_vllm.checkpoints.common import (
    IM_END,
    IM_START,
    MAX_POSITIONS,
    PAD_TOKEN,
    TINY_SIZES,
    Recipe,
    padded_vocab,
    special_ids,
)

IMAGE_SIZE = 384
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 27
NUM_IMAGE_TOKENS = GRID * GRID  # 729 tokens per 384 x 384 crop
#: Kept short so that image prompts stay short: at most 2 x 2 crops of 384 px.
IMAGE_GRID_PINPOINTS = [[384, 384], [384, 768], [768, 384], [768, 768]]
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN)
SAFETENSORS = "model.safetensors"

# transformers 5.19 saves the SigLIP tower as ``vision_tower.{embeddings,encoder,post_layernorm}.*``;
# vLLM 0.32 loads the hub layout ``vision_tower.vision_model.*`` (transformers maps it back on load).
_VISION_KEY = re.compile(r"^((?:model\.)?vision_tower\.)(embeddings|encoder|post_layernorm|head)\.")
_HUB_VISION_KEY = re.compile(r"^((?:model\.)?vision_tower\.)vision_model\.")

#: Chat template: per message, all images, then all videos, then the text parts (joined by
#: newlines, separated from the media by one newline). A string ``content`` is used verbatim.
#: vLLM detects the "openai" content format from the loops over ``message['content']`` and
#: passes image_url / video_url parts as ``{"type": "image"}`` / ``{"type": "video"}``.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- set ns = namespace(started=false) -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{{- '<image>' -}}{%- set ns.started = true -%}"
    "{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') -%}"
    "{{- '<video>' -}}{%- set ns.started = true -%}"
    "{%- endfor -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{%- if ns.started -%}{{- '\\n' -}}{%- endif -%}"
    "{{- content['text'] -}}{%- set ns.started = true -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)



class LlavaOnevisionRecipe(Recipe):
    def hf_config(self, tokenizer: Any, sizes: dict[str, Any]) -> Any:
        from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

        ids = special_ids(tokenizer, SPECIAL_TOKENS)
        vocab_size = padded_vocab(tokenizer)
        vision = SiglipVisionConfig(
            hidden_size=sizes["vision_hidden"],
            intermediate_size=sizes["vision_intermediate"],
            num_hidden_layers=sizes["vision_layers"],
            num_attention_heads=sizes["vision_heads"],
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            vision_use_head=False,
        )
        text = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=sizes["text_hidden"],
            intermediate_size=sizes["text_intermediate"],
            num_hidden_layers=sizes["text_layers"],
            num_attention_heads=sizes["text_heads"],
            num_key_value_heads=sizes["text_kv_heads"],
            max_position_embeddings=MAX_POSITIONS,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
            bos_token_id=ids[PAD_TOKEN],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD_TOKEN],
        )
        config = LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=ids[IMAGE_TOKEN],
            video_token_index=ids[VIDEO_TOKEN],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[list(p) for p in IMAGE_GRID_PINPOINTS],
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=True,
        )
        config.architectures = ["LlavaOnevisionForConditionalGeneration"]
        return config

    def hf_processor(self, tokenizer: Any) -> Any:
        from transformers import (
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        common = {
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        }
        image_processor = LlavaOnevisionImageProcessor(
            **common, image_grid_pinpoints=[list(p) for p in IMAGE_GRID_PINPOINTS]
        )
        video_processor = LlavaOnevisionVideoProcessor(**common)
        return LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            num_image_tokens=NUM_IMAGE_TOKENS,
            vision_feature_select_strategy="full",
            chat_template=CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
            video_token=VIDEO_TOKEN,
            vision_aspect_ratio="anyres_max_9",
        )

    def after_save(self, path: Path) -> None:
        _rename_vision_keys(path)


def to_hub_key(key: str) -> str:
    """Name of a weight as transformers 5.19 saves it -> the hub name vLLM 0.32 loads.

    Only the SigLIP tower differs: ``vision_tower.encoder.layers.0...`` becomes
    ``vision_tower.vision_model.encoder.layers.0...``; every other key is returned unchanged.
    """
    return _VISION_KEY.sub(r"\1vision_model.\2.", key, count=1)


def from_hub_key(key: str) -> str:
    """Inverse of :func:`to_hub_key`."""
    return _HUB_VISION_KEY.sub(r"\1", key, count=1)


def _rename_vision_keys(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(path.glob("*.safetensors"))
    if not files or (path / f"{SAFETENSORS}.index.json").exists():
        raise RuntimeError(f"expected one unsharded {SAFETENSORS} in {path}, found {files}")
    file = files[0]
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {to_hub_key(k): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if not any(_HUB_VISION_KEY.match(k) for k in tensors):
        raise RuntimeError(f"no vision-tower weights found to rename in {file}")
    metadata.setdefault("format", "pt")
    tmp = file.with_suffix(".tmp")
    save_file(dict(sorted(tensors.items())), str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, file)


RECIPE = LlavaOnevisionRecipe(special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE,
                              defaults=dict(TINY_SIZES),
                              model_class="LlavaOnevisionForConditionalGeneration")
