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


def test_v2_model_state_builds_a_pruner_for_an_opted_in_model(monkeypatch):
    built = []
    fake = types.ModuleType("vllm.v1.worker.gpu.model_states.mm_pruning")
    fake.MultiModalPruner = lambda *args: built.append(args) or "pruner"
    monkeypatch.setitem(sys.modules, "vllm.v1.worker.gpu.model_states.mm_pruning", fake)
    module = types.ModuleType("fake_default")
    module.maybe_create_mm_pruner = lambda model_config, model, rope, cache: None
    compat._patch_v2_model_state(module)
    config = SimpleNamespace(multimodal_config=SimpleNamespace(
        is_multimodal_pruning_enabled=lambda: False), get_inputs_embeds_size=lambda: 128)
    make = module.maybe_create_mm_pruner
    assert make(config, _model(prunes=True, opts_in=False), "rope", "cache") is None
    assert make(config, _model(prunes=True, opts_in=True), None, "cache") is None  # no M-RoPE
    ours = _model(prunes=True, opts_in=True)
    assert make(config, ours, "rope", "cache") == "pruner"
    assert built == [(ours, "rope", "cache", 128)]


def test_the_hooks_target_this_vllm_and_the_opt_in_name_is_the_models():
    from earlytom_vllm.vllm.qwen2_5_vl import EarlyTomQwen2_5_VLForConditionalGeneration as Qwen

    assert compat.pruning_hooks_apply()  # vLLM 0.32.x here
    assert getattr(Qwen, compat.PRUNING_OPT_IN) is True
    assert Qwen.supports_multimodal_pruning
