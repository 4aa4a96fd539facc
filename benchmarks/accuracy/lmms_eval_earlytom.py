"""Run lmms-eval's ``openai_compatible`` model with an ``"earlytom"`` field in every request body.

lmms-eval's ``openai_compatible`` model builds each chat request itself (``messages``, ``model``,
``max_tokens``, ``temperature``) and has no model argument for extra body fields, so it cannot ask
``earlytom-serve`` to treat a request's frames as ONE video (``"earlytom": {"frames_as_video":
true}``) or to use a given ratio or method. This launcher adds the field at the one place every
version of that model goes through, the ``openai`` client's ``chat.completions.create`` (sync and
async), and then runs lmms-eval's own command line in the same process::

    python -m benchmarks.accuracy.lmms_eval_earlytom --ratio 0.1 -- \\
        --model openai_compatible --force_simple \\
        --model_args model_version=llava-onevision-qwen2-7b-ov-hf,max_frames_num=32,batch_size=16 \\
        --tasks videomme --batch_size 1 --log_samples --output_path results/ratio_0.10

Everything after ``--`` is lmms-eval's. The field sent is ``{"frames_as_video": true}`` plus
``--ratio`` / ``--method`` / ``--full`` / ``--earlytom JSON`` (any ``EarlyTomConfig`` field); a
request that already carries an ``earlytom`` field keeps its own values. See README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from earlytom_vllm.config import METHODS


def merged_body(extra: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra`` under ``given``: dict values are merged one level deep, ``given`` wins."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in extra.items()}
    for key, value in (given or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def install_extra_body(extra: Mapping[str, Any]) -> Callable[[], None]:
    """Make every ``client.chat.completions.create(...)`` (``OpenAI`` and ``AsyncOpenAI``) send
    ``extra`` in its body. Returns a function that undoes it."""
    from openai.resources.chat import AsyncCompletions, Completions

    saved: list[tuple[type, Any]] = []
    for cls in (Completions, AsyncCompletions):
        original = cls.create

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def create(self: Any, *args: Any, **kwargs: Any) -> Any:
                kwargs["extra_body"] = merged_body(extra, kwargs.get("extra_body"))
                return original(self, *args, **kwargs)  # a coroutine for AsyncCompletions

            return create

        saved.append((cls, original))
        cls.create = wrap(original)  # type: ignore[method-assign]

    def uninstall() -> None:
        for cls, original in saved:
            cls.create = original  # type: ignore[method-assign]

    return uninstall


def earlytom_field(*, ratio: float | None = None, method: str | None = None, full: bool = False,
                   frames_as_video: bool = True, extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The request's ``earlytom`` object for one evaluation run."""
    field: dict[str, Any] = {"frames_as_video": frames_as_video}
    if full:
        field["enabled"] = False
    if ratio is not None:
        field["retain_ratio"] = ratio
    if method is not None:
        field["method"] = method
    field.update(extra or {})
    return field


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy.lmms_eval_earlytom",
        description="lmms-eval with an 'earlytom' request field (frames-as-video, ratio, "
        "method) for earlytom-serve. Arguments after '--' go to lmms-eval.")
    p.add_argument("--ratio", type=float, help="retain_ratio of every request")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--full", action="store_true", help="no compression (enabled = false)")
    p.add_argument("--no-frames-as-video", dest="frames_as_video", action="store_false",
                   help="send the frames as separate images (not what the recipe wants)")
    p.add_argument("--earlytom", metavar="JSON", help="more EarlyTomConfig fields, e.g. "
                   "'{\"tau\": 0.6, \"prune_layers\": [8, 21, 23]}'")
    p.add_argument("--print-field", action="store_true", help="print the field and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, lmms = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    args = build_parser().parse_args(ours)
    field = earlytom_field(ratio=args.ratio, method=args.method, full=args.full,
                           frames_as_video=args.frames_as_video,
                           extra=json.loads(args.earlytom) if args.earlytom else None)
    if args.print_field:
        print(json.dumps({"earlytom": field}))
        return 0
    try:
        from lmms_eval.__main__ import cli_evaluate
    except ImportError as exc:
        print(f"lmms-eval is not importable ({exc}); install it: pip install lmms-eval",
              file=sys.stderr)
        return 2
    print(f"lmms_eval_earlytom: every request carries {json.dumps({'earlytom': field})}",
          file=sys.stderr)
    install_extra_body({"earlytom": field})
    sys.argv = ["lmms_eval", *lmms]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
