"""What EarlyTom's compression logic costs next to the encoder it shortens (CPU, float32).

Run ``python -m benchmarks.compress_overhead`` (or ``python benchmarks/compress_overhead.py``) from
the repository root; writes ``benchmarks/results/compress_overhead.json`` (``--json``) and a bar
chart ``compress_overhead.png`` (``--plot``; ``--plot ''`` skips it).

Everything is timed in one run, on the same threads (``--threads``, default 2), so the ratio is
meaningful even where absolute times are not:

* **the reference**: ONE SigLIP-so400m-shaped encoder layer over all T = 32 frames, random weights,
  pre-norm: LayerNorm, q/k/v Linear, attention via ``torch.nn.functional.
  scaled_dot_product_attention``, out Linear, residual, LayerNorm, fc1, GELU (tanh), fc2,
  residual. Shapes: 729 tokens, width 1152, 16 heads of 72, MLP 4304. The whole stock encoder is
  26 such layers; the share reported is ``logic / (26 * layer)`` (and, for information, against
  the encoder EarlyTom really runs, whose later layers see fewer frames).
* **Stage I** at the three prune layers (the serving default (10, 21, 23), tau 0.5,
  max_window 6, ema 0.9): ``segment_frames`` + ``merge_frames`` on ``[F, 729, 1152]`` hidden
  states; at the last one ``merge_frames`` also carries the received attention and the surviving
  frames are segmented once more (refinement). The hidden states are the synthetic video of
  :func:`benchmarks.harness.synthetic_hidden_states` (three scene cuts; position-wise cosine 0.9 between
  neighbours, 0.2 across cuts); each prune layer gets the previous one's merged output, so the
  frame counts are the realistic 32 -> 26 -> 18 -> 16 (with the defaults) and the timed calls
  do real merging work.
* **received attention, extra**: at the last prune layer the encoder replaces the layer's SDPA by
  ``attention_with_received`` (chunked eager softmax attention that also sums the probabilities
  each key receives). Its extra cost is timed as ``attention_with_received - SDPA`` on the same
  q, k, v (the frames entering that layer, q/k/v from the layer's own projections). A noisy
  negative difference counts as 0 in the total. ``received_attention`` alone (a separate pass,
  which the encoder does not do) is reported for information.
* **Stage II**: ``pool_received`` (bilinear 27x27 -> 14x14) + ``select_tokens`` on
  ``[T', 196, 3584]`` features (the 7B projector width) with the budget at r = 0.1.

Each part: ``--warmup`` untimed calls (default 1), then the median of ``--repeats`` timed calls
(default 5). The logic total is the sum of the parts' medians. Progress goes to stderr (tqdm).
Tiny shapes run in a second (``--frames 4 --tokens 49 --width 64 --heads 4 --mlp 128
--llm-width 32 --repeats 1 --warmup 0``) are the test suite's smoke run.
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
from benchmarks.harness.flops_models import QWEN2_7B, SIGLIP
from earlytom_vllm.core import (
    attention_with_received,
    merge_frames,
    min_frames_for_budget,
    pool_received,
    received_attention,
    segment_frames,
    select_tokens,
    video_token_budget,
)

DEFAULT_JSON = harness.RESULTS / "compress_overhead.json"
DEFAULT_PLOT = harness.RESULTS / "compress_overhead.png"
ENCODER_LAYERS = 26
TARGET_PCT = 2.0


class EncoderLayer(torch.nn.Module):
    """A SigLIP encoder layer's computation (pre-norm attention + GELU-tanh MLP), random weights."""

    def __init__(self, width: int, heads: int, mlp: int, eps: float = 1e-6) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(width, eps=eps)
        self.q = torch.nn.Linear(width, width)
        self.k = torch.nn.Linear(width, width)
        self.v = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, width)
        self.ln2 = torch.nn.LayerNorm(width, eps=eps)
        self.fc1 = torch.nn.Linear(width, mlp)
        self.fc2 = torch.nn.Linear(mlp, width)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[F, N, C]`` -> three ``[F, H, N, C/H]`` (after the first LayerNorm)."""
        f, n, c = x.shape
        h = self.ln1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(f, n, self.heads, c // self.heads).transpose(1, 2)

        return split(self.q(h)), split(self.k(h)), split(self.v(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, n, c = x.shape
        q, k, v = self.qkv(x)
        attn = F.scaled_dot_product_attention(q, k, v)  # [F, H, N, d]
        x = x + self.out(attn.transpose(1, 2).reshape(f, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def time_ms(fn: Callable[[], object], repeats: int, warmup: int,
            bar: tqdm | None = None) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones (ms each)."""
    for _ in range(warmup):
        fn()
        if bar is not None:
            bar.update()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
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


def _run(*, frames: int = 32, tokens: int = SIGLIP.tokens_per_frame, width: int = SIGLIP.width,
         heads: int = SIGLIP.heads, mlp: int = SIGLIP.mlp, llm_width: int = QWEN2_7B.hidden,
         ratio: float = 0.1,
        prune_layers: Sequence[int] | None = None, repeats: int = 5, warmup: int = 1,
        threads: int = 2, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"tokens must be a square grid (729 = 27^2), got {tokens}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    cfg = SIGLIP.family.defaults  # the family's serving defaults (prune layers, tau, ...)
    layers = tuple(prune_layers) if prune_layers else cfg.prune_layers
    # LLaVA-OneVision's pooling of a grid x grid frame, as the family counts it: 27 -> 14
    pooled_tokens = dataclasses.replace(SIGLIP, image=grid * SIGLIP.patch).pooled_tokens_per_frame
    pooled = math.isqrt(pooled_tokens)
    budget = video_token_budget(frames, ratio, pooled_tokens)
    min_frames = min_frames_for_budget(budget, pooled_tokens)

    torch.set_num_threads(threads)
    info = harness.machine_info(torch_threads=threads, loadavg_at_start=harness.loadavg())
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        layer = EncoderLayer(width, heads, mlp).eval()
        video = harness.synthetic_hidden_states(frames, tokens, width, seed=seed)  # [T, N, C]

        # Untimed preparation: the realistic chain of inputs to each prune layer.
        stage_inputs: list[torch.Tensor] = []
        h = video
        for _ in layers:
            stage_inputs.append(h)
            h, _ = merge_frames(h, segment_frames(h, cfg.tau, cfg.max_window, cfg.ema),
                                min_frames=min_frames)
        last_in = stage_inputs[-1]  # the frames entering the last prune layer
        q, k, v = (t.contiguous() for t in layer.qkv(last_in))
        _, received_sum = attention_with_received(q, k, v,
                                                  chunk_frames=cfg.attention_chunk_frames)
        received = received_sum / (heads * tokens)  # [F, N], mean over heads and queries
        segs_last = segment_frames(last_in, cfg.tau, cfg.max_window, cfg.ema)
        merged, merged_received = merge_frames(last_in, segs_last, received, min_frames=min_frames)
        assert merged_received is not None
        groups = segment_frames(merged, cfg.tau, cfg.max_window, cfg.ema)
        frames_out = merged.shape[0]
        features = torch.randn(frames_out, pooled_tokens, llm_width, generator=gen)
        pooled_received = pool_received(merged_received, grid=grid, pooled=pooled)

        def stage1(i: int) -> Callable[[], object]:
            x = stage_inputs[i]
            if i < len(layers) - 1:
                return lambda: merge_frames(x, segment_frames(x, cfg.tau, cfg.max_window, cfg.ema),
                                            min_frames=min_frames)

            def last() -> object:
                segs = segment_frames(x, cfg.tau, cfg.max_window, cfg.ema)
                hm, _ = merge_frames(x, segs, received, min_frames=min_frames)
                return segment_frames(hm, cfg.tau, cfg.max_window, cfg.ema)  # refinement

            return last

        jobs: list[tuple[str, Callable[[], object]]] = [
            ("encoder_layer_full", lambda: layer(video)),
            *((f"stage1_layer_{layer_idx}", stage1(i)) for i, layer_idx in enumerate(layers)),
            ("sdpa_last_prune_layer", lambda: F.scaled_dot_product_attention(q, k, v)),
            ("attention_with_received_last_prune_layer",
             lambda: attention_with_received(q, k, v, chunk_frames=cfg.attention_chunk_frames)),
            ("received_attention_alone",
             lambda: received_attention(q, k, chunk_frames=cfg.attention_chunk_frames)),
            ("pool_received", lambda: pool_received(merged_received, grid=grid, pooled=pooled)),
            ("select_tokens", lambda: select_tokens(features, pooled_received, groups, budget)),
        ]
        samples: dict[str, list[float]] = {}
        with tqdm(total=len(jobs) * (repeats + warmup), desc="compress_overhead", unit="call",
                  disable=not progress, file=sys.stderr) as bar:
            for name, fn in jobs:
                bar.set_postfix_str(name)
                samples[name] = time_ms(fn, repeats, warmup, bar)
        info["loadavg_at_end"] = harness.loadavg()

    med = {name: statistics.median(s) for name, s in samples.items()}
    layer_ms = med["encoder_layer_full"]
    stage1_ms = sum(med[f"stage1_layer_{i}"] for i in layers)
    extra_raw = med["attention_with_received_last_prune_layer"] - med["sdpa_last_prune_layer"]
    extra_ms = max(0.0, extra_raw)
    stage2_ms = med["pool_received"] + med["select_tokens"]
    logic_ms = stage1_ms + extra_ms + stage2_ms
    # frames entering each encoder layer under EarlyTom, for the "real encoder" share
    entering, current = [], frames
    counts_after = [x.shape[0] for x in stage_inputs[1:]] + [frames_out]
    after = dict(zip(layers, counts_after, strict=True))
    for i in range(ENCODER_LAYERS):
        entering.append(current)
        current = after.get(i, current)
    earlytom_encoder_ms = layer_ms * sum(entering) / frames
    pct_full = 100.0 * logic_ms / (ENCODER_LAYERS * layer_ms)
    return {
        "description": "EarlyTom compression logic vs one full-token SigLIP-so400m-shaped layer "
                       "(random weights), float32 on CPU, same run",
        "shapes": {"frames": frames, "tokens_per_frame": tokens, "grid": grid, "width": width,
                   "heads": heads, "head_dim": width // heads, "mlp": mlp,
                   "pooled_tokens_per_frame": pooled_tokens, "llm_width": llm_width},
        "settings": {"retain_ratio": ratio, "budget": budget, "min_frames": min_frames,
                     "prune_layers": list(layers), "tau": cfg.tau, "max_window": cfg.max_window,
                     "ema": cfg.ema, "attention_chunk_frames": cfg.attention_chunk_frames,
                     "repeats": repeats, "warmup": warmup, "seed": seed,
                     "hidden_states": "benchmarks.harness.synthetic_hidden_states (3 scene cuts, "
                                      "cosine 0.9 between neighbours, 0.2 across cuts); each "
                                      "prune layer gets the previous one's merged output",
                     "received_extra": "median(attention_with_received) - median(SDPA) on the "
                                       "frames entering the last prune layer, clamped at 0"},
        "machine": info,
        "frames": {"entering_prune_layers": [x.shape[0] for x in stage_inputs],
                   "after_last_prune_layer": frames_out,
                   "refined_groups": [list(g) for g in groups]},
        "timings": {name: _summary(s) for name, s in samples.items()},
        "summary_ms": {
            "encoder_layer_full": round(layer_ms, 4),
            "encoder_26_layers_full": round(ENCODER_LAYERS * layer_ms, 4),
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
            "logic_over_26_full_layers_pct": round(pct_full, 4),
            "logic_over_earlytom_encoder_pct": round(100.0 * logic_ms / earlytom_encoder_ms, 4),
            "target_pct": TARGET_PCT,
            "meets_target": pct_full < TARGET_PCT,
        },
    }


def format_report(rep: dict[str, Any]) -> str:
    s, o, sh = rep["summary_ms"], rep["overhead"], rep["shapes"]
    fr = rep["frames"]
    lines = [
        f"{sh['frames']} frames x {sh['tokens_per_frame']} tokens x {sh['width']} "
        f"({sh['heads']} heads, MLP {sh['mlp']}), float32, {rep['machine']['torch_threads']} "
        f"threads, torch {rep['machine']['versions'].get('torch')}, {rep['machine']['cpu_model']}",
        f"frames entering prune layers {rep['settings']['prune_layers']}: "
        f"{fr['entering_prune_layers']} -> {fr['after_last_prune_layer']}",
        f"  one full-token encoder layer        {s['encoder_layer_full']:>10.2f} ms "
        f"(x26 = {s['encoder_26_layers_full']:.0f} ms)",
    ]
    for layer_idx, ms in s["stage1_per_layer"].items():
        lines.append(f"  Stage I after layer {layer_idx:<3}            {ms:>10.2f} ms")
    lines += [
        f"  received attention extra            {s['received_extra']:>10.2f} ms "
        f"(raw {s['received_extra_raw']:.2f}; received_attention alone "
        f"{s['received_attention_alone']:.2f})",
        f"  Stage II pool_received              {s['pool_received']:>10.2f} ms",
        f"  Stage II select_tokens              {s['select_tokens']:>10.2f} ms",
        f"  logic total                         {s['logic_total']:>10.2f} ms",
        f"  logic / (26 x full layer)           {o['logic_over_26_full_layers_pct']:>10.3f} %  "
        f"(target < {o['target_pct']}%: {'met' if o['meets_target'] else 'MISSED'})",
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
    names += ["received attn extra", "pool_received", "select_tokens", "logic total"]
    values += [s["received_extra"], s["pool_received"], s["select_tokens"], s["logic_total"]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = ["#7f7f7f"] + ["#1f77b4"] * (len(names) - 2) + ["#d62728"]
    ax.barh(names[::-1], [max(v, 1e-3) for v in values[::-1]], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("ms (median, log scale)")
    o = rep["overhead"]
    ax.set_title(f"EarlyTom logic = {o['logic_over_26_full_layers_pct']:.2f}% of the 26-layer "
                 f"encoder ({rep['shapes']['frames']} frames, CPU fp32)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time EarlyTom's compression logic against one "
                                             "full-token SigLIP-so400m-shaped encoder layer.")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=SIGLIP.tokens_per_frame,
                    help="tokens per frame (a square)")
    ap.add_argument("--width", type=int, default=SIGLIP.width)
    ap.add_argument("--heads", type=int, default=SIGLIP.heads)
    ap.add_argument("--mlp", type=int, default=SIGLIP.mlp)
    ap.add_argument("--llm-width", type=int, default=QWEN2_7B.hidden,
                    help="projector output width")
    ap.add_argument("--ratio", type=float, default=0.1, help="retain ratio for the budget")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--plot", default=str(DEFAULT_PLOT), help="PNG path ('' to skip)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        rep = run(frames=args.frames, tokens=args.tokens, width=args.width, heads=args.heads,
                  mlp=args.mlp, llm_width=args.llm_width, ratio=args.ratio,
                  repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                  seed=args.seed, progress=not args.no_progress)
    except ValueError as exc:
        ap.error(str(exc))
    print(format_report(rep))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rep, indent=1) + "\n")
    written = [str(args.json)]
    if args.plot:
        write_plot(rep, Path(args.plot))
        written.append(args.plot)
    print(f"wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
