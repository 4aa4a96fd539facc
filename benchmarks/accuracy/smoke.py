"""Accuracy plumbing smoke run: lmms-eval-shaped requests -> earlytom-serve -> scored answers.

Run from the repository root::

    .venv/bin/python -m benchmarks.accuracy.smoke              # spawns earlytom-serve (tiny model)
    .venv/bin/python -m benchmarks.accuracy.smoke --url http://HOST:8000   # a running server

What it does, per retain ratio (default 1.0, 0.25, 0.10), for every question of
``smoke_set.json`` (six multiple-choice questions about deterministic synthetic videos):

1. renders the question's video (``earlytom_vllm.synthetic``, 8 frames of 128 px) and sends it
   exactly as lmms-eval's ``openai_compatible`` model sends a video: ONE user message whose content
   is the text part followed by one ``image_url`` part per frame (``data:image/png;base64``),
   ``max_tokens`` and ``temperature`` 0, through the ``openai`` client's
   ``chat.completions.create``;
2. adds ``"earlytom": {"frames_as_video": true, "retain_ratio": r}`` to the body with the same
   injector the lmms-eval recipe uses (``benchmarks.accuracy.lmms_eval_earlytom``), so the
   front end turns the frames into one video and compresses it;
3. parses the answer letter (A-D) from the reply and scores accuracy;
4. checks ``usage.prompt_tokens`` against the token budget: the video must take exactly
   ``budget(T, r) + 1`` tokens (``T x tokens per frame + 1`` at r = 1; the count of
   :func:`benchmarks.harness.families.expected_rows`, tokens per frame from the checkpoint's config),
   i.e. prompt tokens = text tokens + that,
   with the text tokens counted by the checkpoint's own tokenizer and chat template when the
   checkpoint is local (else inferred, and checked to be the same at every ratio).

The tiny checkpoint has random weights, so accuracy is near chance (0.25): the point is that every
question is answered, scored and charged the right number of visual tokens. Writes
``benchmarks/results/accuracy_smoke.json`` (``--json``). Exit status 1 if a question went
unanswered or a token count is off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import harness
from benchmarks.accuracy.lmms_eval_earlytom import earlytom_field, install_extra_body
from benchmarks.accuracy.smoke_set import DEFAULT_SET, load_set, question_text, render_video
from benchmarks.harness import families

DEFAULT_JSON = harness.RESULTS / "accuracy_smoke.json"
#: The family earlytom-serve serves by default (its tiny checkpoint is the served model).
FAMILY = families.get(families.DEFAULT)
RATIOS = (1.0, 0.25, 0.10)


# --------------------------------------------------------------------------------------------------
# Requests and answers


def png_data_urls(frames: Any) -> list[str]:
    import cv2

    urls = []
    for frame in frames:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        urls.append("data:image/png;base64," + base64.b64encode(buf.tobytes()).decode())
    return urls


def lmms_eval_payload(model: str, context: str, frame_urls: list[str], max_tokens: int
                      ) -> dict[str, Any]:
    """The body lmms-eval's openai_compatible (simple) model builds: text first, then frames."""
    content: list[dict[str, Any]] = [{"type": "text", "text": context}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in frame_urls]
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0}


_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")


def parse_letter(text: str | None) -> str | None:
    """The first standalone A-D in the reply ('B', '(C)', 'D. noise', 'Answer: A'), or None."""
    if not text:
        return None
    match = _LETTER.search(text.strip())
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------------
# Token accounting


def text_token_counter(checkpoint: str | None):
    """context -> text tokens of the rendered chat prompt (without the one <video> token), using
    the checkpoint's tokenizer and chat template; None if the checkpoint is not local."""
    if checkpoint is None or not Path(checkpoint).is_dir():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)

    def count(context: str) -> int:
        # after frames-as-video the message holds the text part and one video part
        msgs = [{"role": "user", "content": [{"type": "text", "text": context},
                                             {"type": "video"}]}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return len(tok(prompt, add_special_tokens=False)["input_ids"]) - 1

    return count


# --------------------------------------------------------------------------------------------------
# Main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.smoke",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", help="a running earlytom-serve (default: start one, tiny checkpoint)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    p.add_argument("--model", help="served model name (default: the server's first)")
    p.add_argument("--checkpoint", help="checkpoint of the spawned server (default: tiny); "
                   "with --url: a local copy of the served checkpoint for exact text-token counts")
    p.add_argument("--set", type=Path, default=DEFAULT_SET, help="question set (JSON)")
    p.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--workers", type=int, default=6, help="requests in flight at once (lmms-eval "
                   "sends a batch concurrently, one thread per request)")
    p.add_argument("--frames", type=int, help="frames per question (default: the set's)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--server-log", type=Path)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    data = load_set(args.set)
    frames, size = int(args.frames or data["frames"]), int(data["frame_size"])
    t_start = time.perf_counter()

    workdir = Path(tempfile.mkdtemp(prefix="earlytom-acc-smoke-"))
    server: harness.Server | None = None
    checkpoint = args.checkpoint
    results: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    try:
        if args.url:
            server = harness.Server(url=args.url.rstrip("/"))
        else:
            serve_args = ["--media-dir", str(workdir / "media"), "--health-interval", "0.5",
                          "--log-level", "warning"]
            if checkpoint:
                serve_args += ["--model", checkpoint]
            else:  # earlytom-serve's default model: the tiny checkpoint
                checkpoint, _ = families.checkpoint(FAMILY, families.sizes(FAMILY, quick=True))
            server = harness.launch_serve(serve_args, args.server_log or workdir / "serve.log",
                                          env_defaults={"VLLM_CPU_KVCACHE_SPACE": "1"})
            print(f"started earlytom-serve on {server.url}", file=sys.stderr)

        # questions (rendered while the server starts)
        questions = []
        for item in data["items"]:
            video = render_video(item["video"], frames, size)
            questions.append({"item": item, "context": question_text(data, item),
                              "frames": png_data_urls(video)})
        count_text = text_token_counter(checkpoint)
        for q in questions:
            q["text_tokens"] = count_text(q["context"]) if count_text is not None else None

        t_wait = time.perf_counter()
        harness.wait_ready(server, args.startup_timeout, args.api_key)
        timing["server_ready_wait"] = round(time.perf_counter() - t_wait, 1)
        model = args.model or harness.served_model(server.url, args.api_key)
        per_frame = families.model_tokens_per_frame(FAMILY, checkpoint or model)

        def visual_tokens(frames: int, ratio: float) -> int:
            return families.expected_rows(FAMILY, "earlytom", ratio, frames, per_frame)

        import openai

        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=args.api_key,
                               max_retries=0, timeout=300)
        def ask(q: dict[str, Any], ratio: float) -> dict[str, Any]:
            item = q["item"]
            row: dict[str, Any] = {"ratio": ratio, "id": item["id"], "answer": item["answer"],
                                   "frames": len(q["frames"])}
            t0 = time.perf_counter()
            try:
                out = client.chat.completions.create(
                    **lmms_eval_payload(model, q["context"], q["frames"], args.max_tokens))
                row.update(answered=True, reply=out.choices[0].message.content or "",
                           prompt_tokens=out.usage.prompt_tokens,
                           completion_tokens=out.usage.completion_tokens)
            except openai.APIError as exc:
                row.update(answered=False, error=f"{type(exc).__name__}: {exc}"[:400])
            row["latency_s"] = round(time.perf_counter() - t0, 3)
            row["parsed"] = parse_letter(row.get("reply"))
            row["correct"] = row["parsed"] == item["answer"]
            row["visual_tokens_expected"] = visual_tokens(len(q["frames"]), ratio)
            if q["text_tokens"] is not None:
                row["text_tokens"] = q["text_tokens"]
            return row

        for ratio in ratios:
            # like lmms-eval: one batch of requests in flight at once, a thread each
            uninstall = install_extra_body({"earlytom": earlytom_field(ratio=ratio)})
            t_ratio = time.perf_counter()
            try:
                with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
                    results += list(pool.map(lambda q, r=ratio: ask(q, r), questions))
            finally:
                uninstall()
            timing[f"ratio_{ratio:g}"] = round(time.perf_counter() - t_ratio, 1)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    # token accounting: text + budget, with the text either counted or inferred
    text_source = "tokenizer" if any("text_tokens" in r for r in results) else "inferred"
    for r in results:
        if not r["answered"]:
            r["budget_ok"] = False
            continue
        measured_text = r["prompt_tokens"] - r["visual_tokens_expected"]
        if text_source == "tokenizer":
            r["budget_ok"] = measured_text == r["text_tokens"]
        else:
            r["text_tokens_inferred"] = measured_text
    if text_source == "inferred":  # the same question must leave the same text at every ratio
        by_id: dict[str, set[int]] = {}
        for r in results:
            if r["answered"]:
                by_id.setdefault(r["id"], set()).add(r["text_tokens_inferred"])
        for r in results:
            if r["answered"]:
                r["budget_ok"] = len(by_id[r["id"]]) == 1 and r["text_tokens_inferred"] > 0

    per_ratio = {}
    for ratio in ratios:
        rows = [r for r in results if r["ratio"] == ratio]
        answered = [r for r in rows if r["answered"]]
        per_ratio[f"{ratio:g}"] = {
            "questions": len(rows), "answered": len(answered),
            "parsed": sum(1 for r in answered if r["parsed"] is not None),
            "correct": sum(1 for r in rows if r["correct"]),
            "accuracy": round(sum(1 for r in rows if r["correct"]) / len(rows), 4) if rows else None,
            "visual_tokens_expected": visual_tokens(frames, ratio),
            "prompt_tokens": [r.get("prompt_tokens") for r in rows],
            "budget_ok": all(r["budget_ok"] for r in rows),
        }
    ok = all(v["answered"] == v["questions"] and v["budget_ok"] for v in per_ratio.values())
    report = {
        "benchmark": "accuracy_smoke",
        "set": {"name": data["name"], "version": data["version"], "path": str(args.set.name),
                "questions": len(data["items"]), "frames": frames, "frame_size": size,
                "chance": 0.25},
        "server": {"url": "spawned earlytom-serve (127.0.0.1)" if not args.url else args.url,
                   "model": model, "checkpoint": checkpoint, "tokens_per_frame": per_frame},
        "request_shape": "lmms-eval openai_compatible (simple): text part, then one "
                         "data:image/png image_url per frame; max_tokens, temperature 0; the "
                         "questions of one ratio in flight at once (--workers); body "
                         "field earlytom = {frames_as_video: true, retain_ratio: r} injected "
                         "by benchmarks.accuracy.lmms_eval_earlytom.install_extra_body",
        "ratios": ratios,
        "text_tokens_source": text_source,
        "per_ratio": per_ratio,
        "ok": ok,
        "machine": harness.machine_info(),
        "loadavg": harness.loadavg(),
        "timing_s": {"total": round(time.perf_counter() - t_start, 1), **timing},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")

    print(f"\naccuracy smoke ({len(data['items'])} questions x {len(ratios)} ratios, model "
          f"{model}, chance 0.25):")
    print(f"{'ratio':>6}{'answered':>10}{'parsed':>8}{'accuracy':>10}{'visual tok':>12}"
          f"{'budget ok':>11}")
    for key, v in per_ratio.items():
        print(f"{key:>6}{v['answered']:>6}/{v['questions']:<3}{v['parsed']:>8}"
              f"{v['accuracy']:>10.3f}{v['visual_tokens_expected']:>12}{v['budget_ok']!s:>11}")
    print(f"text tokens: {text_source}; wrote {args.json}")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
