"""What EarlyTom's compression logic costs next to the encoder it shortens (CPU, float32).

Run ``python -m benchmarks.compress_overhead [--family F] [--video scene|motion]`` from the
repository root; writes ``benchmarks/results/compress_overhead[_<family>][_motion].json``
(``--json``) and a bar chart beside it (``--plot``; ``--plot ''`` skips it).

Everything is timed in one run, on the same threads (``--threads``, default 2), so the ratio is
meaningful even where absolute times are not. Shapes come from the family's FLOPs description
(:mod:`benchmarks.harness.flops_models`: SIGLIP, QWEN25VL_VISION, QWEN3VL_VISION), settings from
its serving defaults (:mod:`earlytom_vllm.families`):

* **the reference**: ONE encoder layer of the family's kind over all encoder frames of a 32-frame
  video (LLaVA-OneVision: 32 frames; Qwen: 16 temporal slices), random weights, pre-norm:
  norm, q/k/v, attention via ``scaled_dot_product_attention`` within each frame, out projection,
  residual, norm, MLP, residual. SigLIP: LayerNorm, GELU-tanh fc1/fc2 (729 tokens, width 1152,
  16 heads, MLP 4304). Qwen3-VL: the same block kind plus 2-D rotary q/k, full attention within
  each slice (784 tokens at 448^2). Qwen2.5-VL: RMSNorm, rotary q/k, SwiGLU MLP; its windowed
  blocks attend within each 112-px window (the full-attention blocks over the whole slice), so
  both kinds are timed. The encoder is the family's layer count of these
  (``logic / encoder`` is the share reported; for information also against the encoder EarlyTom
  really runs, whose later layers see fewer frames).
* **Stage I** at the family's prune layers (tau 0.5, max_window 6, ema 0.9): ``stage1`` as the
  encoder calls it (one similarity band for segmentation and merge; at the last prune layer with
  received attention and the refinement); Qwen3-VL's deepstack taps taken by then follow the
  merge (``apply_plan`` on each, as its tower does). The hidden states are
  :func:`benchmarks.harness.synthetic_hidden_states`: ``--video scene`` (three scene cuts;
  cosine 0.9 between neighbours, 0.2 across cuts) or ``motion`` (every frame a fresh draw:
  cosine 0.2 between any two, so nothing merges). Each prune layer gets the previous one's
  merged output (scene: 32 -> 26 -> 18 -> 16 frames on LLaVA-OneVision).
* **received attention, extra**: at the last prune layer the encoder replaces the layer's SDPA by
  ``attention_with_received`` (chunked eager softmax attention that also sums the probabilities
  each key receives). Its extra cost is timed as ``attention_with_received - SDPA`` on the same
  q, k, v (the frames entering that layer, from the reference layer's projections). A noisy
  negative difference counts as 0 in the total. ``received_attention`` alone (a separate pass,
  which the encoder does not do) is reported for information.
* **Stage II**: the family's pooling of received attention (LLaVA-OneVision: bilinear
  ``pool_received`` 27x27 -> 14x14; Qwen: ``pool_merge_units``, the mean over each 2x2 merge
  unit) + ``select_tokens`` on ``[T', pooled, D]`` features (D: the LLM width, times the
  mergers' count on Qwen3-VL, whose deepstack features ride along) with the budget at r = 0.1.

Each part: ``--warmup`` untimed calls (default 1), then the median of ``--repeats`` timed calls
(default 5). The logic total is the sum of the parts' medians. Progress goes to stderr (tqdm).
Tiny shapes run in a second (``--frames 4 --tokens 49 --width 64 --heads 4 --mlp 128
--llm-width 32 --repeats 1 --warmup 0``; Qwen: ``--tokens 64``, an even-sided square) are the
test suite's smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks import harness
from benchmarks.harness import families as fam
from benchmarks.harness.flops_models import (
    MODELS,
    QWEN3VL_VISION,
    QWEN25VL_VISION,
    REFERENCE_FRAMES,
    SIGLIP,
    QwenVisionConfig,
    VisionConfig,
)
from benchmarks.harness.reference_layer import EncoderLayer, layer_kind
from earlytom_vllm.core import (
    attention_with_received,
    min_frames_for_budget,
    pool_merge_units,
    pool_received,
    received_attention,
    select_tokens,
    stage1,
    video_token_budget,
)
from earlytom_vllm.core.temporal import apply_plan

DEFAULT_JSON = harness.RESULTS / "compress_overhead.json"
DEFAULT_PLOT = harness.RESULTS / "compress_overhead.png"
TARGET_PCT = 1.0
#: The family -> its vision tower's FLOPs description (shapes, layer kind, depth).
VISIONS = {v.family_name: v for v in (SIGLIP, QWEN25VL_VISION, QWEN3VL_VISION)}
#: ``--video``: keyword arguments of :func:`harness.synthetic_hidden_states`, and what they give.
HIDDEN_VIDEOS: dict[str, tuple[dict[str, float], str]] = {
    "scene": ({}, "3 scene cuts, cosine 0.9 between neighbours, 0.2 across cuts"),
    "motion": ({"scene": 0.0, "rho": 0.0},
               "every frame a fresh draw: cosine 0.2 between any two frames, nothing merges"),
}


def default_paths(family: str, video: str) -> tuple[Path, Path]:
    """``compress_overhead[_<family>][_motion].{json,png}`` (the default family's scene run keeps
    the original names)."""
    stem = fam.results_stem("compress_overhead", fam.get(family))
    stem += "" if video == "scene" else f"_{video}"
    return harness.RESULTS / f"{stem}.json", harness.RESULTS / f"{stem}.png"


def family_llm_width(family: str) -> int:
    """The LLM width of the family's FLOPs model (the projector's output)."""
    return next(m.llm.hidden for m in MODELS.values() if m.family == family)


#: ``--clock``: wall time, or this process's CPU time (user + system, all threads: steadier
#: than wall time on a shared machine, best with ``--threads 1``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_ms(fn: Callable[[], object], repeats: int, warmup: int,
            bar: tqdm | None = None, clock: Callable[[], float] = time.perf_counter
            ) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones (ms each, on ``clock``)."""
    for _ in range(warmup):
        fn()
        if bar is not None:
            bar.update()
    out = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1e3)
        if bar is not None:
            bar.update()
    return out


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(samples), 4),
            "min_ms": round(min(samples), 4),
            "samples_ms": [round(s, 4) for s in samples]}


def run(**kwargs: Any) -> dict[str, Any]:
    """Time every part; return the JSON-ready report (see :func:`_run` for the arguments).

    Sets torch's thread count for the run and restores it afterwards."""
    threads = torch.get_num_threads()
    try:
        return _run(**kwargs)
    finally:
        torch.set_num_threads(threads)


def _geometry(vision: Any, tokens: int) -> tuple[Any, int]:
    """The vision description at ``tokens`` tokens per encoder frame (a square grid; Qwen: of
    whole merge units) and its grid side."""
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"tokens must be a square grid (729 = 27^2), got {tokens}")
    if isinstance(vision, VisionConfig):
        return dataclasses.replace(vision, image=grid * vision.patch), grid
    if grid % vision.merge:
        raise ValueError(f"tokens must be a square grid of side divisible by {vision.merge} "
                         f"({vision.family.title}'s merge units), got {tokens}")
    side = grid * vision.patch
    return dataclasses.replace(vision, image_h=side, image_w=side), grid


def _run(*, family: str = fam.DEFAULT, video: str = "scene", frames: int | None = None,
         tokens: int | None = None, width: int | None = None, heads: int | None = None,
         mlp: int | None = None, llm_width: int | None = None, ratio: float = 0.1,
         prune_layers: Sequence[int] | None = None, repeats: int = 5, warmup: int = 1,
         threads: int = 2, seed: int = 0, clock: str = "wall", progress: bool = True
         ) -> dict[str, Any]:
    """Shapes default to the family's FLOPs description at a 32-frame video."""
    if family not in VISIONS:
        raise ValueError(f"family must be one of {sorted(VISIONS)}, got {family!r}")
    if video not in HIDDEN_VIDEOS:
        raise ValueError(f"video must be one of {sorted(HIDDEN_VIDEOS)}, got {video!r}")
    vision = VISIONS[family]
    frames = vision.units(REFERENCE_FRAMES) if frames is None else frames
    tokens = vision.tokens_per_frame if tokens is None else tokens
    width, heads, mlp = width or vision.width, heads or vision.heads, mlp or vision.mlp
    vision, grid = _geometry(vision, tokens)
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    qwen = not isinstance(vision, VisionConfig)  # a Qwen tower of temporal slices
    cfg = vision.family.defaults  # the family's serving defaults (prune layers, tau, ...)
    layers = tuple(prune_layers) if prune_layers else cfg.prune_layers
    n_layers = vision.layers
    pooled_tokens = vision.pooled_tokens_per_frame  # LLaVA: 27x27 -> 14x14; Qwen: N / 4
    pooled = math.isqrt(pooled_tokens)
    feature_width = (llm_width or family_llm_width(family)) * (vision.mergers if qwen else 1)
    budget = video_token_budget(frames, ratio, pooled_tokens)
    min_frames = min_frames_for_budget(budget, pooled_tokens)
    kind = layer_kind(vision)
    windows = vision.window_sizes() if isinstance(vision, QwenVisionConfig) else None
    full_blocks = set(vision.full_attention_blocks) if windows else set(range(n_layers))
    taps = getattr(vision, "deepstack", ())  # Qwen3-VL: states kept for the deepstack mergers
    video_kwargs, video_desc = HIDDEN_VIDEOS[video]

    def pool(rec: torch.Tensor) -> torch.Tensor:
        if qwen:
            return pool_merge_units(rec, vision.merge * vision.merge)
        return pool_received(rec, grid=grid, pooled=pooled)

    torch.set_num_threads(threads)
    info = harness.machine_info(torch_threads=threads, loadavg_at_start=harness.loadavg())
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        layer = EncoderLayer(width, heads, mlp, kind).eval()
        video_h = harness.synthetic_hidden_states(frames, tokens, width, seed=seed,
                                                  **video_kwargs)  # [T, N, C]

        def stage(x: torch.Tensor, rec: torch.Tensor | None, layer_idx: int):
            """Stage I as the encoder runs it after ``layer_idx``, taps following the merge."""
            out = stage1(x, rec, tau=cfg.tau, max_window=cfg.max_window, ema=cfg.ema,
                         min_frames=min_frames, refine=layer_idx == layers[-1],
                         with_sources=True)
            plan = out[3]
            if not plan.identity:
                for _ in (d for d in taps if d <= layer_idx):
                    apply_plan(x, plan)  # a tap has the hidden states' shape
            return out

        # Untimed preparation: the realistic chain of inputs to each prune layer.
        stage_inputs: list[torch.Tensor] = []
        h = video_h
        for layer_idx in layers[:-1]:
            stage_inputs.append(h)
            h = stage(h, None, layer_idx)[0]
        stage_inputs.append(h)
        last_in = h  # the frames entering the last prune layer
        q, k, v = (t.contiguous() for t in layer.qkv(last_in))
        _, received_sum = attention_with_received(q, k, v,
                                                  chunk_frames=cfg.attention_chunk_frames)
        received = received_sum / (heads * tokens)  # [F, N], mean over heads and queries
        merged, merged_received, groups, _ = stage(last_in, received, layers[-1])
        assert merged_received is not None and groups is not None
        frames_out = merged.shape[0]
        features = torch.randn(frames_out, pooled_tokens, feature_width, generator=gen)
        pooled_received = pool(merged_received)

        def stage1_job(i: int) -> Callable[[], object]:
            x, rec = stage_inputs[i], (received if i == len(layers) - 1 else None)
            return lambda: stage(x, rec, layers[i])

        jobs: list[tuple[str, Callable[[], object]]] = [
            ("encoder_layer_full", lambda: layer(video_h)),
            *([("encoder_layer_windowed", lambda: layer(video_h, windows))] if windows else []),
            *((f"stage1_layer_{layer_idx}", stage1_job(i)) for i, layer_idx in enumerate(layers)),
            ("sdpa_last_prune_layer", lambda: F.scaled_dot_product_attention(q, k, v)),
            ("attention_with_received_last_prune_layer",
             lambda: attention_with_received(q, k, v, chunk_frames=cfg.attention_chunk_frames)),
            ("received_attention_alone",
             lambda: received_attention(q, k, chunk_frames=cfg.attention_chunk_frames)),
            ("pool_received", lambda: pool(merged_received)),
            ("select_tokens", lambda: select_tokens(features, pooled_received, groups, budget)),
        ]
        samples: dict[str, list[float]] = {}
        with tqdm(total=len(jobs) * (repeats + warmup), desc="compress_overhead", unit="call",
                  disable=not progress, file=sys.stderr) as bar:
            for name, fn in jobs:
                bar.set_postfix_str(name)
                samples[name] = time_ms(fn, repeats, warmup, bar, CLOCKS[clock])
        info["loadavg_at_end"] = harness.loadavg()

    med = {name: statistics.median(s) for name, s in samples.items()}
    layer_ms = med["encoder_layer_full"]
    per_layer = [layer_ms if i in full_blocks else med["encoder_layer_windowed"]
                 for i in range(n_layers)]
    encoder_ms = sum(per_layer)
    stage1_ms = sum(med[f"stage1_layer_{i}"] for i in layers)
    extra_raw = med["attention_with_received_last_prune_layer"] - med["sdpa_last_prune_layer"]
    extra_ms = max(0.0, extra_raw)
    stage2_ms = med["pool_received"] + med["select_tokens"]
    logic_ms = stage1_ms + extra_ms + stage2_ms
    # frames entering each encoder layer under EarlyTom, for the "real encoder" share
    entering, current = [], frames
    counts_after = [x.shape[0] for x in stage_inputs[1:]] + [frames_out]
    after = dict(zip(layers, counts_after, strict=True))
    for i in range(n_layers):
        entering.append(current)
        current = after.get(i, current)
    earlytom_encoder_ms = sum(ms * f / frames for ms, f in zip(per_layer, entering, strict=True))
    pct_full = 100.0 * logic_ms / encoder_ms
    layer_desc = kind.describe(vision)
    return {
        "description": f"EarlyTom compression logic vs the full-token {vision.family.title} "
                       f"encoder ({n_layers} layers of the reference layer, random weights), "
                       "float32 on CPU, same run",
        "family": family,
        "video": video,
        "encoder": {"layers": n_layers, "reference_layer": layer_desc,
                    "full_attention_layers": sorted(full_blocks),
                    "window_tokens": windows, "deepstack_taps": list(taps)},
        "shapes": {"frames": frames, "tokens_per_frame": tokens, "grid": grid, "width": width,
                   "heads": heads, "head_dim": width // heads, "mlp": mlp,
                   "pooled_tokens_per_frame": pooled_tokens, "llm_width": feature_width},
        "settings": {"retain_ratio": ratio, "budget": budget, "min_frames": min_frames,
                     "prune_layers": list(layers), "tau": cfg.tau, "max_window": cfg.max_window,
                     "ema": cfg.ema, "attention_chunk_frames": cfg.attention_chunk_frames,
                     "repeats": repeats, "warmup": warmup, "seed": seed, "clock": clock,
                     "hidden_states": f"benchmarks.harness.synthetic_hidden_states ({video_desc})"
                                      "; each prune layer gets the previous one's merged output",
                     "stage1": "earlytom_vllm.core.stage1 as the encoder calls it"
                               + ("; deepstack taps follow each merge" if taps else ""),
                     "received_extra": "median(attention_with_received) - median(SDPA) on the "
                                       "frames entering the last prune layer, clamped at 0"},
        "machine": info,
        "frames": {"entering_prune_layers": [x.shape[0] for x in stage_inputs],
                   "after_last_prune_layer": frames_out,
                   "refined_groups": [list(g) for g in groups]},
        "timings": {name: _summary(s) for name, s in samples.items()},
        "summary_ms": {
            "encoder_layer_full": round(layer_ms, 4),
            f"encoder_{n_layers}_layers_full": round(encoder_ms, 4),
            "encoder_earlytom_estimate": round(earlytom_encoder_ms, 4),
            "stage1_total": round(stage1_ms, 4),
            "stage1_per_layer": {str(i): round(med[f"stage1_layer_{i}"], 4) for i in layers},
            "received_extra_raw": round(extra_raw, 4),
            "received_extra": round(extra_ms, 4),
            "received_attention_alone": round(med["received_attention_alone"], 4),
            "stage2_total": round(stage2_ms, 4),
            "pool_received": round(med["pool_received"], 4),
            "select_tokens": round(med["select_tokens"], 4),
            "logic_total": round(logic_ms, 4),
        },
        "overhead": {
            f"logic_over_{n_layers}_full_layers_pct": round(pct_full, 4),
            "logic_over_earlytom_encoder_pct": round(100.0 * logic_ms / earlytom_encoder_ms, 4),
            "parts_over_encoder_pct": {
                "stage1": round(100.0 * stage1_ms / encoder_ms, 4),
                "received_extra": round(100.0 * extra_ms / encoder_ms, 4),
                "stage2": round(100.0 * stage2_ms / encoder_ms, 4)},
            "target_pct": TARGET_PCT,
            "meets_target": pct_full < TARGET_PCT,
        },
    }


def encoder_pct(rep: dict[str, Any]) -> float:
    """Logic over the full-token encoder, in percent."""
    return rep["overhead"][f"logic_over_{rep['encoder']['layers']}_full_layers_pct"]


def format_report(rep: dict[str, Any]) -> str:
    s, o, sh = rep["summary_ms"], rep["overhead"], rep["shapes"]
    fr, n = rep["frames"], rep["encoder"]["layers"]
    lines = [
        f"{rep['family']}, {rep['video']} video: {sh['frames']} frames x {sh['tokens_per_frame']}"
        f" tokens x {sh['width']} ({sh['heads']} heads, MLP {sh['mlp']}), float32, "
        f"{rep['machine']['torch_threads']} threads, torch "
        f"{rep['machine']['versions'].get('torch')}, {rep['machine']['cpu_model']}",
        f"reference layer: {rep['encoder']['reference_layer']}",
        f"frames entering prune layers {rep['settings']['prune_layers']}: "
        f"{fr['entering_prune_layers']} -> {fr['after_last_prune_layer']}",
        f"  one full-token encoder layer        {s['encoder_layer_full']:>10.2f} ms "
        f"(encoder of {n} = {s[f'encoder_{n}_layers_full']:.0f} ms)",
    ]
    if "encoder_layer_windowed" in rep["timings"]:
        lines.append(f"  one windowed encoder layer          "
                     f"{rep['timings']['encoder_layer_windowed']['median_ms']:>10.2f} ms")
    for layer_idx, ms in s["stage1_per_layer"].items():
        lines.append(f"  Stage I after layer {layer_idx:<3}            {ms:>10.2f} ms")
    parts = o["parts_over_encoder_pct"]
    lines += [
        f"  received attention extra            {s['received_extra']:>10.2f} ms "
        f"(raw {s['received_extra_raw']:.2f}; received_attention alone "
        f"{s['received_attention_alone']:.2f})",
        f"  Stage II pool received attention    {s['pool_received']:>10.2f} ms",
        f"  Stage II select_tokens              {s['select_tokens']:>10.2f} ms",
        f"  logic total                         {s['logic_total']:>10.2f} ms",
        f"  logic / ({n} x full layer)           {encoder_pct(rep):>10.3f} %  "
        f"(target < {o['target_pct']}%: {'met' if o['meets_target'] else 'MISSED'}; Stage I "
        f"{parts['stage1']:.3f}, received {parts['received_extra']:.3f}, Stage II "
        f"{parts['stage2']:.3f})",
        f"  logic / EarlyTom's own encoder      {o['logic_over_earlytom_encoder_pct']:>10.3f} %",
    ]
    return "\n".join(lines)


def write_plot(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = rep["summary_ms"]
    names = ["one encoder layer (full)"]
    values = [s["encoder_layer_full"]]
    for layer_idx, ms in s["stage1_per_layer"].items():
        names.append(f"Stage I @ layer {layer_idx}")
        values.append(ms)
    names += ["received attn extra", "pool received", "select_tokens", "logic total"]
    values += [s["received_extra"], s["pool_received"], s["select_tokens"], s["logic_total"]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#7f7f7f"] + ["#1f77b4"] * (len(names) - 2) + ["#d62728"]
    ax.barh(names[::-1], [max(v, 1e-3) for v in values[::-1]], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("ms (median, log scale)")
    ax.set_title(f"{rep['family']}, {rep['video']}: EarlyTom logic = {encoder_pct(rep):.2f}% of "
                 f"the {rep['encoder']['layers']}-layer encoder ({rep['shapes']['frames']} "
                 "frames, CPU fp32)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time EarlyTom's compression logic against one "
                                             "full-token encoder layer of the family's kind.")
    fam.add_family_arg(ap)
    ap.add_argument("--video", choices=sorted(HIDDEN_VIDEOS), default="scene",
                    help="hidden-state video: scene cuts (merges) or motion (nothing merges)")
    ap.add_argument("--frames", type=int, help="encoder frames (default: the family's for "
                                               f"{REFERENCE_FRAMES} video frames)")
    ap.add_argument("--tokens", type=int, help="tokens per encoder frame (a square)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--mlp", type=int)
    ap.add_argument("--llm-width", type=int, help="projector output width (default: the "
                                                  "family's LLM width)")
    ap.add_argument("--ratio", type=float, default=0.1, help="retain ratio for the budget")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or the process's CPU time (steadier on a shared machine)")
    ap.add_argument("--json", type=Path, help="default: results/compress_overhead"
                                              "[_<family>][_motion].json")
    ap.add_argument("--plot", help="PNG path ('' to skip; default beside the JSON's name)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    default_json, default_plot = default_paths(args.family, args.video)
    json_path = args.json or default_json
    plot = str(default_plot) if args.plot is None else args.plot
    try:
        rep = run(family=args.family, video=args.video, frames=args.frames, tokens=args.tokens,
                  width=args.width, heads=args.heads, mlp=args.mlp, llm_width=args.llm_width,
                  ratio=args.ratio, repeats=args.repeats, warmup=args.warmup,
                  threads=args.threads, seed=args.seed, clock=args.clock, progress=not args.no_progress)
    except ValueError as exc:
        ap.error(str(exc))
    print(format_report(rep))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rep, indent=1) + "\n")
    written = [str(json_path)]
    if plot:
        write_plot(rep, Path(plot))
        written.append(plot)
    print(f"wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
