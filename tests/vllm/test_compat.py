"""The vLLM-version shims in earlytom_vllm.vllm.compat, without an engine: the post-import hook,
idempotence, and which runner decisions the pruning opt-in changes (the engine tests show the
hooks at work: stock EVS on the CPU engine and the Qwen2.5-VL positions)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from earlytom_vllm.vllm import compat


def test_after_import_runs_once_when_the_module_loads(tmp_path, monkeypatch):
    (tmp_path / "earlytom_fake_runner.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    compat.after_import("earlytom_fake_runner", lambda m: seen.append(m.VALUE))
    compat.after_import("earlytom_fake_runner", lambda m: seen.append(m.VALUE * 10))
    assert seen == []
    import earlytom_fake_runner

    assert seen == [1, 10]
    assert earlytom_fake_runner.__spec__.loader.__class__.__name__ != "_HookedLoader"
    compat.after_import("earlytom_fake_runner", lambda m: seen.append(m.VALUE * 100))
    assert seen == [1, 10, 100]  # already loaded: at once
    del sys.modules["earlytom_fake_runner"]
    import earlytom_fake_runner  # a second import runs no hook again

    assert seen == [1, 10, 100]


class _Runner:
    """The shape of a vLLM 0.32 runner as far as load_model's flag goes."""

    def __init__(self, model, mm_enabled: bool) -> None:
        self.model = model
        mm = SimpleNamespace(is_multimodal_pruning_enabled=lambda: mm_enabled)
        self.model_config = SimpleNamespace(multimodal_config=mm)
        self.is_multimodal_pruning_enabled = False

    def get_model(self):
        return self.model

    def load_model(self):  # vLLM 0.32's CPUModelRunner.load_model never sets the flag
        pass


def _model(*, prunes: bool, opts_in: bool):
    return SimpleNamespace(supports_multimodal_pruning=prunes,
                           **({compat.PRUNING_OPT_IN: True} if opts_in else {}))


@pytest.mark.parametrize(("prunes", "opts_in", "rate_set", "expected"), [
    (True, False, False, False),  # stock Qwen2.5-VL without --video-pruning-rate
    (True, False, True, True),  # stock Qwen2.5-VL with it: the CPU fix
    (True, True, False, True),  # the EarlyTom Qwen2.5-VL: always
    (False, False, True, False),  # LLaVA-OneVision: never
])
def test_cpu_runner_sets_the_flag_like_the_gpu_runner(prunes, opts_in, rate_set, expected):
    module = types.ModuleType("fake_cpu_runner")
    module.CPUModelRunner = type("CPUModelRunner", (_Runner,), {})
    compat._patch_cpu_runner(module)
    compat._patch_cpu_runner(module)  # idempotent: wrapped once
    load = module.CPUModelRunner.load_model
    assert getattr(load, compat._PATCHED) and not hasattr(load.__wrapped__, compat._PATCHED)
    runner = module.CPUModelRunner(_model(prunes=prunes, opts_in=opts_in), rate_set)
    runner.load_model()
    assert runner.is_multimodal_pruning_enabled is expected


@pytest.mark.parametrize(("factory_module", "pruner_module"), [
    (compat._V2_GPU.module, compat._V2_GPU.pruner),  # V2 runner: GPU, 0.34's x86 CPU
    (compat._V2_CPU.module, compat._V2_CPU.pruner),  # 0.34's standalone CPU runner
])
def test_model_state_builds_a_pruner_for_an_opted_in_model(monkeypatch, factory_module,
                                                           pruner_module):
    built = []
    fake = types.ModuleType(pruner_module)
    fake.MultiModalPruner = lambda *args: built.append(args) or "pruner"
    monkeypatch.setitem(sys.modules, pruner_module, fake)
    hook = next(h for hooks in compat.PRUNING_HOOKS.values() for h in hooks
                if h.module == factory_module)
    module = types.ModuleType("fake_default")
    module.maybe_create_mm_pruner = lambda model_config, model, rope, cache: None
    hook.patch(module)
    config = SimpleNamespace(multimodal_config=SimpleNamespace(
        is_multimodal_pruning_enabled=lambda: False), get_inputs_embeds_size=lambda: 128)
    make = module.maybe_create_mm_pruner
    assert make(config, _model(prunes=True, opts_in=False), "rope", "cache") is None
    assert make(config, _model(prunes=True, opts_in=True), None, "cache") is None  # no M-RoPE
    ours = _model(prunes=True, opts_in=True)
    assert make(config, ours, "rope", "cache") == "pruner"
    assert built == [(ours, "rope", "cache", 128)]


def test_each_release_patches_the_runners_it_has():
    """0.32/0.33 run the V1 runners (CPU and GPU) and may run V2; 0.34 has only V2 runners (the
    GPU model state, which x86 CPU's CPUModelRunner uses too, and the standalone CPU one). The
    targets' presence in each release's sources: tests/contract/test_vllm_contract.py."""
    modules = {minor: [h.module for h in hooks] for minor, hooks in compat.PRUNING_HOOKS.items()}
    v1 = ["vllm.v1.worker.cpu_model_runner", "vllm.v1.worker.gpu_model_runner"]
    assert modules[(0, 32)] == modules[(0, 33)] == [*v1, "vllm.v1.worker.gpu.model_states.default"]
    assert modules[(0, 34)] == ["vllm.v1.worker.gpu.model_states.default",
                                "vllm.v1.worker.cpu.model_states.default"]
    low, high = compat.SUPPORTED_VLLM
    assert sorted(compat.PRUNING_HOOKS) == [(0, m) for m in range(low[1], high[1])]
    assert all(h.mirrors for hooks in compat.PRUNING_HOOKS.values() for h in hooks)


@pytest.mark.parametrize(("version", "version_tuple", "supported"), [
    ("0.32.0", (0, 32, 0), True),
    ("0.33.0", (0, 33, 0), True),
    ("0.34.1.dev3+g1234", (0, 34, 1, "dev3", "g1234"), True),
    ("0.31.2", (0, 31, 2), False),
    ("0.35.0", (0, 35, 0), False),
    ("1.0.0", (1, 0, 0), False),
    ("dev", (0, 0, "dev"), False),  # vllm/version.py's fallback for a tree without _version.py
])
def test_unsupported_vllm_names_the_range(version, version_tuple, supported):
    why = compat.unsupported_vllm(version, version_tuple)
    assert (why is None) is supported
    if not supported:
        assert compat.SUPPORTED_RANGE in why and f"this is vLLM {version}" in why


def test_register_refuses_an_unsupported_vllm(monkeypatch):
    import vllm.version

    from earlytom_vllm.vllm import plugin

    monkeypatch.setattr(vllm.version, "__version__", "0.35.0")
    monkeypatch.setattr(vllm.version, "__version_tuple__", (0, 35, 0))
    with pytest.raises(RuntimeError, match=r"supports vLLM >=0\.32,<0\.35.*this is vLLM 0\.35\.0"):
        plugin.register()


def test_the_hooks_target_this_vllm_and_the_opt_in_name_is_the_models():
    from earlytom_vllm.vllm.qwen2_5_vl import EarlyTomQwen2_5_VLForConditionalGeneration as Qwen

    assert compat.require_supported_vllm() == (0, 32)  # vLLM 0.32.x here
    assert getattr(Qwen, compat.PRUNING_OPT_IN) is True
    assert Qwen.supports_multimodal_pruning


def test_siglip_embed_runs_the_input_norm_where_the_release_has_one():
    """vLLM 0.34's SiglipVisionTransformer runs ``input_norm(pixels, dtype)`` before the
    embeddings; 0.32/0.33's has none."""
    import torch

    pixels = torch.ones(2, 3, 4, 4)
    old = SimpleNamespace(embeddings=lambda p: p * 2)
    new = SimpleNamespace(embeddings=lambda p: p * 2, device=torch.device("cpu"),
                          dtype=torch.float64, input_norm=lambda p, dtype: (p + 1).to(dtype))
    assert torch.equal(compat.siglip_embed(old, pixels), pixels * 2)
    out = compat.siglip_embed(new, pixels)
    assert out.dtype == torch.float64 and torch.equal(out, (pixels.double() + 1) * 2)
