"""Prefill FLOPs of LLaVA-OneVision and Qwen2.5-VL video requests, full and compressed: exact arithmetic, no model.

Run ``python -m benchmarks.flops`` (or ``python benchmarks/flops.py``) from the repository root. It
prints, per model, one table with both conventions side by side, writes everything to
``benchmarks/results/flops.json`` (``--json``) and draws ``benchmarks/results/flops.png``
(``--plot``). Deterministic; no timestamps, so the committed JSON must equal a fresh run
(``tests/bench/test_flops.py`` checks it: re-run the script after changing anything here).

Unit
    One multiply-add is counted as ONE FLOP, as the paper does (its layer formula below counts
    multiply-adds). Hardware FLOPs are twice that: pass ``--flops-per-mac 2``. Softmax, norms,
    activations, biases, residual adds, RoPE, bilinear pooling, the Stage I similarities and the
    Stage II sort are not counted (each is < 0.1% of the total); neither is the LM head (prefill
    computes logits for the last position only: one ``D x vocab`` product).

This project's convention (the default; what the README quotes), per request of T frames:
    * patch embedding: ``T * 729 * (3*14*14) * 1152`` (a 14x14 conv, stride 14, at 384 px).
    * SigLIP encoder: 26 layers, counted PER FRAME (attention never crosses frames), with the
      frame count that really enters each layer: ``sum_i F_i * (4 N w^2 + 2 N^2 w + 2 N w m)``,
      N = 729, w = 1152, m = 4304. EarlyTom's F_i drops after each prune layer.
    * projector: ``F_out * 729 * (w D + D D)`` (Linear w->D, GELU, Linear D->D, before pooling).
    * LLM (Qwen2), n = visual + text tokens, per layer: q and o ``n D^2`` each, k and v
      ``n D (kv_heads * head_dim)`` each (GQA), scores and P.V ``n^2 D`` each (full square;
      ``--causal`` counts the ``n(n+1)/2`` a causal kernel needs), SwiGLU MLP ``3 n D M``.
    * visual tokens in the LLM: full = ``T*196 + 1``; both pruned methods (post-encoder and
      EarlyTom) = ``video_token_budget(T, r) + 1`` from ``earlytom_vllm.core`` (the one budget
      function the server uses; the +1 is the ``image_newline``).
    * text tokens: 100 by default (``--text-tokens``). The LLaVA-OV (qwen_1_5) chat template
      (system prompt, role tags) is ~20 tokens; a benchmark-style multiple-choice video question
      with four options and its answer instruction ("Select the best answer ... Respond with only
      the letter ...") is ~80 more. Not counted in the paper's convention.

The paper's convention (``--paper-convention`` prints only it; the JSON always has both):
    * a layer is ``4 n d^2 + 2 n^2 d + 2 n d m`` for ANY model: the LLM without GQA and with a
      2-matrix MLP, and the vision encoder as ONE sequence of ``F * 729`` tokens (all frames
      attending to each other), 26 layers. Patch embedding and projector are not counted.
    * LLM tokens = ``floor(r * T * 196)`` visual tokens only: no newline, no text, and a ratio
      of the full 6272, NOT the per-frame ceiling the serving budget uses.
    * HoliTom (post-encoder, plus its merge inside the LLM) and the paper's EarlyTom rows keep
      that count for LLM layers 0..17 and ``floor(n / 2)`` from layer 18 on (docs/method.md section
      5: the released code's optional LLM merge, "layer 18, keep half"; the paper's rows
      include it). Layer 18 is used literally for every model (it is the released code's value,
      stated for the 28-layer 7B), so the 0.5B and 72B HoliTom / EarlyTom* rows are indicative.

    Found by solving for the token counts that make every published figure come out (LLaVA-OV-7B,
    32 frames; docs/method.md section 6):

    ====================================  ========================  ========  =========
    row                                   tokens                    computed  published
    ====================================  ========================  ========  =========
    vision encoder alone, one sequence    26 x 23,328               41.834    41.8
    vision encoder alone, per frame       32 x 26 x 729             10.253    10.25
    full tokens                           6272 (6273 also: 82.607)  82.599    82.6
    VisionZip / FastVID 25% (post-enc.)   1568 = 32 x 49            50.545    50.5
    VisionZip / FastVID 10% (post-enc.)   627 = floor(627.2)        45.199    45.2
    HoliTom 10%                           627, then 313 from L18    44.590    44.6
    EarlyTom 25% (default schedule)       1568, then 784 from L18   36.524    36.5
    EarlyTom 10% (default schedule)       627, then 313 from L18    32.168    32.2
    ====================================  ========================  ========  =========

    The serving budget's counts do not reproduce them: 25% with the newline (1569) gives 50.551,
    and 10% as ``32 * ceil(19.6) = 640`` gives 45.270 (VisionZip) and 44.649 (HoliTom).
    Adding the projector (+0.40) or text tokens (+0.78 per 100 tokens) breaks 82.6.

EarlyTom frame schedules (frames left after each prune layer; both are clamped so that no
frame holds more than 196 tokens, i.e. ``T' >= min_frames_for_budget(budget)``, and at r = 1
nothing is compressed):
    * ``--schedule`` (default ``10:22,21:20,23:17``): prune layers (10, 21, 23), the serving
      default of ``EarlyTomConfig``, with the frame counts implied by the paper's own EarlyTom
      rows: under its convention this schedule gives 36.5 (25%) and 32.2 (10%), the published
      figures (not uniquely: e.g. 10:23,21:17,23:13 also does). For T != 32 frames and no
      ``--schedule``, the counts are scaled by T / 32.
    * the Stage I rule (``earlytom_stage1_rule``): the library's own ``segment_frames`` and
      ``merge_frames`` with the serving defaults (tau 0.5, max_window 6, ema 0.9) run on a
      synthetic video (:func:`benchmarks.harness.synthetic_hidden_states`: 729 positions,
      width 128, seed 0) built to a realistic-redundancy assumption: three scene cuts (scenes
      start at 0, 30%, 50%, 80% of the video); position-wise cosine similarity 0.2 across a cut,
      0.9 between neighbouring frames of a scene, decaying as 0.6 + 0.4 * 0.75^k with distance
      k; the same similarity structure at every prune layer (the merged frames of one layer are
      the input of the next). The frame counts it gives are printed (the ``rule`` line) and
      stored per model and ratio in ``results/flops.json`` (``frames_after_prune``).
      Segments then close on max_window rather than on tau, so each 5-frame segment loses one
      or two frames at each prune layer.

Qwen2.5-VL-7B (``qwen2.5-vl-7b``; vision 32 blocks x 1280, 16 heads, SwiGLU 3420, patch 14,
temporal patch 2, merge 2, 112-px windows, full attention in blocks 7/15/23/31, merger to 3584;
LLM Qwen2.5-7B, 28 x 3584, 28 heads, 4 KV heads, SwiGLU 18944). Stage I's frame is a slice (2
frames); ``--frames`` counts video frames, schedules count slices.
    * this project: per slice; in a windowed block attention is summed over the 112-px windows
      (``QwenVisionConfig.window_sizes``: 4x4 merge units, partial at the edges), in a full block
      over the whole slice; 3-D patch embed, merger ``4w -> 4w -> D`` per LLM token; LLM tokens
      ``t*(h/2)(w/2)`` full, ``video_token_budget(t, r, (h/2)(w/2))`` pruned (no newline).
      Default schedule ``7:22,15:20,23:17`` (prune layers 7/15/23, the LLaVA-OV frame fractions),
      scaled by slices / 32.
    * paper convention: every block as ONE sequence of all slices' patches, no windows.
    * setting: the paper does not state frames or resolution. 64 frames x 644^2 (32 slices x
      46x46 patches, 16,928 LLM tokens) is the nearest square setting to 554.7 (554.996, +0.05%);
      no setting gives 554.7 exactly (``qwen_paper_setting_search``). The paper's 67.7 at 15%
      cannot be reproduced in its own convention at any setting (blocks 0..7 on all 32 slices
      alone are 102.2); it is close to this project's per-slice post-encoder count (64.0), so the
      paper's Qwen rows evidently count the encoder differently. ``results/flops.json`` carries
      both under ``qwen2_5_vl_paper``.

Model configurations (LLM from the Qwen2 ``config.json`` of each size; SigLIP so400m for all):
LLaVA-OneVision 0.5B / 7B / 72B, and LLaVA-Video-7B (Qwen2-7B, the same LLM and encoder as
OV-7B) whose own usage samples 64 frames (the model card's example uses
``max_frames_num = 64``); it is counted with the same 196 tokens + 1 newline per the project's
rule (the checkpoint's own per-row newlines are not modelled).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: F401  (evs_*: re-exported for the FLOPs tables)
    RESULTS,
    evs_rate_for_budget,
    evs_tokens,
    pooled_side,
    synthetic_hidden_states,
)
from earlytom_vllm.config import EarlyTomConfig
from earlytom_vllm.core import (
    merge_frames,
    min_frames_for_budget,
    segment_frames,
    video_token_budget,
)

DEFAULT_JSON = RESULTS / "flops.json"
DEFAULT_PLOT = RESULTS / "flops.png"

DEFAULT_RATIOS = (1.0, 0.25, 0.20, 0.15, 0.10)
DEFAULT_TEXT_TOKENS = 100
REFERENCE_FRAMES = 32  # the frame count the default schedule is stated for
DEFAULT_SCHEDULE = "10:22,21:20,23:17"
LLM_MERGE_LAYER = 18  # paper convention: HoliTom / paper's EarlyTom rows halve tokens here
SIM_WIDTH = 128  # width of the synthetic video used for the Stage I rule schedule
SIM_SEED = 0
TFLOP = 1e12


# ------------------------------------------------------------------------------------------------
# Model configurations
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisionConfig:
    name: str = "SigLIP so400m patch14-384 (26 of 27 layers)"
    width: int = 1152
    layers: int = 26
    heads: int = 16
    mlp: int = 4304
    image: int = 384
    patch: int = 14
    channels: int = 3

    @property
    def grid(self) -> int:
        return self.image // self.patch  # 27

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid  # 729 encoder tokens

    @property
    def pooled_tokens_per_frame(self) -> int:
        return pooled_side(self.grid) ** 2  # 196 after the 2x2 bilinear pooling (as vLLM counts)


@dataclass(frozen=True)
class LLMConfig:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class QwenVisionConfig:
    """Qwen2.5-VL's vision tower (``Qwen2_5_VisionTransformer``) for one video geometry.

    ``image_h`` x ``image_w`` are the frame size after the processor's resize (multiples of 28);
    a *slice* is ``temporal_patch`` frames; every slice is ``grid_h x grid_w`` patches."""

    name: str = "Qwen2.5-VL ViT (32 blocks, windowed)"
    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp: int = 3420  # SwiGLU intermediate
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    window: int = 112  # px: 8x8 patches = 4x4 merge units
    full_attention_blocks: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden: int = 3584  # merger output (the LLM width)
    image_h: int = 644
    image_w: int = 644
    channels: int = 3

    @property
    def grid_h(self) -> int:
        return self.image_h // self.patch

    @property
    def grid_w(self) -> int:
        return self.image_w // self.patch

    @property
    def tokens_per_frame(self) -> int:
        """Patches per slice (what one vision block sees per slice)."""
        return self.grid_h * self.grid_w

    @property
    def pooled_tokens_per_frame(self) -> int:
        """LLM tokens per slice after the 2x2 merger: ``(h/2)(w/2)``."""
        return (self.grid_h // self.merge) * (self.grid_w // self.merge)

    def window_sizes(self) -> list[int]:
        """Patches in each attention window of one slice (vLLM's ``get_window_index``: windows
        of ``window/patch/merge`` merge units a side over the merge grid, the last row/column of
        windows partial when the grid does not divide)."""
        units = self.window // self.patch // self.merge  # 4 merge units a side
        mh, mw = self.grid_h // self.merge, self.grid_w // self.merge
        rows = [min(units, mh - i) for i in range(0, mh, units)]
        cols = [min(units, mw - j) for j in range(0, mw, units)]
        return [rh * cw * self.merge * self.merge for rh in rows for cw in cols]


@dataclass(frozen=True)
class ModelConfig:
    key: str
    label: str
    llm: LLMConfig
    frames: int = REFERENCE_FRAMES
    vision: VisionConfig | QwenVisionConfig = VisionConfig()

    @property
    def family(self) -> str:
        return "qwen2_5_vl" if isinstance(self.vision, QwenVisionConfig) else "llava_onevision"

    @property
    def units(self) -> int:
        """Frames for Stage I: video frames (LLaVA-OV) or temporal slices (Qwen2.5-VL)."""
        if isinstance(self.vision, QwenVisionConfig):
            return self.frames // self.vision.temporal_patch
        return self.frames


SIGLIP = VisionConfig()
QWEN2_05B = LLMConfig("Qwen2-0.5B", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864)
QWEN2_7B = LLMConfig("Qwen2-7B", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944)
QWEN2_72B = LLMConfig("Qwen2-72B", hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=29568)
QWEN25_7B = LLMConfig("Qwen2.5-7B", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944)
QWEN25VL_VISION = QwenVisionConfig()
# Qwen2.5-VL-7B is counted at 64 frames x 644^2 (32 slices x 46x46 patches, 529 LLM tokens per
# slice, 16,928 in all): the setting closest to the paper's 554.7 TFLOPs (see the docstring).
QWEN25VL_FRAMES = 64
QWEN_DEFAULT_SCHEDULE = "7:22,15:20,23:17"  # stated for 32 slices; prune layers (7, 15, 23)
QWEN_PRUNE_LAYERS = (7, 15, 23)

MODELS: dict[str, ModelConfig] = {
    m.key: m
    for m in (
        ModelConfig("llava-ov-7b", "LLaVA-OneVision-7B", QWEN2_7B),
        ModelConfig("llava-ov-0.5b", "LLaVA-OneVision-0.5B", QWEN2_05B),
        ModelConfig("llava-ov-72b", "LLaVA-OneVision-72B", QWEN2_72B),
        ModelConfig("llava-video-7b", "LLaVA-Video-7B", QWEN2_7B, frames=64),
        ModelConfig("qwen2.5-vl-7b", "Qwen2.5-VL-7B", QWEN25_7B, frames=QWEN25VL_FRAMES,
                    vision=QWEN25VL_VISION),
    )
}

CORRECT_METHODS = ("full", "post_encoder", "earlytom", "earlytom_stage1_rule")
PAPER_METHODS = ("full", "post_encoder", "holitom", "earlytom", "earlytom_no_llm_merge")


# ------------------------------------------------------------------------------------------------
# Multiply-add counts
# ------------------------------------------------------------------------------------------------
def paper_layer_macs(n: int, d: int, m: int) -> int:
    """``4 n d^2 + 2 n^2 d + 2 n d m``: q/k/v/o projections, scores and P.V, a 2-matrix MLP.

    Exact for a SigLIP layer over one sequence of n tokens (multi-head attention, fc1/fc2)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def llm_layer_macs(n: int, llm: LLMConfig, *, causal: bool = False) -> int:
    """One Qwen2 decoder layer over n tokens: GQA projections, attention, SwiGLU MLP."""
    q_dim = llm.heads * llm.head_dim
    kv_dim = llm.kv_heads * llm.head_dim
    proj = n * llm.hidden * q_dim + 2 * n * llm.hidden * kv_dim + n * q_dim * llm.hidden
    pairs = n * (n + 1) // 2 if causal else n * n  # (query, key) pairs computed
    attn = 2 * pairs * q_dim  # q.k^T and P.v
    mlp = 3 * n * llm.hidden * llm.intermediate  # gate, up, down
    return proj + attn + mlp


def patch_embed_macs(frames: int, v: VisionConfig) -> int:
    return frames * v.tokens_per_frame * v.channels * v.patch * v.patch * v.width


def projector_macs(frames: int, v: VisionConfig, hidden: int) -> int:
    return frames * v.tokens_per_frame * (v.width * hidden + hidden * hidden)


def qwen_patch_embed_macs(slices: int, v: QwenVisionConfig) -> int:
    """The 3-D conv (2 x 14 x 14 x 3 -> width) over every patch of every slice."""
    kernel = v.channels * v.temporal_patch * v.patch * v.patch
    return slices * v.tokens_per_frame * kernel * v.width


def qwen_block_macs(v: QwenVisionConfig, block: int) -> int:
    """One Qwen2.5-VL vision block over ONE slice: q/k/v/o ``4 n w^2``; attention ``2 s^2 w``
    summed over the attention sequences (the whole slice in a full-attention block, each 112-px
    window otherwise); SwiGLU MLP ``3 n w m``."""
    n = v.tokens_per_frame
    seqs = [n] if block in v.full_attention_blocks else v.window_sizes()
    return 4 * n * v.width ** 2 + 2 * sum(s * s for s in seqs) * v.width + 3 * n * v.width * v.mlp


def qwen_merger_macs(slices: int, v: QwenVisionConfig) -> int:
    """The patch merger: per LLM token, Linear(4w -> 4w), GELU, Linear(4w -> D)."""
    hidden = v.width * v.merge * v.merge
    return slices * v.pooled_tokens_per_frame * (hidden * hidden + hidden * v.out_hidden)


# ------------------------------------------------------------------------------------------------
# Frame schedules
# ------------------------------------------------------------------------------------------------
Schedule = dict[int, int]  # prune layer -> frames left after it


def parse_schedule(text: str) -> Schedule:
    """``"10:22,21:20,23:17"`` -> ``{10: 22, 21: 20, 23: 17}`` (validated loosely here)."""
    out: Schedule = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            layer_s, frames_s = part.split(":")
            layer, frames = int(layer_s), int(frames_s)
        except ValueError:
            raise ValueError(f"schedule entries must be LAYER:FRAMES, got {part!r}") from None
        if layer in out:
            raise ValueError(f"layer {layer} appears twice in the schedule {text!r}")
        out[layer] = frames
    if not out:
        raise ValueError("the schedule names no layer")
    return dict(sorted(out.items()))


def format_schedule(schedule: Schedule) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(schedule.items()))


def scale_schedule(schedule: Schedule, frames: int, reference: int = REFERENCE_FRAMES) -> Schedule:
    """Frame counts stated for ``reference`` frames, scaled to ``frames``."""
    if frames == reference:
        return dict(schedule)
    return {k: max(1, round(v * frames / reference)) for k, v in schedule.items()}


def frames_per_layer(frames: int, schedule: Schedule, num_layers: int,
                     min_frames: int = 1) -> list[int]:
    """Frames entering each encoder layer, then the frames leaving the last (``num_layers + 1``
    entries). After prune layer ``l`` the count is ``clamp(schedule[l], min_frames, previous)``:
    Stage I never adds frames and never goes below ``min_frames``."""
    for layer, kept in schedule.items():
        if not 0 <= layer < num_layers:
            raise ValueError(f"prune layer {layer} is outside 0..{num_layers - 1}")
        if kept < 1:
            raise ValueError(f"frames after layer {layer} must be >= 1, got {kept}")
    counts = []
    current = frames
    for i in range(num_layers):
        counts.append(current)
        if i in schedule:
            current = min(current, max(schedule[i], min_frames))
    counts.append(current)
    return counts


_RULE_CACHE: dict[tuple[int, int, EarlyTomConfig], Schedule] = {}


def stage1_rule_schedule(frames: int, min_frames: int = 1,
                         config: EarlyTomConfig | None = None) -> Schedule:
    """Frames left after each prune layer when the library's Stage I runs on
    :func:`synthetic_hidden_states` (the realistic-redundancy assumption in the module docstring)."""
    cfg = config or EarlyTomConfig()
    if min_frames > 1:
        free = stage1_rule_schedule(frames, 1, cfg)
        if min(free.values()) >= min_frames:  # the floor never binds: same merges
            return free
    key = (frames, min_frames, cfg)
    if key in _RULE_CACHE:
        return dict(_RULE_CACHE[key])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    try:
        hidden = synthetic_hidden_states(frames, SIGLIP.tokens_per_frame, SIM_WIDTH, seed=SIM_SEED)
        out: Schedule = {}
        for layer in cfg.prune_layers:
            segments = segment_frames(hidden, cfg.tau, cfg.max_window, cfg.ema)
            hidden, _ = merge_frames(hidden, segments, min_frames=min_frames,
                                     keep_last_middle=cfg.keep_last_middle)
            out[layer] = hidden.shape[0]
    finally:
        torch.set_num_threads(threads)
    _RULE_CACHE[key] = out
    return dict(out)


# ------------------------------------------------------------------------------------------------
# Accounting
# ------------------------------------------------------------------------------------------------
def ratio_key(r: float) -> str:
    return f"{r:.2f}"


def paper_visual_tokens(frames: int, r: float, tokens_per_frame: int) -> int:
    """The paper's LLM token count: ``floor(r * T * 196)`` (no newline); float-guarded."""
    x = r * frames * tokens_per_frame
    return math.floor(x + 1e-9)


def _entry(*, visual: int, text: int, frames: list[int], schedule: Schedule | None,
           parts: dict[str, int], per_mac: int) -> dict[str, Any]:
    vision = parts.get("patch_embed", 0) + parts["encoder"] + parts.get("projector", 0)
    total = vision + parts["llm"]
    tf = {k: round(v * per_mac / TFLOP, 6) for k, v in parts.items()}
    tf["vision_total"] = round(vision * per_mac / TFLOP, 6)
    tf["total"] = round(total * per_mac / TFLOP, 6)
    return {
        "llm_visual_tokens": visual,
        "llm_text_tokens": text,
        "frames_after_prune": None if schedule is None else
        {str(k): frames[k + 1] for k in sorted(schedule)},
        "frames_out": frames[-1],
        "tflops": tf,
    }


def count_correct(model: ModelConfig, method: str, r: float, *, frames: int, text_tokens: int,
                  schedule: Schedule, causal: bool = False, per_mac: int = 1) -> dict[str, Any]:
    """This project's convention (see the module docstring)."""
    if model.family == "qwen2_5_vl":
        return _count_correct_qwen(model, method, r, frames=frames, text_tokens=text_tokens,
                                   schedule=schedule, causal=causal, per_mac=per_mac)
    v, llm = model.vision, model.llm
    compresses = r < 1.0
    per_frame = v.pooled_tokens_per_frame
    budget = video_token_budget(frames, r, per_frame)
    min_frames = min_frames_for_budget(budget, per_frame)
    used_schedule: Schedule | None = None
    if method in ("full", "post_encoder") or not compresses:
        counts = [frames] * (v.layers + 1)
    elif method == "earlytom":
        used_schedule = schedule
    elif method == "earlytom_stage1_rule":
        used_schedule = stage1_rule_schedule(frames, min_frames)
    else:
        raise ValueError(f"unknown method {method!r}")
    if used_schedule is not None:
        counts = frames_per_layer(frames, used_schedule, v.layers, min_frames)
    full_tokens = method == "full" or not compresses
    visual = frames * per_frame + 1 if full_tokens else budget + 1
    n = visual + text_tokens
    per_frame_layer = paper_layer_macs(v.tokens_per_frame, v.width, v.mlp)
    parts = {
        "patch_embed": patch_embed_macs(frames, v),
        "encoder": sum(f * per_frame_layer for f in counts[:-1]),
        "projector": projector_macs(counts[-1], v, llm.hidden),
        "llm": llm.layers * llm_layer_macs(n, llm, causal=causal),
    }
    return _entry(visual=visual, text=text_tokens, frames=counts, schedule=used_schedule,
                  parts=parts, per_mac=per_mac)


def count_paper(model: ModelConfig, method: str, r: float, *, frames: int, schedule: Schedule,
                per_mac: int = 1) -> dict[str, Any]:
    """The paper's convention (see the module docstring)."""
    if model.family == "qwen2_5_vl":
        return _count_paper_qwen(model, method, r, frames=frames, schedule=schedule,
                                 per_mac=per_mac)
    v, llm = model.vision, model.llm
    compresses = r < 1.0
    used_schedule: Schedule | None = None
    llm_merge = False
    if method in ("full", "post_encoder") or not compresses:
        counts = [frames] * (v.layers + 1)
    elif method == "holitom":
        counts = [frames] * (v.layers + 1)
        llm_merge = True
    elif method in ("earlytom", "earlytom_no_llm_merge"):
        used_schedule = schedule
        budget = video_token_budget(frames, r, v.pooled_tokens_per_frame)
        counts = frames_per_layer(frames, schedule, v.layers,
                                  min_frames_for_budget(budget, v.pooled_tokens_per_frame))
        llm_merge = method == "earlytom"
    else:
        raise ValueError(f"unknown method {method!r}")
    visual = frames * v.pooled_tokens_per_frame if method == "full" or not compresses else \
        paper_visual_tokens(frames, r, v.pooled_tokens_per_frame)
    encoder = sum(paper_layer_macs(f * v.tokens_per_frame, v.width, v.mlp) for f in counts[:-1])
    if llm_merge and llm.layers > LLM_MERGE_LAYER:
        llm_macs = (LLM_MERGE_LAYER * paper_layer_macs(visual, llm.hidden, llm.intermediate)
                    + (llm.layers - LLM_MERGE_LAYER)
                    * paper_layer_macs(visual // 2, llm.hidden, llm.intermediate))
    else:
        llm_macs = llm.layers * paper_layer_macs(visual, llm.hidden, llm.intermediate)
    return _entry(visual=visual, text=0, frames=counts, schedule=used_schedule,
                  parts={"encoder": encoder, "llm": llm_macs}, per_mac=per_mac)


def _qwen_slices(model: ModelConfig, frames: int) -> int:
    v = model.vision
    assert isinstance(v, QwenVisionConfig)
    if frames % v.temporal_patch:
        raise ValueError(f"Qwen2.5-VL needs an even frame count (temporal patch "
                         f"{v.temporal_patch}), got {frames}")
    return frames // v.temporal_patch


def _count_correct_qwen(model: ModelConfig, method: str, r: float, *, frames: int,
                        text_tokens: int, schedule: Schedule, causal: bool,
                        per_mac: int) -> dict[str, Any]:
    """Qwen2.5-VL, this project's convention: per slice, windowed attention, SwiGLU, GQA."""
    v, llm = model.vision, model.llm
    assert isinstance(v, QwenVisionConfig)
    t = _qwen_slices(model, frames)
    compresses = r < 1.0
    per_slice = v.pooled_tokens_per_frame
    budget = video_token_budget(t, r, per_slice)
    min_frames = min_frames_for_budget(budget, per_slice)
    used_schedule: Schedule | None = None
    if method in ("full", "post_encoder") or not compresses:
        counts = [t] * (v.layers + 1)
    elif method == "earlytom":
        used_schedule = schedule
    elif method == "earlytom_stage1_rule":
        used_schedule = stage1_rule_schedule(t, min_frames, EarlyTomConfig(
            prune_layers=QWEN_PRUNE_LAYERS))
    else:
        raise ValueError(f"unknown method {method!r}")
    if used_schedule is not None:
        counts = frames_per_layer(t, used_schedule, v.layers, min_frames)
    visual = t * per_slice if method == "full" or not compresses else budget  # no newline
    parts = {
        "patch_embed": qwen_patch_embed_macs(t, v),
        "encoder": sum(counts[i] * qwen_block_macs(v, i) for i in range(v.layers)),
        "projector": qwen_merger_macs(counts[-1], v),
        "llm": llm.layers * llm_layer_macs(visual + text_tokens, llm, causal=causal),
    }
    return _entry(visual=visual, text=text_tokens, frames=counts, schedule=used_schedule,
                  parts=parts, per_mac=per_mac)


def _count_paper_qwen(model: ModelConfig, method: str, r: float, *, frames: int,
                      schedule: Schedule, per_mac: int) -> dict[str, Any]:
    """Qwen2.5-VL, the paper's convention: every vision block as ONE sequence of all slices'
    patches (no windows), ``4nd^2 + 2n^2 d + 2ndm`` everywhere, LLM visual tokens only."""
    v, llm = model.vision, model.llm
    assert isinstance(v, QwenVisionConfig)
    t = _qwen_slices(model, frames)
    compresses = r < 1.0
    used_schedule: Schedule | None = None
    llm_merge = False
    if method in ("full", "post_encoder") or not compresses:
        counts = [t] * (v.layers + 1)
    elif method == "holitom":
        counts = [t] * (v.layers + 1)
        llm_merge = True
    elif method in ("earlytom", "earlytom_no_llm_merge"):
        used_schedule = schedule
        budget = video_token_budget(t, r, v.pooled_tokens_per_frame)
        counts = frames_per_layer(t, schedule, v.layers,
                                  min_frames_for_budget(budget, v.pooled_tokens_per_frame))
        llm_merge = method == "earlytom"
    else:
        raise ValueError(f"unknown method {method!r}")
    visual = t * v.pooled_tokens_per_frame if method == "full" or not compresses else \
        paper_visual_tokens(t, r, v.pooled_tokens_per_frame)
    encoder = sum(paper_layer_macs(f * v.tokens_per_frame, v.width, v.mlp) for f in counts[:-1])
    if llm_merge and llm.layers > LLM_MERGE_LAYER:
        llm_macs = (LLM_MERGE_LAYER * paper_layer_macs(visual, llm.hidden, llm.intermediate)
                    + (llm.layers - LLM_MERGE_LAYER)
                    * paper_layer_macs(visual // 2, llm.hidden, llm.intermediate))
    else:
        llm_macs = llm.layers * paper_layer_macs(visual, llm.hidden, llm.intermediate)
    return _entry(visual=visual, text=0, frames=counts, schedule=used_schedule,
                  parts={"encoder": encoder, "llm": llm_macs}, per_mac=per_mac)


QWEN_PAPER_FULL = 554.7  # Qwen2.5-VL-7B full tokens, paper's count (docs/method.md section 7)
QWEN_PAPER_EARLYTOM_15 = 67.7


def qwen_paper_setting_search(target: float = QWEN_PAPER_FULL, *, max_frames: int = 256,
                              max_grid: int = 80, top: int = 5) -> list[dict[str, Any]]:
    """Frames x resolution (even frame counts, square frames, multiples of 28 px) ranked by how
    close the paper-convention full-token count comes to ``target`` TFLOPs."""
    v, llm = QWEN25VL_VISION, QWEN25_7B
    rows = []
    for frames in range(2, max_frames + 1, 2):
        t = frames // 2
        for g in range(2, max_grid + 1, 2):
            n, tok = t * g * g, t * (g // 2) ** 2
            total = (v.layers * paper_layer_macs(n, v.width, v.mlp)
                     + llm.layers * paper_layer_macs(tok, llm.hidden, llm.intermediate)) / TFLOP
            rows.append({"frames": frames, "resolution": g * v.patch, "llm_tokens": tok,
                         "tflops": round(total, 3), "off": round(total - target, 3)})
    rows.sort(key=lambda x: abs(x["off"]))
    return rows[:top]


def qwen_paper_figures(models: dict[str, Any]) -> dict[str, Any]:
    """The paper's two Qwen2.5-VL-7B figures next to what both conventions give at the chosen
    setting, and why the 15% row cannot be reproduced under the paper's own layer formula."""
    m = models["qwen2.5-vl-7b"]
    v = QWEN25VL_VISION
    t = m["frames"] // v.temporal_patch
    full_p = (m["paper"]["full"]["1.00"]["tflops"]["total"] if "1.00" in m["paper"]["full"]
              else None)
    # Blocks 0..7 run on every slice before the first prune layer can merge anything.
    floor_first = (QWEN_PRUNE_LAYERS[0] + 1) * paper_layer_macs(
        t * v.tokens_per_frame, v.width, v.mlp) / TFLOP
    return {
        "setting": {"frames": m["frames"], "resolution": f"{v.image_h}x{v.image_w}",
                    "slices": t, "patches_per_slice": v.tokens_per_frame,
                    "llm_tokens_per_slice": v.pooled_tokens_per_frame,
                    "llm_tokens": t * v.pooled_tokens_per_frame},
        "full_published": QWEN_PAPER_FULL,
        "full_paper_convention": full_p,
        "nearest_settings": qwen_paper_setting_search(),
        "earlytom_15_published": QWEN_PAPER_EARLYTOM_15,
        "earlytom_15": {conv: {meth: m[conv][meth]["0.15"]["tflops"]["total"]
                               for meth in m[conv] if "0.15" in m[conv][meth]}
                        for conv in ("paper", "correct")},
        "paper_convention_floor_before_first_prune": round(floor_first, 3),
        "note": "No frames x resolution gives exactly 554.7 under the paper's convention "
                "(vision as one sequence of all slices' patches); the nearest, 64 frames at "
                "644x644 (32 slices x 46x46 patches, 16,928 LLM tokens), gives "
                f"{full_p}. 67.7 at 15% is not reachable under that convention at any such "
                "setting: blocks 0..7 alone (all slices, before the first full-attention prune "
                f"layer) cost {floor_first:.1f}. The paper's Qwen2.5-VL rows therefore count the "
                "encoder differently from its LLaVA-OV rows (not published); this project's "
                "per-slice, windowed count is the one to quote.",
    }


# Published figures (LLaVA-OV-7B, 32 frames; docs/method.md section 6) and how each is reproduced.
PAPER_FIGURES: tuple[tuple[str, str, str, float, str, float], ...] = (
    # (name, convention, method, ratio, part, published TFLOPs)
    ("vision encoder, one sequence (paper)", "paper", "full", 1.0, "encoder", 41.8),
    ("vision encoder, per frame (docs/method.md)", "correct", "full", 1.0, "encoder", 10.25),
    ("full tokens", "paper", "full", 1.0, "total", 82.6),
    ("VisionZip/FastVID 25% (post-encoder)", "paper", "post_encoder", 0.25, "total", 50.5),
    ("VisionZip/FastVID 10% (post-encoder)", "paper", "post_encoder", 0.10, "total", 45.2),
    ("HoliTom 10%", "paper", "holitom", 0.10, "total", 44.6),
    ("EarlyTom 25% (default schedule)", "paper", "earlytom", 0.25, "total", 36.5),
    ("EarlyTom 10% (default schedule)", "paper", "earlytom", 0.10, "total", 32.2),
)


def build_results(*, ratios: Sequence[float] = DEFAULT_RATIOS,
                  text_tokens: int = DEFAULT_TEXT_TOKENS, frames: int | None = None,
                  schedule: str | None = None, causal: bool = False,
                  per_mac: int = 1) -> dict[str, Any]:
    """Everything the script prints and writes, as a JSON-ready dict."""
    if per_mac not in (1, 2):
        raise ValueError(f"flops_per_mac must be 1 or 2, got {per_mac}")
    if text_tokens < 0:
        raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
    ratios = [float(r) for r in ratios]
    for r in ratios:
        video_token_budget(1, r, 1)  # validates the ratio (0 < r <= 1)
    base_schedule = parse_schedule(schedule or DEFAULT_SCHEDULE)
    cfg = EarlyTomConfig()
    models: dict[str, Any] = {}
    for key, model in MODELS.items():
        t = frames or model.frames
        if model.family == "qwen2_5_vl":  # schedules count slices; its own default layers
            qwen_base = base_schedule if schedule is not None else \
                parse_schedule(QWEN_DEFAULT_SCHEDULE)
            sched = qwen_base if schedule is not None else \
                scale_schedule(qwen_base, t // model.vision.temporal_patch)
        else:
            sched = base_schedule if schedule is not None else scale_schedule(base_schedule, t)
        correct = {
            m: {ratio_key(r): count_correct(model, m, r, frames=t, text_tokens=text_tokens,
                                            schedule=sched, causal=causal, per_mac=per_mac)
                for r in ratios}
            for m in CORRECT_METHODS
        }
        paper = {
            m: {ratio_key(r): count_paper(model, m, r, frames=t, schedule=sched, per_mac=per_mac)
                for r in ratios}
            for m in PAPER_METHODS
        }
        models[key] = {
            "label": model.label,
            "family": model.family,
            "frames": t,
            "llm": {"name": model.llm.name, "hidden": model.llm.hidden,
                    "layers": model.llm.layers, "heads": model.llm.heads,
                    "kv_heads": model.llm.kv_heads, "head_dim": model.llm.head_dim,
                    "intermediate": model.llm.intermediate},
            "schedule": format_schedule(sched),
            "correct": correct,
            "paper": paper,
        }
    checks = []
    ref = MODELS["llava-ov-7b"]
    default_sched = parse_schedule(DEFAULT_SCHEDULE)
    for name, conv, method, r, part, target in PAPER_FIGURES:
        if conv == "paper":
            entry = count_paper(ref, method, r, frames=REFERENCE_FRAMES, schedule=default_sched)
        else:
            entry = count_correct(ref, method, r, frames=REFERENCE_FRAMES, text_tokens=0,
                                  schedule=default_sched)
        value = entry["tflops"][part]
        checks.append({"name": name, "convention": conv, "method": method,
                       "ratio": ratio_key(r), "part": part, "computed": round(value, 3),
                       "published": target, "ok": abs(value - target) <= 0.05})
    return {
        "unit": "TFLOPs; one multiply-add counted as one FLOP (the paper's unit)"
                if per_mac == 1 else "TFLOPs; one multiply-add counted as two FLOPs",
        "flops_per_mac": per_mac,
        "settings": {
            "ratios": [ratio_key(r) for r in ratios],
            "text_tokens": text_tokens,
            "frames_override": frames,
            "causal_llm_attention": causal,
            "schedule": format_schedule(base_schedule),
            "schedule_reference_frames": None if schedule is not None else REFERENCE_FRAMES,
            "stage1_rule": {"prune_layers": list(cfg.prune_layers), "tau": cfg.tau,
                            "max_window": cfg.max_window, "ema": cfg.ema,
                            "synthetic_video": {"tokens": SIGLIP.tokens_per_frame,
                                                "width": SIM_WIDTH, "seed": SIM_SEED,
                                                "scene_starts": [0.0, 0.3, 0.5, 0.8],
                                                "sim_across_cut": 0.2,
                                                "sim_neighbours": 0.9}},
            "paper_llm_merge": {"layer": LLM_MERGE_LAYER, "keep": "floor(n / 2)"},
            "vision": {"name": SIGLIP.name, "width": SIGLIP.width, "layers": SIGLIP.layers,
                       "heads": SIGLIP.heads, "mlp": SIGLIP.mlp,
                       "tokens_per_frame": SIGLIP.tokens_per_frame, "patch": SIGLIP.patch},
        },
        "methods": {
            "correct": {
                "full": "all T*196 + 1 visual tokens, full encoder",
                "post_encoder": "full encoder; LLM sees video_token_budget(T, r) + 1 tokens "
                                "(VisionZip, FastVID, EVS, the post_encoder baseline)",
                "earlytom": "in-encoder frame merging with --schedule; same LLM tokens",
                "earlytom_stage1_rule": "as earlytom, frames from the library's Stage I on the "
                                        "synthetic realistic-redundancy video",
            },
            "paper": {
                "full": "T*196 tokens, encoder as one sequence",
                "post_encoder": "floor(r*T*196) LLM tokens (VisionZip, FastVID)",
                "holitom": "post_encoder, tokens halved from LLM layer 18",
                "earlytom": "--schedule in the encoder, tokens halved from LLM layer 18 "
                            "(as the paper's rows)",
                "earlytom_no_llm_merge": "--schedule in the encoder, no LLM merge",
            },
        },
        "models": models,
        "paper_checks": checks,
        "qwen2_5_vl_paper": qwen_paper_figures(models),
    }


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def format_table(results: dict[str, Any], key: str, *, paper_only: bool = False) -> str:
    m = results["models"][key]
    c, p = m["correct"], m["paper"]
    ratios = results["settings"]["ratios"]
    text = results["settings"]["text_tokens"]
    causal = " causal" if results["settings"]["causal_llm_attention"] else ""
    lines = [
        f"{m['label']} ({m['llm']['name']}), {m['frames']} frames, EarlyTom schedule "
        f"{m['schedule']}; prefill {results['unit']}",
    ]
    ours_hdr = (f"{'LLM vis':>7} {'full':>7} {'post':>7} {'EarlyTom':>8} {'rule':>7}"
                f" {'enc(ET)':>7}")
    paper_hdr = (f"{'LLM vis':>7} {'full':>7} {'post':>7} {'HoliTom':>7} {'EarlyTom*':>9}"
                 f" {'enc(ET)':>7}")
    if paper_only:
        lines.append("  paper convention (one-sequence encoder, MHA, 2-matrix MLP, no text)")
        lines.append(f"{'ratio':>5} | {paper_hdr}")
    else:
        lines.append(f"{'':5} | {'this project (per frame, GQA, SwiGLU, ' + str(text) + ' text' + causal + ')':<51}"
                     f" || paper convention (one sequence, MHA, 2-matrix MLP)")
        lines.append(f"{'ratio':>5} | {ours_hdr} || {paper_hdr}")
    lines.append("-" * len(lines[-1]))
    for r in ratios:
        ours = (f"{c['post_encoder'][r]['llm_visual_tokens']:>7} "
                f"{c['full'][r]['tflops']['total']:>7.2f} "
                f"{c['post_encoder'][r]['tflops']['total']:>7.2f} "
                f"{c['earlytom'][r]['tflops']['total']:>8.2f} "
                f"{c['earlytom_stage1_rule'][r]['tflops']['total']:>7.2f} "
                f"{c['earlytom'][r]['tflops']['encoder']:>7.2f}")
        pap = (f"{p['post_encoder'][r]['llm_visual_tokens']:>7} "
               f"{p['full'][r]['tflops']['total']:>7.2f} "
               f"{p['post_encoder'][r]['tflops']['total']:>7.2f} "
               f"{p['holitom'][r]['tflops']['total']:>7.2f} "
               f"{p['earlytom'][r]['tflops']['total']:>9.2f} "
               f"{p['earlytom'][r]['tflops']['encoder']:>7.2f}")
        lines.append(f"{r:>5} | {pap}" if paper_only else f"{r:>5} | {ours} || {pap}")
    full_c = c["full"][ratios[0]]["tflops"]
    full_p = p["full"][ratios[0]]["tflops"]
    rule = c["earlytom_stage1_rule"]
    rule_frames = "; ".join(
        f"{r}: {','.join(str(v) for v in rule[r]['frames_after_prune'].values())}"
        for r in ratios if rule[r]["frames_after_prune"])
    lines.append(
        f"  full vision: per frame {full_c['encoder']:.2f} (+patch {full_c['patch_embed']:.3f}"
        f", projector {full_c['projector']:.2f}) vs one sequence {full_p['encoder']:.2f}; "
        f"full LLM {full_c['llm']:.2f} vs {full_p['llm']:.2f}")
    lines.append(f"  'rule' = Stage I rule schedule, frames after each prune layer: {rule_frames}")
    lines.append("  EarlyTom* = paper's rows: in-encoder schedule + LLM merge at layer 18 "
                 "(not servable under vLLM); enc(ET) = EarlyTom encoder alone")
    return "\n".join(lines)


def format_checks(results: dict[str, Any]) -> str:
    lines = ["Published figures (LLaVA-OV-7B, 32 frames):"]
    for ch in results["paper_checks"]:
        mark = "ok " if ch["ok"] else "OFF"
        lines.append(f"  [{mark}] {ch['name']:<40} computed {ch['computed']:>7.3f}   "
                     f"published {ch['published']}")
    return "\n".join(lines)


def format_qwen_paper(results: dict[str, Any]) -> str:
    q = results["qwen2_5_vl_paper"]
    st = q["setting"]
    lines = [f"Published Qwen2.5-VL-7B figures (paper convention; setting {st['frames']} frames x "
             f"{st['resolution']} = {st['slices']} slices x {st['llm_tokens_per_slice']} tokens):",
             f"  full tokens: computed {q['full_paper_convention']}   published "
             f"{q['full_published']}",
             f"  EarlyTom 15%: paper convention {q['earlytom_15'].get('paper', {})}",
             f"                this project     {q['earlytom_15'].get('correct', {})}",
             f"                published {q['earlytom_15_published']}; paper-convention floor "
             f"(blocks 0..7 on all slices) {q['paper_convention_floor_before_first_prune']}",
             "  nearest settings to 554.7: " + "; ".join(
                 f"{x['frames']}f x {x['resolution']}^2 {x['tflops']}"
                 for x in q["nearest_settings"])]
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: Path, key: str = "llava-ov-7b") -> None:
    """One figure per model key: ``path`` for LLaVA-OV-7B, ``<stem>_qwen2_5_vl.png`` for
    Qwen2.5-VL-7B (see :func:`write_plots`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = results["models"][key]
    ratios = results["settings"]["ratios"]
    panels = (
        ("this project: per frame (slice), windows, GQA, SwiGLU, text", m["correct"],
         (("full", "full"), ("post_encoder", "post-encoder"), ("earlytom", "EarlyTom"),
          ("earlytom_stage1_rule", "EarlyTom (Stage I rule)"))),
        ("paper convention", m["paper"],
         (("full", "full"), ("post_encoder", "VisionZip/FastVID"), ("holitom", "HoliTom"),
          ("earlytom", "EarlyTom + LLM merge"))),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colors = {"full": "#7f7f7f", "post_encoder": "#1f77b4", "holitom": "#9467bd",
              "earlytom": "#d62728", "earlytom_stage1_rule": "#ff7f0e"}
    width = 0.2
    top = max(e["tflops"]["total"] for _, data, _ in panels for d in data.values()
              for e in d.values())
    for ax, (title, data, methods) in zip(axes, panels, strict=True):
        for j, (meth, label) in enumerate(methods):
            xs = [i + (j - 1.5) * width for i in range(len(ratios))]
            vision = [data[meth][r]["tflops"]["vision_total"] for r in ratios]
            llm = [data[meth][r]["tflops"]["llm"] for r in ratios]
            ax.bar(xs, vision, width, color=colors[meth], alpha=0.4, edgecolor=colors[meth])
            ax.bar(xs, llm, width, bottom=vision, color=colors[meth], label=label)
        ax.set_ylim(0, top * 1.3)  # room for the legend above the bars
        ax.set_xticks(range(len(ratios)), [f"{float(r):.0%}" for r in ratios])
        ax.set_xlabel("retain ratio r")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, ncol=2, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"prefill {results['unit'].split(';')[0]} (light: vision, dark: LLM)")
    fig.suptitle(f"{m['label']}, {m['frames']} frames: prefill FLOPs "
                 f"(1 multiply-add = {results['flops_per_mac']} FLOP)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def _parse_ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Prefill FLOPs of LLaVA-OneVision (full, post-encoder pruning, EarlyTom), "
                    "this project's convention and the paper's side by side.")
    ap.add_argument("--ratios", type=_parse_ratios, default=list(DEFAULT_RATIOS),
                    help="comma-separated retain ratios (default 1.0,0.25,0.20,0.15,0.10)")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per video for every model (default: 32; LLaVA-Video-7B 64)")
    ap.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS,
                    help="prompt text tokens in this project's convention (default 100)")
    ap.add_argument("--schedule", default=None,
                    help=f"EarlyTom LAYER:FRAMES after each prune layer (default {DEFAULT_SCHEDULE}"
                         ", stated for 32 frames and scaled to other frame counts)")
    ap.add_argument("--causal", action="store_true",
                    help="count causal LLM attention as n(n+1)/2 pairs, not n^2")
    ap.add_argument("--flops-per-mac", type=int, choices=(1, 2), default=1,
                    help="1 (default, the paper's unit) or 2 (hardware FLOPs)")
    ap.add_argument("--paper-convention", action="store_true",
                    help="print only the paper's convention")
    ap.add_argument("--model", choices=[*MODELS, "all"], default="all",
                    help="which model's table to print (the JSON has all)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG output path")
    ap.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = ap.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        ap.error("--frames must be >= 1")
    try:
        results = build_results(ratios=args.ratios, text_tokens=args.text_tokens,
                                frames=args.frames, schedule=args.schedule, causal=args.causal,
                                per_mac=args.flops_per_mac)
    except ValueError as exc:
        ap.error(str(exc))
    keys = list(MODELS) if args.model == "all" else [args.model]
    print("\n\n".join(format_table(results, k, paper_only=args.paper_convention) for k in keys))
    print()
    print(format_checks(results))
    if "1.00" in results["settings"]["ratios"] and "0.15" in results["settings"]["ratios"]:
        print()
        print(format_qwen_paper(results))
    if not args.no_write:
        write_json(results, args.json)
        write_plot(results, args.plot)
        qwen_plot = args.plot.with_name(args.plot.stem + "_qwen2_5_vl" + args.plot.suffix)
        write_plot(results, qwen_plot, key="qwen2.5-vl-7b")
        print(f"\nwrote {args.json}, {args.plot} and {qwen_plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
