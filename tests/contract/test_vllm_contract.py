"""The project against the sources of every supported vLLM, statically (scripts/vllm_contract.py):
the installed 0.32 and the 0.33/0.34 sdists (fetched once by scripts/vllm_sources.py). What the
project uses is scanned from its own sources; the breakage tests show the check fails."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import vllm_contract
from vllm_contract import Project, Tree, check, tree_version

from earlytom_vllm.vllm.compat import CLI_ARGS_MODULE, PRUNING_HOOKS, SUPPORTED_VLLM


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_the_pinned_releases_are_the_supported_range_above_the_installed_one(release_trees,
                                                                             installed_tree):
    installed = tree_version(installed_tree)
    assert installed == SUPPORTED_VLLM[0]  # the engine here is the range's first release
    low, high = SUPPORTED_VLLM
    checked = sorted([installed, *(_minor(v) for v in release_trees)])
    assert checked == [(0, m) for m in range(low[1], high[1])]


@pytest.mark.parametrize("version", ["installed", "0.33.0", "0.34.0"])
def test_the_contract_holds(version, release_trees, installed_tree):
    """Every vLLM name imported, subclassed, overridden, called or patched resolves, with a
    signature the project's use binds to; and this release's runner-hook targets exist."""
    installed = tree_version(installed_tree)
    trees = {"installed": (installed_tree, PRUNING_HOOKS[installed])}
    if version != "installed":
        trees[version] = (release_trees[version], PRUNING_HOOKS[_minor(version)])
    assert check(trees) == []


def test_the_scan_finds_what_the_plugin_uses(installed_tree):
    """Derived from the sources, not a list: the families' vLLM bases, their overrides (also
    through the shared mixins), and calls into vLLM (including method calls on its registries)."""
    project = Project()
    uses = project.uses()
    bases = {u.ref[1] for u in uses if u.kind == "base"}
    assert {"LlavaOnevisionForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
            "LlavaOnevisionMultiModalProcessor", "VLLMValidationError"} <= bases
    calls = {".".join(u.ref[1:]) for u in uses if u.kind == "call"}
    assert {"MULTIMODAL_REGISTRY.register_processor", "ModelRegistry.register_model",
            "evs.recompute_mrope_positions", "MultiModalFieldConfig.batched"} <= calls
    reached = vllm_contract.members(project, [Tree(installed_tree, "installed")])
    overrides = {(m.cls[1], m.name) for m in reached if m.kind == "override"}
    assert ("EarlyTomQwen2_5_VLForConditionalGeneration", "recompute_mrope_positions") in overrides
    # a mixin's method counts in every family it is mixed into
    assert {("EarlyTomLlavaOnevisionMultiModalProcessor", "_apply_hf_processor_main"),
            ("EarlyTomQwen2_5_VLMultiModalProcessor", "_apply_hf_processor_main")} <= overrides
    self_calls = {m.name for m in reached if m.kind == "self-call"}
    assert "_get_max_video_frames" in self_calls


def test_new_code_is_covered_without_a_list(tmp_path, installed_tree):
    """A new module of the project is scanned as it is: its bad override and call are reported."""
    (tmp_path / "earlytom_vllm").mkdir()
    (tmp_path / "earlytom_vllm" / "newfamily.py").write_text(textwrap.dedent("""\
        from vllm.model_executor.models.llava_onevision import LlavaOnevisionProcessingInfo
        from vllm.utils.torch_utils import async_tensor_h2d
        from vllm.model_executor.models.no_such_model import Missing


        class Info(LlavaOnevisionProcessingInfo):
            def get_num_frames_with_most_features(self, seq_len, mm_counts, extra):
                return async_tensor_h2d([1], dtype=None, device=None, colour="red")
        """))
    problems = check({"installed": (installed_tree, ())}, project_root=tmp_path)
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "no_such_model:Missing not found" in text
    assert "requires ['extra'], which upstream (seq_len, mm_counts) never passes" in text
    assert "no parameter 'colour'" in text


def _copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc",
                                                             "*.json", "*.cu*", "*.h"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def test_a_broken_release_fails_the_check(tmp_path, installed_tree):
    """A copy of the installed sources with what a release could change: an overridden method
    renamed, a parameter added to another, an imported function removed, a hooked runner module
    gone, a hooked function no longer called.
    Each is reported against the copy; the original still passes."""
    broken = _copy_tree(installed_tree, tmp_path / "vllm")
    models = broken / "model_executor" / "models"
    _edit(models / "llava_onevision.py", "def get_num_frames_with_most_features(",
          "def get_num_frames_with_most_features_renamed(")
    _edit(models / "qwen2_5_vl.py", "        num_computed_tokens: int,\n    ) -> tuple[",
          "        num_computed_tokens: int,\n        chunk: int,\n    ) -> tuple[")
    _edit(broken / "utils" / "torch_utils.py", "def async_tensor_h2d(", "def async_tensor_to(")
    (broken / "v1" / "worker" / "cpu_model_runner.py").unlink()
    # the V2 model state builds its pruner some other way: the patched global is never called
    _edit(broken / "v1" / "worker" / "gpu" / "model_states" / "default.py",
          "self.mm_pruner = maybe_create_mm_pruner(", "self.mm_pruner = (lambda *a: None)(")
    hooks = PRUNING_HOOKS[tree_version(installed_tree)]
    problems = check({"installed": (installed_tree, hooks), "broken": (broken, hooks)})
    assert all(p.startswith("broken: ") for p in problems), problems
    text = "\n".join(problems)
    assert ("EarlyTomLlavaOnevisionProcessingInfo.get_num_frames_with_most_features overrides "
            "nothing") in text
    assert ("EarlyTomQwen2_5_VLForConditionalGeneration.recompute_mrope_positions vs "
            "vllm.model_executor.models.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration."
            "recompute_mrope_positions: upstream parameter 'chunk' has no place") in text
    assert "vllm.utils.torch_utils:async_tensor_h2d not found (import" in text
    assert "hook vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model: module not found" \
        in text
    assert ("hook vllm.v1.worker.gpu.model_states.default:maybe_create_mm_pruner: "
            "vllm.v1.worker.gpu.model_states.default never calls maybe_create_mm_pruner") in text
    assert len(problems) == 6, text  # the import and its call site both report the removal


def test_each_release_has_make_arg_parser_where_compat_looks(release_trees, installed_tree):
    """compat.make_arg_parser's module per release (it moved in 0.33), checked in each tree."""
    trees = {tree_version(installed_tree): Tree(installed_tree, "installed"),
             **{_minor(v): Tree(p, v) for v, p in release_trees.items()}}
    assert sorted(trees) == sorted(CLI_ARGS_MODULE)
    for minor, tree in trees.items():
        found = tree.resolve(CLI_ARGS_MODULE[minor], "make_arg_parser")
        assert found is not None and found.kind == "function", (minor, CLI_ARGS_MODULE[minor])
        assert vllm_contract.Sig.of(found.node, bound=False).positional == ("parser",)
    assert CLI_ARGS_MODULE[(0, 32)] != CLI_ARGS_MODULE[(0, 33)]


def test_each_release_has_the_runners_its_hooks_patch(release_trees, installed_tree):
    """Why the hooks differ: 0.34 deleted the V1 runners and added the standalone CPU runner's
    own model state; 0.32/0.33 have the V1 runners and no such model state."""
    trees = {"0.32": Tree(installed_tree, "0.32"),
             **{v: Tree(p, v) for v, p in release_trees.items()}}
    v1 = ("vllm.v1.worker.cpu_model_runner", "vllm.v1.worker.gpu_model_runner")
    cpu_v2 = "vllm.v1.worker.cpu.model_states.default"
    for version in ("0.32", "0.33.0"):
        assert all(trees[version].is_module(m) for m in v1)
        assert not trees[version].is_module(cpu_v2)
    assert not any(trees["0.34.0"].is_module(m) for m in v1)
    assert trees["0.34.0"].is_module(cpu_v2)
    # 0.34's two CPU runners: x86's CPUModelRunner is the V2 GPUModelRunner, whose model state
    # comes from gpu/model_states (hook _V2_GPU); the standalone one builds its own (_V2_CPU)
    t34 = trees["0.34.0"]
    cpu = t34.resolve("vllm.v1.worker.cpu.model_runner", "CPUModelRunner")
    assert [(b.module, b.node.name) for b in t34.bases(cpu)] == [
        ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner")]
    for runner, states in (("gpu.model_runner", "gpu.model_states"),
                           ("cpu.standalone_model_runner", "cpu.model_states")):
        init = t34.resolve(f"vllm.v1.worker.{runner}", "init_model_state")
        assert init.kind == "function" and init.module == f"vllm.v1.worker.{states}"
        default = t34.resolve(f"vllm.v1.worker.{states}.default", "DefaultModelState")
        assert default is not None and default.kind == "class"


def test_the_support_matrix_covers_every_supported_release():
    """docs/vllm-versions.md: one matrix column per supported release, each release's hooks named
    in it, and the upstream bug the Qwen adapter works around."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "vllm-versions.md").read_text()
    low, high = SUPPORTED_VLLM
    header = "| | " + " | ".join(f"vLLM 0.{m}" for m in range(low[1], high[1])) + " |"
    assert header in text
    for hooks in PRUNING_HOOKS.values():
        for hook in hooks:
            assert hook.target.rsplit(".", 1)[-1] in text
    assert "#48833" in text and "cannot see" in text
