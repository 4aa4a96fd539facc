"""The models :mod:`benchmarks.flops` counts, each described by its vision tower and its LLM, and
the multiply-adds of their layers.

A vision description states its family (:mod:`earlytom_vllm.families`: what a frame is, tokens
per frame, extra rows, default prune layers all come from there) and its own layer arithmetic:
``units(frames)``, ``patch_embed_macs``, ``layer_macs(layer)`` (one encoder frame through one
layer), ``projector_macs``. The counting in :mod:`benchmarks.flops` is the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from earlytom_vllm.families import Family
from earlytom_vllm.families import get as family


def paper_layer_macs(n: int, d: int, m: int) -> int:
    """``4 n d^2 + 2 n^2 d + 2 n d m``: q/k/v/o projections, scores and P.V, a 2-matrix MLP.

    Exact for a SigLIP layer over one sequence of n tokens (multi-head attention, fc1/fc2)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


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


def llm_layer_macs(n: int, llm: LLMConfig, *, causal: bool = False) -> int:
    """One Qwen2 decoder layer over n tokens: GQA projections, attention, SwiGLU MLP."""
    q_dim = llm.heads * llm.head_dim
    kv_dim = llm.kv_heads * llm.head_dim
    proj = n * llm.hidden * q_dim + 2 * n * llm.hidden * kv_dim + n * q_dim * llm.hidden
    pairs = n * (n + 1) // 2 if causal else n * n  # (query, key) pairs computed
    attn = 2 * pairs * q_dim  # q.k^T and P.v
    mlp = 3 * n * llm.hidden * llm.intermediate  # gate, up, down
    return proj + attn + mlp


@dataclass(frozen=True, kw_only=True)
class _Vision:
    """A vision tower: its family (the registry's name), its size, and what every description
    derives from its family and geometry (``image_h`` x ``image_w``: a frame as encoded)."""

    name: str
    family_name: str
    width: int
    layers: int
    heads: int
    mlp: int
    patch: int
    channels: int = 3

    @property
    def family(self) -> Family:
        return family(self.family_name)

    def hf_config(self) -> dict[str, Any]:
        """The geometry as a checkpoint's ``config.json`` states it (what the family reads)."""
        raise NotImplementedError

    @property
    def pooled_tokens_per_frame(self) -> int:
        """LLM tokens per encoder frame, as the family counts them at this geometry."""
        config = self.hf_config()
        grid = self.family.patch_grid(config, self.image_h, self.image_w)
        return self.family.frame_tokens(config, grid)

    def units(self, frames: int) -> int:
        """Encoder frames of a ``frames``-frame video (whole temporal patches only)."""
        unit = self.family.frame_unit
        if frames % unit:
            raise ValueError(f"{self.family.title} needs a frame count divisible by {unit} "
                             f"(its encoder frame), got {frames}")
        return self.family.units(frames)


@dataclass(frozen=True, kw_only=True)
class VisionConfig(_Vision):
    """SigLIP (LLaVA-OneVision): a frame of ``grid x grid`` patches, every layer per frame."""

    image: int  # px: every frame is resized to it

    @property
    def image_h(self) -> int:
        return self.image

    @property
    def image_w(self) -> int:
        return self.image

    @property
    def grid(self) -> int:
        return self.image // self.patch  # 27

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid  # 729 encoder tokens

    def hf_config(self) -> dict[str, Any]:
        return {"vision_config": {"image_size": self.image, "patch_size": self.patch}}

    def patch_embed_macs(self, frames: int) -> int:
        return frames * self.tokens_per_frame * self.channels * self.patch * self.patch * self.width

    def layer_macs(self, layer: int) -> int:
        """One frame through one encoder layer (attention never crosses frames)."""
        return paper_layer_macs(self.tokens_per_frame, self.width, self.mlp)

    #: Whether the projector is one MLP per LLM token, so that EarlyTom runs it on the kept
    #: tokens only (``VisionTower.project_rows``). SigLIP's projector runs before the bilinear
    #: pooling, over every patch of the surviving frames.
    projects_per_token = False

    def projector_macs(self, frames: int, hidden: int) -> int:
        """Linear w -> D, GELU, Linear D -> D over every patch, before pooling."""
        return frames * self.tokens_per_frame * (self.width * hidden + hidden * hidden)


@dataclass(frozen=True, kw_only=True)
class _SliceVision(_Vision):
    """A Qwen vision tower for one video geometry: ``image_h`` x ``image_w`` are the frame size
    after the processor's resize (multiples of patch x merge); a *slice* is ``temporal_patch``
    frames of ``grid_h x grid_w`` patches; mergers fuse each 2x2 merge unit into one LLM token."""

    temporal_patch: int
    merge: int
    out_hidden: int  # merger output (the LLM width)
    image_h: int
    image_w: int

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
    def mergers(self) -> int:
        """Patch mergers run per LLM token (Qwen3-VL: the main one and one per deepstack level)."""
        return 1

    def hf_config(self) -> dict[str, Any]:
        return {"vision_config": {"patch_size": self.patch, "spatial_merge_size": self.merge}}

    def patch_embed_macs(self, slices: int) -> int:
        """The 3-D conv (temporal_patch x patch x patch x 3 -> width) over every patch."""
        kernel = self.channels * self.temporal_patch * self.patch * self.patch
        return slices * self.tokens_per_frame * kernel * self.width

    projects_per_token = True  # every merger is one MLP per 2x2 merge unit

    def projector_token_macs(self) -> int:
        """Every patch merger on one LLM token: Linear(4w -> 4w), GELU, Linear(4w -> out_hidden)."""
        inner = self.width * self.merge * self.merge
        return self.mergers * (inner * inner + inner * self.out_hidden)

    def projector_macs(self, slices: int, hidden: int) -> int:
        """The mergers over every LLM token of ``slices`` slices."""
        return slices * self.pooled_tokens_per_frame * self.projector_token_macs()


@dataclass(frozen=True, kw_only=True)
class QwenVisionConfig(_SliceVision):
    """Qwen2.5-VL's vision tower (``Qwen2_5_VisionTransformer``): windowed attention but in
    ``full_attention_blocks``, SwiGLU MLPs."""

    window: int  # px: a side of the windowed blocks' attention windows
    full_attention_blocks: tuple[int, ...]

    def window_sizes(self) -> list[int]:
        """Patches in each attention window of one slice (vLLM's ``get_window_index``: windows
        of ``window/patch/merge`` merge units a side over the merge grid, the last row/column of
        windows partial when the grid does not divide)."""
        units = self.window // self.patch // self.merge  # 4 merge units a side
        mh, mw = self.grid_h // self.merge, self.grid_w // self.merge
        rows = [min(units, mh - i) for i in range(0, mh, units)]
        cols = [min(units, mw - j) for j in range(0, mw, units)]
        return [rh * cw * self.merge * self.merge for rh in rows for cw in cols]

    def layer_macs(self, block: int) -> int:
        """One slice through one block: q/k/v/o ``4 n w^2``; attention ``2 s^2 w`` summed over
        the attention sequences (the whole slice in a full-attention block, each 112-px window
        otherwise); SwiGLU MLP ``3 n w m``."""
        n = self.tokens_per_frame
        seqs = [n] if block in self.full_attention_blocks else self.window_sizes()
        return (4 * n * self.width ** 2 + 2 * sum(s * s for s in seqs) * self.width
                + 3 * n * self.width * self.mlp)


@dataclass(frozen=True, kw_only=True)
class Qwen3VisionConfig(_SliceVision):
    """Qwen3-VL's vision tower (``Qwen3_VisionTransformer``, also under Qwen3-VL-MoE, Qwen3.5):
    every block attends over the whole slice, 2-matrix GELU MLPs; the hidden states after the
    ``deepstack`` blocks each go through their own merger (deepstack features for the LLM)."""

    deepstack: tuple[int, ...]

    @property
    def mergers(self) -> int:
        return 1 + len(self.deepstack)

    def layer_macs(self, block: int) -> int:
        """One slice through one block: ``4 n w^2 + 2 n^2 w + 2 n w m`` (the paper's layer)."""
        return paper_layer_macs(self.tokens_per_frame, self.width, self.mlp)


#: The frame count the models and the default schedules are stated for.
REFERENCE_FRAMES = 32

SIGLIP = VisionConfig(name="SigLIP so400m patch14-384 (26 of 27 layers)",
                      family_name="llava_onevision", width=1152, layers=26, heads=16, mlp=4304,
                      patch=14, image=384)
QWEN25VL_VISION = QwenVisionConfig(
    name="Qwen2.5-VL ViT (32 blocks, windowed)", family_name="qwen2_5_vl", width=1280,
    layers=32, heads=16, mlp=3420, patch=14, temporal_patch=2, merge=2,
    window=112,  # px: 8x8 patches = 4x4 merge units
    full_attention_blocks=(7, 15, 23, 31), out_hidden=3584, image_h=644, image_w=644)
#: Qwen3-VL-8B's vision tower at the TTFT benchmark's geometry (448^2: 28x28 patches a slice,
#: 196 LLM tokens) from the checkpoint's config.json: 27 blocks x 1152, 16 heads, MLP 4304,
#: patch 16, deepstack after blocks 8, 16, 24, mergers to 4096.
QWEN3VL_VISION = Qwen3VisionConfig(
    name="Qwen3-VL ViT (27 blocks, deepstack 8/16/24)", family_name="qwen3_vl", width=1152,
    layers=27, heads=16, mlp=4304, patch=16, temporal_patch=2, merge=2, deepstack=(8, 16, 24),
    out_hidden=4096, image_h=448, image_w=448)


@dataclass(frozen=True)
class ModelConfig:
    key: str
    label: str
    llm: LLMConfig
    frames: int = REFERENCE_FRAMES
    vision: VisionConfig | QwenVisionConfig | Qwen3VisionConfig = SIGLIP

    @property
    def family(self) -> str:
        return self.vision.family_name

    @property
    def units(self) -> int:
        """Encoder frames for Stage I: video frames (LLaVA-OV) or temporal slices (Qwen)."""
        return self.vision.units(self.frames)


QWEN2_05B = LLMConfig("Qwen2-0.5B", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864)
QWEN2_7B = LLMConfig("Qwen2-7B", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944)
QWEN2_72B = LLMConfig("Qwen2-72B", hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=29568)
QWEN25_7B = LLMConfig("Qwen2.5-7B", hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944)
QWEN3_8B = LLMConfig("Qwen3-8B", hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288)
# Qwen2.5-VL-7B is counted at 64 frames x 644^2 (32 slices x 46x46 patches, 529 LLM tokens per
# slice, 16,928 in all): the setting closest to the paper's 554.7 TFLOPs (benchmarks/flops.py).
QWEN25VL_FRAMES = 64

MODELS: dict[str, ModelConfig] = {
    m.key: m
    for m in (
        ModelConfig("llava-ov-7b", "LLaVA-OneVision-7B", QWEN2_7B),
        ModelConfig("llava-ov-0.5b", "LLaVA-OneVision-0.5B", QWEN2_05B),
        ModelConfig("llava-ov-72b", "LLaVA-OneVision-72B", QWEN2_72B),
        ModelConfig("llava-video-7b", "LLaVA-Video-7B", QWEN2_7B, frames=64),
        ModelConfig("qwen2.5-vl-7b", "Qwen2.5-VL-7B", QWEN25_7B, frames=QWEN25VL_FRAMES,
                    vision=QWEN25VL_VISION),
        ModelConfig("qwen3-vl-8b", "Qwen3-VL-8B", QWEN3_8B, vision=QWEN3VL_VISION),
    )
}


# --------------------------------------------------------------------------------------------------
# The paper's Qwen2.5-VL-7B figures: which setting they fit, and what cannot be reproduced

TFLOP = 1e12
#: The paper's Qwen2.5-VL-7B prefill TFLOPs (A100 table): full tokens, and EarlyTom at 15%.
QWEN_PAPER_FULL = 554.7
QWEN_PAPER_EARLYTOM_15 = 67.7


def qwen_paper_setting_search(target: float = QWEN_PAPER_FULL, *, max_frames: int = 256,
                              max_grid: int = 80, top: int = 5) -> list[dict[str, Any]]:
    """Frames x resolution (even frame counts, square frames, multiples of 28 px) ranked by how
    close the paper-convention full-token count comes to ``target`` TFLOPs."""
    v, llm = QWEN25VL_VISION, QWEN25_7B
    rows = []
    for frames in range(v.temporal_patch, max_frames + 1, v.temporal_patch):
        t = frames // v.temporal_patch
        for g in range(v.merge, max_grid + 1, v.merge):
            n, tok = t * g * g, t * (g // v.merge) ** 2
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
    floor_first = (v.family.defaults.prune_layers[0] + 1) * paper_layer_macs(
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
