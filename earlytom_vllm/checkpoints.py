"""A tiny random-weight LLaVA-OneVision checkpoint, built locally and cached.

No weights can be downloaded here, so tests, benchmarks and the demo serve a checkpoint built with
transformers: the real geometry where it matters to EarlyTom and to vLLM (SigLIP at 384 px with
14 px patches, i.e. a 27 x 27 = 729-token grid, 26 encoder layers, no attention-pooling head; a
Qwen2 language model with head size 64), but tiny widths so that it runs fast on a CPU.

What :func:`build_checkpoint` writes (all with ``save_pretrained``):

- ``config.json`` / ``model.safetensors`` / ``generation_config.json``: a
  ``LlavaOnevisionForConditionalGeneration`` with random weights drawn from ``torch.manual_seed(seed)``
  in float32 on the CPU, so the same arguments give byte-identical files. The vision-tower keys are
  renamed to the hub layout (``vision_tower.vision_model.*``) that vLLM 0.32 loads; transformers
  5.19 writes ``vision_tower.{embeddings,encoder,post_layernorm}.*`` and maps the hub layout back
  when it loads.
- a byte-level BPE tokenizer trained with ``tokenizers`` on a built-in corpus, wrapped as
  ``Qwen2Tokenizer``: special tokens ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos),
  ``<image>``, ``<video>`` appended after the learned vocabulary (as in Qwen2); no BOS.
- a ``LlavaOnevisionProcessor`` (image and video processors with mean = std = 0.5 at 384 x 384) and
  a chat template shaped like the llava-hf LLaVA-OneVision ones: per message, ``<image>`` for every
  image part, then ``<video>`` for every video part, then the text.

:func:`ensure_checkpoint` builds once per distinct set of arguments and caches the result under
:data:`DEFAULT_CACHE_DIR` (``$EARLYTOM_CACHE`` if set when this module is imported, else
``~/.cache/earlytom-vllm/checkpoints``) as ``<name>-<hash>``. Concurrent builders race safely: each
builds into its own temporary directory next to the target and renames it into place; a loser
discards its copy and uses the winner's.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bump whenever the files produced for the same arguments change: it is part of the cache key.
BUILDER_VERSION = 1

#: Name prefix of cached checkpoint directories.
CHECKPOINT_NAME = "tiny-llava-onevision"

#: Cache root, resolved once at import: ``$EARLYTOM_CACHE`` or ``~/.cache/earlytom-vllm/checkpoints``.
DEFAULT_CACHE_DIR = Path(
    os.environ.get("EARLYTOM_CACHE") or Path.home() / ".cache" / "earlytom-vllm" / "checkpoints"
).expanduser()

# Real LLaVA-OneVision geometry.
IMAGE_SIZE = 384
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 27
NUM_IMAGE_TOKENS = GRID * GRID  # 729 tokens per 384 x 384 crop

#: Kept short so that image prompts stay short: at most 2 x 2 crops of 384 px.
IMAGE_GRID_PINPOINTS = [[384, 384], [384, 768], [768, 384], [768, 768]]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN)

_BPE_VOCAB_SIZE = 1000  # learned vocabulary (bytes + merges) before the special tokens
_MAX_POSITIONS = 32768
_DTYPES = ("float32", "bfloat16", "float16")
_SAFETENSORS = "model.safetensors"
_COMPLETE_MARKER = ".earlytom-complete"
_BUILD_LOCK = threading.RLock()

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

_CORPUS_LINES = (
    "A person walks into the kitchen, opens the fridge and takes out a bottle of milk.",
    "The video shows a red car driving along a coastal road at sunset.",
    "Two children are playing football in a park while a dog runs after the ball.",
    "A woman is cutting vegetables on a wooden board and putting them into a pot.",
    "The camera pans slowly across a mountain lake surrounded by pine trees.",
    "A man in a blue jacket is riding a bicycle through a busy city street.",
    "Describe what happens in this video in one sentence.",
    "What is the person holding in their left hand?",
    "How many people appear in the video, and what are they doing?",
    "What color is the cat that jumps onto the table?",
    "Answer with the letter of the correct option: A, B, C or D.",
    "The answer is B because the man picks up the red cup after the woman leaves.",
    "First the chef boils water, then adds pasta, and finally serves it on a white plate.",
    "At the beginning of the clip a bird lands on a branch; later it flies away.",
    "The weather is cloudy and it starts to rain near the end of the video.",
    "Please summarize the main events of the video step by step.",
    "In the image, there is a small house with a green door and two windows.",
    "The image shows a plate of food with rice, chicken and a slice of lemon.",
    "You are a helpful assistant that answers questions about images and videos.",
    "The user asks a question and the assistant gives a short and accurate answer.",
    "Frames are sampled uniformly from the video and encoded by the vision tower.",
    "Visual tokens are merged and pruned inside the encoder to save computation.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She opens the door, looks around the room and sits down on the sofa.",
    "He is reading a book at the desk while music plays in the background.",
    "The train arrives at the station and passengers step onto the platform.",
    "A group of students is listening to a teacher who writes on the blackboard.",
    "Is the light on or off at the end of the video? Yes, it is on.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 64 100 128 256 384 729 1000 2024.",
    "Time stamps: 00:00, 00:05, 00:10, 00:30, 01:00, 02:15, 10:45.",
    "Punctuation and symbols: ( ) [ ] { } < > / \\ | - _ + = * & % $ # @ ! ? ; : ' \" , .",
    "def main():\n    print('hello world')\n    return 0\n",
    "The end.\n\nThank you for watching!\n",
)


# --------------------------------------------------------------------------------------------------
# Cache


@dataclass(frozen=True)
class _Family:
    """What the cache needs to know about one model family's builder."""

    name: str  # directory prefix
    version: int  # builder version, part of the key
    tag: str | None  # part of the key; None for LLaVA-OneVision, whose keys predate families
    build: Callable[..., Path]  # build(path, **resolved)
    defaults: Callable[[], dict[str, Any]]
    validate: Callable[[dict[str, Any]], None]

    def resolve(self, sizes: dict[str, Any]) -> dict[str, Any]:
        defaults = self.defaults()
        unknown = sorted(set(sizes) - set(defaults))
        if unknown:
            raise TypeError(f"unknown checkpoint argument(s): {', '.join(unknown)}")
        resolved = {**defaults, **sizes}
        self.validate(resolved)
        return resolved

    def payload(self, resolved: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"builder_version": self.version, "args": resolved}
        if self.tag is not None:
            payload["family"] = self.tag
        return payload

    def key(self, sizes: dict[str, Any]) -> str:
        payload = json.dumps(self.payload(self.resolve(sizes)), sort_keys=True,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _resolve_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    return _LLAVA.resolve(sizes)


def checkpoint_key(**sizes: Any) -> str:
    """The cache key of a checkpoint: a hash of the resolved arguments and the builder version."""
    return _LLAVA.key(sizes)


def ensure_checkpoint(cache_dir: str | os.PathLike[str] | None = None, **sizes: Any) -> Path:
    """Return the path of a cached checkpoint built with ``build_checkpoint(**sizes)``.

    The directory is ``<cache_dir>/<name>-<hash>`` where the hash covers all arguments of
    :func:`build_checkpoint` (defaults filled in, ``seed`` and ``dtype`` included) and
    :data:`BUILDER_VERSION`. Safe to call from several processes at once.
    """
    return _ensure(_LLAVA, cache_dir, sizes)


def _ensure(family: _Family, cache_dir: str | os.PathLike[str] | None,
            sizes: dict[str, Any]) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    resolved = family.resolve(sizes)
    target = root / f"{family.name}-{family.key(resolved)}"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    # Threads of one process build one at a time (transformers' lazy imports and torch's global
    # generator are not thread-safe) and reuse each other's result; processes race on the rename.
    with _BUILD_LOCK:
        if (target / _COMPLETE_MARKER).is_file():
            return target
        return _build_into_cache(family, root, target, resolved)


def _build_into_cache(family: _Family, root: Path, target: Path,
                      resolved: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if (target / _COMPLETE_MARKER).is_file():  # another process finished meanwhile
        return target
    if target.exists():
        # Only a rename of a complete build (marker written first) creates ``target``, so this is
        # debris from elsewhere (say a manual copy): move it out of the way atomically, rebuild.
        stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.stale-"))
        if not (target / _COMPLETE_MARKER).is_file():
            with contextlib.suppress(OSError):
                os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
        if (target / _COMPLETE_MARKER).is_file():
            return target

    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.tmp-"))
    try:
        family.build(tmp, **resolved)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(family.payload(resolved), sort_keys=True))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, target)
        except OSError:
            # Lost the race: the winner's directory is complete (it was renamed in whole).
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The default tiny checkpoint (``ensure_checkpoint()`` with the default sizes)."""
    return ensure_checkpoint(cache_dir)


# --------------------------------------------------------------------------------------------------
# Builder


def _validate(sizes: dict[str, Any]) -> None:
    """Check :func:`build_checkpoint`'s arguments (TypeError / ValueError naming the field)."""
    for name, value in sizes.items():
        if name == "dtype":
            if value not in _DTYPES:
                raise ValueError(f"dtype must be one of {_DTYPES}, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be positive, got {value!r}")
    for width, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads"),
                         ("text_heads", "text_kv_heads")):
        if sizes[width] % sizes[heads]:
            raise ValueError(f"{width} must be divisible by {heads}")


def _train_tokenizer(special_tokens: tuple[str, ...] = SPECIAL_TOKENS):
    """A byte-level BPE in the Qwen2 layout, trained on the built-in corpus (deterministic), with
    ``special_tokens`` appended after the learned vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # The same normalizer / pre-tokenizer / decoder as Qwen2Tokenizer, so that reloading the saved
    # tokenizer (which rebuilds the backend around the saved vocab and merges) changes nothing.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = [line for _ in range(4) for line in _CORPUS_LINES]
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok


def _make_tokenizer(special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
                    chat_template: str = CHAT_TEMPLATE):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=_train_tokenizer(special_tokens),
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        model_max_length=_MAX_POSITIONS,
        chat_template=chat_template,
    )


def _make_config(tokenizer, sizes: dict[str, Any]):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = 64 * math.ceil(len(tokenizer) / 64)
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
        max_position_embeddings=_MAX_POSITIONS,
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


def _make_processor(tokenizer):
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


def _make_model(config, seed: int, model_class: str = "LlavaOnevisionForConditionalGeneration"):
    """Random weights from ``seed``: float32, on the CPU; the caller's RNG state is left alone."""
    import torch
    import transformers

    # Initialisation draws from torch's global CPU generator (callers hold _BUILD_LOCK, so threads
    # cannot interleave their draws); the generator is restored afterwards.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(config)
    return model.to(torch.float32).eval()


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
    if not files or (path / f"{_SAFETENSORS}.index.json").exists():
        raise RuntimeError(f"expected one unsharded {_SAFETENSORS} in {path}, found {files}")
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


def build_checkpoint(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    vision_hidden: int = 64,
    vision_layers: int = 26,
    vision_heads: int = 2,
    vision_intermediate: int = 256,
    text_hidden: int = 128,
    text_layers: int = 2,
    text_heads: int = 2,
    text_kv_heads: int = 1,
    text_intermediate: int = 256,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight LLaVA-OneVision checkpoint into ``path`` (created if needed).

    The same arguments always give the same files (weights byte for byte). Returns ``path``.
    Thread-safe (builds in one process are serialised); torch's global RNG state is preserved.
    """
    sizes = {
        "seed": seed,
        "vision_hidden": vision_hidden,
        "vision_layers": vision_layers,
        "vision_heads": vision_heads,
        "vision_intermediate": vision_intermediate,
        "text_hidden": text_hidden,
        "text_layers": text_layers,
        "text_heads": text_heads,
        "text_kv_heads": text_kv_heads,
        "text_intermediate": text_intermediate,
        "dtype": dtype,
    }
    _validate(sizes)
    with _BUILD_LOCK:
        return _build(Path(path), sizes)


def _build(out: Path, sizes: dict[str, Any]) -> Path:
    tokenizer = _make_tokenizer()
    config = _make_config(tokenizer, sizes)
    model = _make_model(config, sizes["seed"])
    _save(out, model, _make_processor(tokenizer), tokenizer, sizes["dtype"])
    _rename_vision_keys(out)
    return out


def _save(out: Path, model, processor, tokenizer, dtype: str) -> None:
    """Cast, attach the greedy generation config, and write model, processor and tokenizer."""
    import torch
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    text = model.config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, text.pad_token_id],
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)


#: The keyword arguments of :func:`build_checkpoint` with their defaults (the default tiny model).
_DEFAULT_ARGS: dict[str, Any] = {
    p.name: p.default
    for p in inspect.signature(build_checkpoint).parameters.values()
    if p.kind is p.KEYWORD_ONLY
}

_LLAVA = _Family(
    name=CHECKPOINT_NAME,
    version=BUILDER_VERSION,
    tag=None,
    build=lambda path, **sizes: build_checkpoint(path, **sizes),  # looked up per call
    defaults=lambda: _DEFAULT_ARGS,
    validate=lambda sizes: _validate(sizes),
)


# --------------------------------------------------------------------------------------------------
# Qwen2.5-VL

#: Name prefix of cached Qwen2.5-VL checkpoint directories.
QWEN_CHECKPOINT_NAME = "tiny-qwen2-5-vl"
#: Bump whenever the Qwen2.5-VL files produced for the same arguments change (part of its key).
QWEN_BUILDER_VERSION = 1

# Real Qwen2.5-VL vision geometry (method.md section 7).
QWEN_PATCH_SIZE = 14
QWEN_TEMPORAL_PATCH = 2
QWEN_MERGE = 2
QWEN_WINDOW = 112  # px: 8 x 8 patches = 4 x 4 merge units
QWEN_TOKENS_PER_SECOND = 2
#: Full attention every 8th block, as in every released Qwen2.5-VL (depth 32: 7, 15, 23, 31).
QWEN_FULLATT_EVERY = 8
#: Pixel limits of both processors (vLLM estimates video counts from the image processor's
#: ``size``, so they must agree): 56 x 56 .. 448 x 448 keeps tiny prompts tiny.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 448 * 448
QWEN_VISION_START = "<|vision_start|>"
QWEN_VISION_END = "<|vision_end|>"
QWEN_IMAGE_PAD = "<|image_pad|>"
QWEN_VIDEO_PAD = "<|video_pad|>"
QWEN_SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, QWEN_VISION_START, QWEN_VISION_END,
                       QWEN_IMAGE_PAD, QWEN_VIDEO_PAD)

#: Chat template with the structure of Qwen/Qwen2.5-VL-7B-Instruct's: a default system message,
#: then per message its parts IN ORDER, an image as ``<|vision_start|><|image_pad|><|vision_end|>``
#: and a video as ``<|vision_start|><|video_pad|><|vision_end|>``.
QWEN_CHAT_TEMPLATE = (
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

#: The benchmark-sized Qwen2.5-VL (``ensure_qwen_checkpoint(**QWEN_BENCHMARK_SIZES)``): the tiny
#: model's vision tower (real geometry, 64 wide) and an LLM sized so that the vision encoder takes
#: the share of a full-token TTFT that it takes in Qwen2.5-VL-7B at the benchmark's 32 frames of
#: 448 x 448 (16 slices of 32 x 32 patches, 4096 video tokens, ~100 text tokens).
#:
#: Target, from FLOPs (this project's convention: multiply-adds, attention per slice as vLLM runs
#: it, windows of 64 patches, GQA, 3-matrix SwiGLU MLPs): Qwen2.5-VL-7B's vision tower (32 x 1280,
#: MLP 3420, patch embedding and merger included) is 10.8 T, its LLM (Qwen2.5-7B: 28 x 3584, 4 KV
#: heads, MLP 18944) over 4196 tokens 30.9 T: the encoder is 25.8% of the prefill (24-27% from 16
#: to 64 frames, 336 to 672 px).
#:
#: On this CPU the tiny tower takes 2.6-3.0 s for that video (quiet machine; it is dominated by
#: the per-window attention calls, which scale with the slices as the real encoder's FLOPs do);
#: a 4112-token text-only prefill of a 512 x 4 LLM took 2.4 s (~55 G multiply-adds/s, the
#: attention's n^2 term dominating at these widths). 768 x 7 (12 heads of 64, 2 KV heads, MLP
#: 3072, ~425 G multiply-adds at that length) is then ~7.7 s, so the encoder is ~26% of a
#: ~11 s full-token TTFT. Re-measure on the benchmark machine: the encoder time is the model's
#: trace (``encoder_seconds`` with ``trace`` on), the LLM time a text-only prompt of equal length.
QWEN_BENCHMARK_SIZES: dict[str, Any] = {
    "text_hidden": 768,
    "text_layers": 7,
    "text_heads": 12,
    "text_kv_heads": 2,
    "text_intermediate": 3072,
}


def _validate_qwen(sizes: dict[str, Any]) -> None:
    _validate(sizes)
    for width, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads")):
        if (sizes[width] // sizes[heads]) % 16:
            # vision: 2-D rotary over half the head; text: M-RoPE sections 1/4, 3/8, 3/8 of it
            raise ValueError(f"{width} / {heads} (the head size) must be a multiple of 16")
    if sizes["vision_layers"] < QWEN_FULLATT_EVERY:
        raise ValueError(f"vision_layers must be >= {QWEN_FULLATT_EVERY} (a full-attention block)")


def qwen_checkpoint_key(**sizes: Any) -> str:
    """The cache key of a Qwen2.5-VL checkpoint (arguments of :func:`build_qwen_checkpoint`)."""
    return _QWEN.key(sizes)


def ensure_qwen_checkpoint(cache_dir: str | os.PathLike[str] | None = None,
                           **sizes: Any) -> Path:
    """Like :func:`ensure_checkpoint`, for :func:`build_qwen_checkpoint` (directories named
    ``tiny-qwen2-5-vl-<hash>``)."""
    return _ensure(_QWEN, cache_dir, sizes)


def _make_qwen_config(tokenizer, sizes: dict[str, Any]):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    depth = sizes["vision_layers"]
    half = sizes["text_hidden"] // sizes["text_heads"] // 2  # rotary frequencies per head
    mrope = [half // 4, 3 * half // 8, 3 * half // 8]  # 7B: head 128 -> [16, 24, 24]
    text = {
        "vocab_size": 64 * math.ceil(len(tokenizer) / 64),
        "hidden_size": sizes["text_hidden"],
        "intermediate_size": sizes["text_intermediate"],
        "num_hidden_layers": sizes["text_layers"],
        "num_attention_heads": sizes["text_heads"],
        "num_key_value_heads": sizes["text_kv_heads"],
        "max_position_embeddings": _MAX_POSITIONS,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                            "mrope_section": mrope},
        "tie_word_embeddings": True,
        "bos_token_id": ids[PAD_TOKEN],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[PAD_TOKEN],
    }
    vision = {
        "depth": depth,
        "hidden_size": sizes["vision_hidden"],
        "intermediate_size": sizes["vision_intermediate"],
        "num_heads": sizes["vision_heads"],
        "hidden_act": "silu",
        "patch_size": QWEN_PATCH_SIZE,
        "temporal_patch_size": QWEN_TEMPORAL_PATCH,
        "spatial_merge_size": QWEN_MERGE,
        "window_size": QWEN_WINDOW,
        "tokens_per_second": QWEN_TOKENS_PER_SECOND,
        "out_hidden_size": sizes["text_hidden"],
        "fullatt_block_indexes": list(range(QWEN_FULLATT_EVERY - 1, depth, QWEN_FULLATT_EVERY)),
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[QWEN_IMAGE_PAD],
        video_token_id=ids[QWEN_VIDEO_PAD],
        vision_start_token_id=ids[QWEN_VISION_START],
        vision_end_token_id=ids[QWEN_VISION_END],
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _make_qwen_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    common = {
        "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        "patch_size": QWEN_PATCH_SIZE,
        "temporal_patch_size": QWEN_TEMPORAL_PATCH,
        "merge_size": QWEN_MERGE,
    }
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**common),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def build_qwen_checkpoint(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    vision_hidden: int = 64,
    vision_layers: int = 32,
    vision_heads: int = 2,
    vision_intermediate: int = 128,
    text_hidden: int = 128,
    text_layers: int = 2,
    text_heads: int = 2,
    text_kv_heads: int = 1,
    text_intermediate: int = 256,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint into ``path`` (created if needed).

    The real vision geometry (``vision_layers`` blocks with full attention in every 8th: 7, 15,
    23, 31 at depth 32; windows of 112 px; 14 px patches; 2 x 2 merge; temporal patches of 2
    frames; 2 tokens per second) with small widths; a Qwen2 LLM with M-RoPE. Tokenizer: the
    project's local BPE plus Qwen's vision tokens; processors: ``Qwen2_5_VLProcessor`` with
    ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` sharing one pixel range. The same
    arguments always give the same files. Weights are saved as transformers writes them (vLLM
    0.32 maps that layout itself).
    """
    sizes = {
        "seed": seed,
        "vision_hidden": vision_hidden,
        "vision_layers": vision_layers,
        "vision_heads": vision_heads,
        "vision_intermediate": vision_intermediate,
        "text_hidden": text_hidden,
        "text_layers": text_layers,
        "text_heads": text_heads,
        "text_kv_heads": text_kv_heads,
        "text_intermediate": text_intermediate,
        "dtype": dtype,
    }
    _validate_qwen(sizes)
    with _BUILD_LOCK:
        out = Path(path)
        tokenizer = _make_tokenizer(QWEN_SPECIAL_TOKENS, QWEN_CHAT_TEMPLATE)
        config = _make_qwen_config(tokenizer, sizes)
        model = _make_model(config, seed, "Qwen2_5_VLForConditionalGeneration")
        _save(out, model, _make_qwen_processor(tokenizer), tokenizer, dtype)
        return out


#: The keyword arguments of :func:`build_qwen_checkpoint` with their defaults.
_QWEN_DEFAULT_ARGS: dict[str, Any] = {
    p.name: p.default
    for p in inspect.signature(build_qwen_checkpoint).parameters.values()
    if p.kind is p.KEYWORD_ONLY
}

_QWEN = _Family(
    name=QWEN_CHECKPOINT_NAME,
    version=QWEN_BUILDER_VERSION,
    tag="qwen2_5_vl",
    build=lambda path, **sizes: build_qwen_checkpoint(path, **sizes),  # looked up per call
    defaults=lambda: _QWEN_DEFAULT_ARGS,
    validate=lambda sizes: _validate_qwen(sizes),
)
