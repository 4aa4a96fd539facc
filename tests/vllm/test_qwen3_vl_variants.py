"""The other architectures on Qwen3-VL's encoder, end to end on the vLLM 0.32 CPU engine: Qwen3-VL-MoE
(fused MoE), Qwen3.5 and Qwen3.5-MoE (hybrid linear-attention LLM, bfloat16 as the CPU kernel
requires). Each tiny checkpoint (recipes in earlytom_vllm/checkpoints/qwen3_vl.py) is served by
its EarlyTom architecture in its own engine process; the three run in parallel. Also Qwen3-VL
with tensor parallelism (2 ranks on the CPU engine) against one rank."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from earlytom_vllm.families import architecture_for_config
from tests.vllm.test_qwen3_vl import (
    STATIC,
    VIDEO,
    A,
    count,
    expansion,
    ids_of,
    overrides,
    prompt,
    stock_positions,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

BASES = ("Qwen3VLMoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration",
         "Qwen3_5MoeForConditionalGeneration")


def _build(base: str, path):
    """The shared builder's steps with this variant's recipe."""
    from earlytom_vllm.checkpoints.common import BUILD_LOCK, make_model, make_tokenizer, save
    from earlytom_vllm.checkpoints.qwen3_vl import VARIANTS

    rec = VARIANTS[base]
    sizes = dict(rec.defaults)
    rec.validate(sizes)
    with BUILD_LOCK:
        tokenizer = make_tokenizer(rec.special_tokens, rec.chat_template)
        model = make_model(rec.hf_config(tokenizer, sizes), sizes["seed"], rec.model_class)
        save(path, model, rec.hf_processor(tokenizer), tokenizer, sizes["dtype"])
        rec.after_save(path)
    return path, sizes["dtype"]


@pytest.fixture(scope="module")
def variants(run_engine, tmp_path_factory):
    def job(base: str):
        path, dtype = _build(base, tmp_path_factory.mktemp(base))
        arch = architecture_for_config({"architectures": [base]})
        reqs = [{"prompt": prompt(VIDEO), "videos": [A],
                 "mm_processor_kwargs": {"earlytom": {"retain_ratio": r}}} for r in (0.25, 1.0)]
        return arch, path, run_engine(reqs, model=path, trace=True, max_model_len=4096,
                                hf_overrides={"architectures": [arch],
                                              "earlytom": {"trace": True}},
                                engine_kwargs={"dtype": dtype})

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(BASES, pool.map(job, BASES), strict=True))


@pytest.mark.parametrize("base", BASES)
def test_the_architecture_serves_a_compressed_video(variants, base):
    arch, path, (compressed, full) = variants[base]
    assert arch == "EarlyTom" + base
    rows = count(4, 16, 0.25)
    assert full["prompt_len"] - compressed["prompt_len"] == 4 * 16 - rows
    (trace,) = compressed["traces"]
    assert trace["rows"] == rows and len(trace["frames_per_layer"]) == 27
    assert len(compressed["logprobs"]) >= 1
    # the positions the LLM used are the stock positions of the same tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    ids = tok.encode(prompt(VIDEO))
    at = ids.index(ids_of(tok).video_token_id)
    ids[at:at + 1] = expansion(tok, [rows // 4] * 4)  # vLLM's layout at this count
    assert len(ids) == compressed["prompt_len"]
    (positions,) = compressed["positions"]
    assert positions == stock_positions(tok, ids, [(4, 4, 4, trace["positions"])])


@pytest.fixture(scope="module")
def tensor_parallel(run_engine):
    """The same request (a static video: Stage I merges) on 2 ranks and on 1."""
    from earlytom_vllm.checkpoints import ensure

    path = ensure("qwen3_vl")
    reqs = [{"prompt": prompt(VIDEO), "videos": [STATIC],
             "mm_processor_kwargs": {"earlytom": {"retain_ratio": 0.25}}}]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return tuple(pool.map(lambda tp: run_engine(reqs, model=path, hf_overrides=overrides(),
                                                    tensor_parallel_size=tp, trace=True,
                                                    max_model_len=4096)[0], (2, 1)))


def test_tensor_parallel_ranks_keep_the_same_tokens_as_one_rank(tensor_parallel):
    tp2, tp1 = tensor_parallel
    assert tp2["prompt_len"] == tp1["prompt_len"]
    rank0, rank1 = tp2["traces"]
    (one,) = tp1["traces"]
    assert rank0["index"] == rank1["index"] == one["index"]
    assert rank0["frames_per_layer"] == one["frames_per_layer"]
    assert one["frames_per_layer"][-1] < 8  # slices merged
    assert tp2["positions"][0] == tp2["positions"][1] == tp1["positions"][0]
    assert max(tp2["logprobs"], key=tp2["logprobs"].get) == max(tp1["logprobs"],
                                                                key=tp1["logprobs"].get)
    for k in tp2["logprobs"].keys() & tp1["logprobs"].keys():
        assert tp2["logprobs"][k] == pytest.approx(tp1["logprobs"][k], abs=1e-4)
