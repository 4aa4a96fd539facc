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


def _resolve_sizes(sizes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(sizes) - set(_DEFAULT_ARGS))
    if unknown:
        raise TypeError(f"unknown checkpoint argument(s): {', '.join(unknown)}")
    resolved = {**_DEFAULT_ARGS, **sizes}
    _validate(resolved)
    return resolved


def checkpoint_key(**sizes: Any) -> str:
    """The cache key of a checkpoint: a hash of the resolved arguments and the builder version."""
    payload = json.dumps(
        {"builder_version": BUILDER_VERSION, "args": _resolve_sizes(sizes)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_checkpoint(cache_dir: str | os.PathLike[str] | None = None, **sizes: Any) -> Path:
    """Return the path of a cached checkpoint built with ``build_checkpoint(**sizes)``.

    The directory is ``<cache_dir>/<name>-<hash>`` where the hash covers all arguments of
    :func:`build_checkpoint` (defaults filled in, ``seed`` and ``dtype`` included) and
    :data:`BUILDER_VERSION`. Safe to call from several processes at once.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    resolved = _resolve_sizes(sizes)
    target = root / f"{CHECKPOINT_NAME}-{checkpoint_key(**resolved)}"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    # Threads of one process build one at a time (transformers' lazy imports and torch's global
    # generator are not thread-safe) and reuse each other's result; processes race on the rename.
    with _BUILD_LOCK:
        if (target / _COMPLETE_MARKER).is_file():
            return target
        return _build_into_cache(root, target, resolved)


def _build_into_cache(root: Path, target: Path, resolved: dict[str, Any]) -> Path:
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
        build_checkpoint(tmp, **resolved)
        (tmp / _COMPLETE_MARKER).write_text(
            json.dumps({"builder_version": BUILDER_VERSION, "args": resolved}, sort_keys=True)
        )
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


def _train_tokenizer():
    """A byte-level BPE in the Qwen2 layout, trained on the built-in corpus (deterministic)."""
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
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _make_tokenizer():
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=_train_tokenizer(),
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        model_max_length=_MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
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


def _make_model(config, seed: int):
    """Random weights from ``seed``: float32, on the CPU; the caller's RNG state is left alone."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    # Initialisation draws from torch's global CPU generator (callers hold _BUILD_LOCK, so threads
    # cannot interleave their draws); the generator is restored afterwards.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
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
    import torch
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    seed, dtype = sizes["seed"], sizes["dtype"]
    tokenizer = _make_tokenizer()
    config = _make_config(tokenizer, sizes)
    processor = _make_processor(tokenizer)
    model = _make_model(config, seed)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )

    model.save_pretrained(out)
    _rename_vision_keys(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


#: The keyword arguments of :func:`build_checkpoint` with their defaults (the default tiny model).
_DEFAULT_ARGS: dict[str, Any] = {
    p.name: p.default
    for p in inspect.signature(build_checkpoint).parameters.values()
    if p.kind is p.KEYWORD_ONLY
}
