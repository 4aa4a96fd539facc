"""``earlytom-demo``: compress a synthetic video with the tiny checkpoint and show what was kept.

Runs on the CPU in a few seconds, no engine and no network: the transformers adapter drives the
same core loop the vLLM plugin uses.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--retain-ratio", type=float, default=0.1)
    parser.add_argument("--scenes", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from earlytom_vllm import EarlyTomConfig
    from earlytom_vllm.checkpoints import ensure_tiny_checkpoint
    from earlytom_vllm.core import video_token_count
    from earlytom_vllm.hf import HFSiglipTower, compress_hf_video
    from earlytom_vllm.synthetic import scene_video

    try:
        config = EarlyTomConfig(retain_ratio=args.retain_ratio)
    except ValueError as exc:
        parser.error(str(exc))
    path = ensure_tiny_checkpoint()
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(path))
    video = scene_video(args.frames, num_scenes=args.scenes, seed=0)
    pixels = processor.video_processor(videos=[video], return_tensors="pt")["pixel_values_videos"][0]
    t0 = time.perf_counter()
    with torch.inference_mode():
        compress_hf_video(model.eval(), pixels, EarlyTomConfig(enabled=False))  # for timing
        t1 = time.perf_counter()
        result = compress_hf_video(model, pixels, config)
    t2 = time.perf_counter()

    per_frame = HFSiglipTower(model).tokens_per_frame
    full = args.frames * per_frame
    budget = video_token_count(args.frames, config, per_frame)
    print(f"video: {args.frames} frames, {args.scenes} scenes (synthetic), checkpoint {path.name}")
    print(f"config: {config.to_dict()}")
    print(f"visual tokens: {full} + 1 newline -> budget {budget} + 1 newline "
          f"({budget / full:.1%})")
    print(f"frames entering each of the {len(result.frames_per_layer)} encoder layers: "
          f"{result.frames_per_layer}")
    print(f"refined groups over the {result.frames_out} surviving frames: {result.groups}")
    kept = torch.bincount(result.index // per_frame, minlength=result.frames_out).tolist()
    print(f"tokens kept per surviving frame: {kept}")
    print(f"encoder time: full tokens {t1 - t0:.2f} s, EarlyTom {t2 - t1:.2f} s (tiny model, CPU)")
    if result.tokens.shape[0] != budget:  # the serving rule, checked where users see it
        raise AssertionError(f"kept {result.tokens.shape[0]} tokens, budget is {budget}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
