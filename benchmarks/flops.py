"""Prefill FLOPs of LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL video requests, full and compressed: exact arithmetic, no model.

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
      EarlyTom) = ``video_token_budget(T, r, 196) + 1`` from ``earlytom_vllm.core`` (the one
      budget function the server uses; the +1 is the family's extra row, the ``image_newline``).
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
      that count for LLM layers 0..17 and ``floor(n / 2)`` from layer 18 on: the released code's
      optional merge inside the LLM at layer 18, keeping half (the paper's rows include it; this
      project does not offer it, docs/method.md section 5). Layer 18 is used literally for every
      model (it is the released code's value, stated for the 28-layer 7B), so the 0.5B and 72B
      HoliTom / EarlyTom* rows are indicative.

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
frame holds more than 196 tokens, i.e. ``T' >= min_frames_for_budget(budget, 196)``, and at
r = 1 nothing is compressed):
    * ``--schedule`` (default ``10:22,21:20,23:17`` for LLaVA-OneVision): the family's serving
      default prune layers (:mod:`earlytom_vllm.families`) with the frame counts implied by the
      paper's own EarlyTom rows (:data:`benchmarks.harness.schedules.REFERENCE_FRAMES_AFTER`): under its convention this schedule gives 36.5 (25%) and 32.2 (10%), the published
      figures (not uniquely: e.g. 10:23,21:17,23:13 also does). For T != 32 frames and no
      ``--schedule``, the counts are scaled by T / 32.
    * the Stage I rule (``earlytom_stage1_rule``): the library's own ``segment_frames`` and
      ``merge_frames`` with the family's serving defaults (tau 0.5, max_window 6, ema 0.9) run on
      a synthetic video (:func:`benchmarks.harness.synthetic_hidden_states`: 729 positions,
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
      (:meth:`benchmarks.harness.flops_models.QwenVisionConfig.window_sizes`: 4x4 merge units,
      partial at the edges), in a full block
      over the whole slice; 3-D patch embed, merger ``4w -> 4w -> D`` per LLM token (EarlyTom:
      per kept token only, ``VisionTower.project_rows``; after-encoder pruning: every token); LLM tokens
      ``t*(h/2)(w/2)`` full, ``video_token_budget(t, r, (h/2)(w/2))`` pruned (no newline).
      Default schedule ``7:22,15:20,23:17`` (prune layers 7/15/23, the LLaVA-OV frame fractions),
      scaled by slices / 32.
    * paper convention: every block as ONE sequence of all slices' patches, no windows.
    * setting: the paper does not state frames or resolution. 64 frames x 644^2 (32 slices x
      46x46 patches, 16,928 LLM tokens) is the nearest square setting to 554.7 (554.996, +0.05%);
      no setting gives 554.7 exactly (``flops_models.qwen_paper_setting_search``). The paper's 67.7 at 15%
      cannot be reproduced in its own convention at any setting (blocks 0..7 on all 32 slices
      alone are 102.2); it is close to this project's per-slice post-encoder count (64.0), so the
      paper's Qwen rows evidently count the encoder differently. ``results/flops.json`` carries
      both under ``qwen2_5_vl_paper``.

Qwen3-VL-8B (``qwen3-vl-8b``; vision 27 blocks x 1152, 16 heads, GELU MLP 4304, patch 16,
temporal patch 2, merge 2, every block full attention within a slice, deepstack mergers after
blocks 8/16/24 besides the main one, all to 4096; LLM Qwen3-8B, 36 x 4096, 32 heads, 8 KV heads,
SwiGLU 12288), 32 frames x 448^2 (16 slices x 28x28 patches, 196 LLM tokens a slice): the vision
tower is 19.8% of the full-token prefill in this project's convention; prune layers 10/22/24 (the
family's default for 27 blocks).

Model configurations (:mod:`benchmarks.harness.flops_models`: each model is its vision tower,
whose family gives what a frame is, its tokens, extra rows and default prune layers, and its LLM;
LLM from the Qwen2 ``config.json`` of each size; SigLIP so400m for all LLaVA models):
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
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RESULTS
from benchmarks.harness.flops_models import (
    MODELS,
    REFERENCE_FRAMES,
    TFLOP,
    ModelConfig,
    llm_layer_macs,
    paper_layer_macs,
    qwen_paper_figures,
)
from benchmarks.harness.plots import plot_flops
from benchmarks.harness.schedules import (
    SIM_SEED,
    SIM_TOKENS,
    SIM_WIDTH,
    Schedule,
    default_schedule,
    format_schedule,
    frames_per_layer,
    parse_schedule,
    scale_schedule,
    stage1_rule_schedule,
)
from benchmarks.harness.tables import format_flops_checks, format_flops_table, format_qwen_paper
from earlytom_vllm.core import min_frames_for_budget, video_token_budget

DEFAULT_JSON = RESULTS / "flops.json"
DEFAULT_PLOT = RESULTS / "flops.png"

DEFAULT_RATIOS = (1.0, 0.25, 0.20, 0.15, 0.10)
DEFAULT_TEXT_TOKENS = 100
REFERENCE_MODEL = "llava-ov-7b"  # the paper's published figures are this model's
LLM_MERGE_LAYER = 18  # paper convention: HoliTom / paper's EarlyTom rows halve tokens here

CORRECT_METHODS = ("full", "post_encoder", "earlytom", "earlytom_stage1_rule")
PAPER_METHODS = ("full", "post_encoder", "holitom", "earlytom", "earlytom_no_llm_merge")


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


def _frame_counts(v: Any, method: str, r: float, t: int, schedule: Schedule,
                  rule: bool) -> tuple[list[int], Schedule | None]:
    """Frames entering each encoder layer (then leaving the last) of a ``t``-frame video, and
    the schedule used (None: nothing merges). ``rule``: ``earlytom_stage1_rule`` (the library's
    Stage I on the synthetic video) instead of ``schedule``."""
    per_unit = v.pooled_tokens_per_frame
    if method in ("full", "post_encoder", "holitom") or r >= 1.0:
        return [t] * (v.layers + 1), None
    min_frames = min_frames_for_budget(video_token_budget(t, r, per_unit), per_unit)
    used = stage1_rule_schedule(t, min_frames, v.family.defaults) if rule else schedule
    return frames_per_layer(t, used, v.layers, min_frames), used


def count_correct(model: ModelConfig, method: str, r: float, *, frames: int, text_tokens: int,
                  schedule: Schedule, causal: bool = False, per_mac: int = 1) -> dict[str, Any]:
    """This project's convention (see the module docstring): every encoder layer per encoder
    frame with its own attention pattern, GQA, SwiGLU, text tokens, the family's extra rows."""
    if method not in CORRECT_METHODS:
        raise ValueError(f"unknown method {method!r}")
    v, llm = model.vision, model.llm
    t = v.units(frames)
    counts, used = _frame_counts(v, method, r, t, schedule, method == "earlytom_stage1_rule")
    per_unit = v.pooled_tokens_per_frame
    kept = t * per_unit if method == "full" or r >= 1.0 else video_token_budget(t, r, per_unit)
    visual = kept + v.family.extra_rows
    parts = {
        "patch_embed": v.patch_embed_macs(t),
        "encoder": sum(counts[i] * v.layer_macs(i) for i in range(v.layers)),
        # EarlyTom chooses its tokens before a per-token projector (the Qwen mergers) and runs
        # it on those alone; pruning after the encoder projects every token of every frame
        "projector": (kept * v.projector_token_macs()
                      if v.projects_per_token and method.startswith("earlytom") and r < 1.0
                      else v.projector_macs(counts[-1], llm.hidden)),
        "llm": llm.layers * llm_layer_macs(visual + text_tokens, llm, causal=causal),
    }
    return _entry(visual=visual, text=text_tokens, frames=counts, schedule=used, parts=parts,
                  per_mac=per_mac)


def count_paper(model: ModelConfig, method: str, r: float, *, frames: int, schedule: Schedule,
                per_mac: int = 1) -> dict[str, Any]:
    """The paper's convention (see the module docstring): every layer as ONE sequence of all
    encoder frames, ``4nd^2 + 2n^2 d + 2ndm`` everywhere, LLM visual tokens only."""
    if method not in PAPER_METHODS:
        raise ValueError(f"unknown method {method!r}")
    v, llm = model.vision, model.llm
    t = v.units(frames)
    counts, used = _frame_counts(v, method, r, t, schedule, False)
    compresses = r < 1.0
    llm_merge = compresses and method in ("holitom", "earlytom")
    per_unit = v.pooled_tokens_per_frame
    visual = t * per_unit if method == "full" or not compresses else \
        paper_visual_tokens(t, r, per_unit)
    encoder = sum(paper_layer_macs(f * v.tokens_per_frame, v.width, v.mlp) for f in counts[:-1])
    if llm_merge and llm.layers > LLM_MERGE_LAYER:
        llm_macs = (LLM_MERGE_LAYER * paper_layer_macs(visual, llm.hidden, llm.intermediate)
                    + (llm.layers - LLM_MERGE_LAYER)
                    * paper_layer_macs(visual // 2, llm.hidden, llm.intermediate))
    else:
        llm_macs = llm.layers * paper_layer_macs(visual, llm.hidden, llm.intermediate)
    return _entry(visual=visual, text=0, frames=counts, schedule=used,
                  parts={"encoder": encoder, "llm": llm_macs}, per_mac=per_mac)


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


def family_plot_models() -> list[str]:
    """The first model of each family other than the reference model's (one plot each)."""
    seen = {MODELS[REFERENCE_MODEL].family}
    keys = []
    for key, model in MODELS.items():
        if model.family not in seen:
            seen.add(model.family)
            keys.append(key)
    return keys


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
    given = parse_schedule(schedule) if schedule else None
    ref = MODELS[REFERENCE_MODEL]
    cfg = ref.vision.family.defaults  # the Stage I rule's settings, as served
    models: dict[str, Any] = {}
    for key, model in MODELS.items():
        t = frames or model.frames
        # schedules count encoder frames; the default is stated for REFERENCE_FRAMES of them
        sched = given if given is not None else scale_schedule(
            default_schedule(model.vision), model.vision.units(t))
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
    default_sched = default_schedule(ref.vision)
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
            "schedule": format_schedule(given or default_sched),
            "schedule_reference_frames": None if schedule is not None else REFERENCE_FRAMES,
            "stage1_rule": {"prune_layers": list(cfg.prune_layers), "tau": cfg.tau,
                            "max_window": cfg.max_window, "ema": cfg.ema,
                            "synthetic_video": {"tokens": SIM_TOKENS,
                                                "width": SIM_WIDTH, "seed": SIM_SEED,
                                                "scene_starts": [0.0, 0.3, 0.5, 0.8],
                                                "sim_across_cut": 0.2,
                                                "sim_neighbours": 0.9}},
            "paper_llm_merge": {"layer": LLM_MERGE_LAYER, "keep": "floor(n / 2)"},
            "vision": {"name": ref.vision.name, "width": ref.vision.width,
                       "layers": ref.vision.layers, "heads": ref.vision.heads,
                       "mlp": ref.vision.mlp, "tokens_per_frame": ref.vision.tokens_per_frame,
                       "patch": ref.vision.patch},
        },
        "methods": {
            "correct": {
                "full": "all T*196 + 1 visual tokens, full encoder",
                "post_encoder": "full encoder; LLM sees video_token_budget(T, r, 196) + 1 tokens "
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
                    help="EarlyTom LAYER:FRAMES after each prune layer (default: each family's "
                         "default prune layers with 22, 20, 17 frames at 32 encoder frames, "
                         "scaled to other counts)")
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
    print("\n\n".join(format_flops_table(results, k, paper_only=args.paper_convention) for k in keys))
    print()
    print(format_flops_checks(results))
    if "1.00" in results["settings"]["ratios"] and "0.15" in results["settings"]["ratios"]:
        print()
        print(format_qwen_paper(results))
    if not args.no_write:
        write_json(results, args.json)
        plot_flops(results, args.plot)
        written = [args.json, args.plot]
        for key in family_plot_models():  # one plot per other family: its first model
            family = MODELS[key].family
            written.append(args.plot.with_name(f"{args.plot.stem}_{family}{args.plot.suffix}"))
            plot_flops(results, written[-1], key=key)
        print(f"\nwrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
