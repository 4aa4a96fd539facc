"""Run a batch of requests in a fresh process (another engine, or tensor parallelism).

Usage: python _runner.py JOB.json OUT.json. The job names the checkpoint, hf_overrides,
tensor_parallel_size and requests (video given by a synthetic generator name and arguments).
Output: per request the prompt length, the first token's top log-probs, and (EarlyTom models)
the kept indices of the last video from every rank.

A medium spec is ``{"kind": <synthetic generator>, "args": {...}}``, optionally with
``"crop": [h, w]`` (top-left crop) and, for models that need sampling metadata (Qwen2.5-VL),
``"fps"``. ``engine_kwargs`` are passed to ``LLM`` as they are (e.g. ``max_num_batched_tokens``,
``video_pruning_rate``).
"""

from __future__ import annotations

import json
import os
import sys


def medium(spec: dict):
    """A video (or, with ``"frame"``, an image) from its spec (see the module docstring)."""
    from earlytom_vllm import synthetic

    x = getattr(synthetic, spec["kind"])(**spec["args"])
    if spec.get("crop"):
        h, w = spec["crop"]
        x = x[..., :h, :w, :].copy()
    if spec.get("frame") is not None:  # an image: one frame of the generated video
        return x[spec["frame"]]
    return synthetic.with_metadata(x, spec["fps"]) if spec.get("fps") else x


def main() -> None:
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import LLM, SamplingParams

    from earlytom_vllm.vllm.observe import last_positions, last_trace

    kwargs = dict(model=job["model"], enforce_eager=True, dtype="float32",
                  max_model_len=job.get("max_model_len", 8192),
                  limit_mm_per_prompt={"video": 2, "image": 1}, seed=0,
                  tensor_parallel_size=job.get("tensor_parallel_size", 1))
    if job.get("hf_overrides"):
        kwargs["hf_overrides"] = job["hf_overrides"]
    kwargs.update(job.get("engine_kwargs") or {})
    llm = LLM(**kwargs)

    sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    results = []
    for req in job["requests"]:
        videos = [medium(v) for v in req.get("videos", [])]
        images = [medium(v) for v in req.get("images", [])]
        data = {}
        if videos:
            data["video"] = videos[0] if len(videos) == 1 else videos
        if images:
            data["image"] = images[0] if len(images) == 1 else images
        item = {"prompt": req["prompt"], "multi_modal_data": data}
        if req.get("mm_processor_kwargs"):
            item["mm_processor_kwargs"] = req["mm_processor_kwargs"]
        out = llm.generate(item, sp, use_tqdm=False)[0]
        lp = out.outputs[0].logprobs[0]
        traces = (llm.apply_model(last_trace) if job.get("trace") else None)
        results.append({
            "prompt_len": len(out.prompt_token_ids),
            "logprobs": {str(k): v.logprob for k, v in lp.items()},
            "traces": traces,
            # M-RoPE positions the LLM used (models that record them, with trace on)
            "positions": (llm.apply_model(last_positions) if job.get("trace") else None),
        })
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
