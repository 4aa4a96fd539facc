"""What every family's random-weight checkpoint shares: the local tokenizer, the size checks,
random weights from a seed, and how the files are written. A family's recipe
(``earlytom_vllm/checkpoints/<family>.py``) adds its config, processor and chat template."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

BPE_VOCAB_SIZE = 1000  # learned vocabulary (bytes + merges) before the special tokens
MAX_POSITIONS = 32768
DTYPES = ("float32", "bfloat16", "float16")
BUILD_LOCK = threading.RLock()

#: The tiny model's sizes, shared by every family unless its recipe says otherwise.
TINY_SIZES: dict[str, Any] = {
    "seed": 0, "vision_hidden": 64, "vision_layers": 26, "vision_heads": 2,
    "vision_intermediate": 256, "text_hidden": 128, "text_layers": 2, "text_heads": 2,
    "text_kv_heads": 1, "text_intermediate": 256, "dtype": "float32",
}


@dataclass(frozen=True)
class Recipe:
    """One family's checkpoint: what differs from the shared builder. Subclasses write the
    transformers config and processor; ``defaults`` are the tiny model's sizes."""

    special_tokens: tuple[str, ...]
    chat_template: str
    defaults: dict[str, Any]
    model_class: str  # the transformers class that draws the random weights

    def validate(self, sizes: dict[str, Any]) -> None:
        validate_sizes(sizes)

    def hf_config(self, tokenizer: Any, sizes: dict[str, Any]) -> Any:
        raise NotImplementedError

    def hf_processor(self, tokenizer: Any) -> Any:
        raise NotImplementedError

    def after_save(self, path: Path) -> None:
        """Rewrite the saved files where vLLM loads another layout than transformers writes."""


def validate_sizes(sizes: dict[str, Any]) -> None:
    """Check a builder's sizes (TypeError / ValueError naming the field)."""
    for name, value in sizes.items():
        if name == "dtype":
            if value not in DTYPES:
                raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be positive, got {value!r}")
    for width, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads"),
                         ("text_heads", "text_kv_heads")):
        if sizes[width] % sizes[heads]:
            raise ValueError(f"{width} must be divisible by {heads}")


def special_ids(tokenizer: Any, tokens: tuple[str, ...]) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def padded_vocab(tokenizer: Any) -> int:
    return 64 * ((len(tokenizer) + 63) // 64)


def text_config(tokenizer: Any, sizes: dict[str, Any], rope: dict[str, Any]) -> dict[str, Any]:
    """The language model every family's tiny checkpoint shares (the Qwen2 layout: widths from
    ``sizes``, the tokenizer's pad / end-of-turn ids, tied embeddings), with ``rope``."""
    ids = special_ids(tokenizer, (PAD_TOKEN, IM_END))
    return {
        "vocab_size": padded_vocab(tokenizer),
        "hidden_size": sizes["text_hidden"],
        "intermediate_size": sizes["text_intermediate"],
        "num_hidden_layers": sizes["text_layers"],
        "num_attention_heads": sizes["text_heads"],
        "num_key_value_heads": sizes["text_kv_heads"],
        "max_position_embeddings": MAX_POSITIONS,
        "rope_parameters": rope,
        "tie_word_embeddings": True,
        "bos_token_id": ids[PAD_TOKEN],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[PAD_TOKEN],
    }


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


def _train_tokenizer(special_tokens: tuple[str, ...]):
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
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = [line for _ in range(4) for line in _CORPUS_LINES]
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tok


def make_tokenizer(special_tokens: tuple[str, ...], chat_template: str):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=_train_tokenizer(special_tokens),
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        model_max_length=MAX_POSITIONS,
        chat_template=chat_template,
    )


def make_model(config, seed: int, model_class: str):
    """Random weights from ``seed``: float32, on the CPU; the caller's RNG state is left alone."""
    import torch
    import transformers

    # Initialisation draws from torch's global CPU generator (callers hold BUILD_LOCK, so threads
    # cannot interleave their draws); the generator is restored afterwards.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(config)
    return model.to(torch.float32).eval()


def save(out: Path, model, processor, tokenizer, dtype: str) -> None:
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
