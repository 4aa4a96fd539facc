"""The family registry: every family fact the project states is pinned to what vLLM computes
(counts, encoder depth, EVS's count) and the registry answers every lookup by data alone."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from earlytom_vllm import checkpoints as ck
from earlytom_vllm import families
from earlytom_vllm.config import EarlyTomConfig, EarlyTomConfigError
from earlytom_vllm.families.base import (
    evs_kept,
    layer_index,
    rate_for_count,
    vidcom2_kept,
    vllm_kept,
)

FAMILIES = families.all_families()


# --------------------------------------------------------------------------------------------------
# The registry


def test_every_architecture_is_registered_once_and_names_its_adapter_class():
    archs = families.architectures()
    assert len(archs) == sum(len(f.architectures) for f in FAMILIES)
    for family in FAMILIES:
        for arch, base in family.architectures.items():
            assert archs[arch] == f"{family.adapter}:{arch}"
            assert families.by_architecture(arch) is family
            assert families.by_architecture(base) is family
            assert families.architecture_for_config({"architectures": [base]}) == arch
            assert families.architecture_for_config({"architectures": [arch]}) == arch


def test_model_types_are_unique_and_pick_their_family():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))
    for family in FAMILIES:
        for model_type in family.model_types:
            assert families.family_for_config({"model_type": model_type}) is family


def test_an_unknown_checkpoint_gets_the_default_family():
    assert families.family_for_config({"model_type": "bert"}) is None
    default = families.get(families.DEFAULT_FAMILY)
    assert families.architecture_for_config({}) == default.architecture
    assert families.architecture_for_config({"architectures": ["BertModel"]}) == (
        default.architecture)
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        families.get("nope")


def test_the_adapter_classes_exist_under_the_registered_names():
    import importlib

    for family in FAMILIES:
        module = importlib.import_module(family.adapter)
        for arch, base in family.architectures.items():
            cls = getattr(module, arch)
            assert base in {c.__name__ for c in cls.__mro__}, (arch, base)


# --------------------------------------------------------------------------------------------------
# Facts pinned to vLLM


def test_layer_index_mirrors_vllm():
    from vllm.model_executor.models.utils import get_layer_index

    for index, layers in itertools.product(range(-5, 30), (26, 27, 32)):
        assert layer_index(index, layers) == get_layer_index(index, layers)


@pytest.mark.parametrize("feature_layer", [-1, -2, 3, 26])
def test_llava_encoder_depth_mirrors_vllm(feature_layer):
    from vllm.model_executor.models.llava import _get_num_hidden_layers

    config = SimpleNamespace(vision_feature_layer=feature_layer,
                             vision_config=SimpleNamespace(num_hidden_layers=27))
    assert families.get("llava_onevision").encoder_depth(config) == (
        _get_num_hidden_layers(config))


def test_llava_encoder_depth_refuses_several_feature_layers():
    config = {"vision_feature_layer": [-2, -5], "vision_config": {"num_hidden_layers": 27}}
    with pytest.raises(ValueError, match="single vision_feature_layer"):
        families.get("llava_onevision").encoder_depth(config)


def test_evs_count_mirrors_vllm():
    from vllm.multimodal.video_prune.evs import compute_retained_tokens_count

    for per_frame, frames, q in itertools.product((49, 196, 256), (1, 4, 16, 32),
                                                  (0.0, 0.1, 0.5, 0.85, 0.9, 0.999)):
        assert evs_kept(per_frame * frames, per_frame, q) == (
            compute_retained_tokens_count(per_frame, frames, q))


def test_evs_rate_for_a_count_gives_that_count():
    qwen = families.get("qwen2_5_vl")
    for units, per_frame, ratio in itertools.product((4, 16), (64, 256), (0.1, 0.15, 0.25)):
        count = qwen.rows(units, EarlyTomConfig(retain_ratio=ratio), per_frame)
        q = qwen.vllm_pruning_rate(units, per_frame, count)
        # EVS never keeps less than one frame's tokens (its floor); above it, the same count
        assert evs_kept(units * per_frame, per_frame, q) == max(count, per_frame), (
            units, per_frame, ratio)
    assert rate_for_count("evs", 10, 10, 100) == 0.0
    with pytest.raises(ValueError, match="no evs video pruning for LLaVA-OneVision"):
        families.get("llava_onevision").vllm_pruning_rate(4, 196, 100)
    with pytest.raises(ValueError, match=r"no vidcom2 video pruning for Qwen2\.5-VL"):
        qwen.vllm_pruning_rate(4, 196, 100, "vidcom2")


def test_vidcom2_count_mirrors_vllm_and_its_rate_gives_the_count():
    from vllm.multimodal.video_prune.vidcom2 import compute_retained_tokens_count

    for per_frame, frames, q in itertools.product((49, 196, 256), (1, 4, 16, 32),
                                                  (0.0, 0.1, 0.5, 0.85, 0.9, 0.999)):
        assert vidcom2_kept(per_frame * frames, frames, q) == (
            compute_retained_tokens_count(per_frame, frames, q))
    qwen3 = families.get("qwen3_vl")
    for units, per_frame, ratio in itertools.product((4, 16), (49, 196), (0.1, 0.15, 0.25)):
        count = qwen3.rows(units, EarlyTomConfig(retain_ratio=ratio), per_frame)
        for method in qwen3.vllm_pruning:
            q = qwen3.vllm_pruning_rate(units, per_frame, count, method)
            floor = per_frame if method == "evs" else units
            assert vllm_kept(method, units, per_frame, q) == max(count, floor), (method, count)


def test_vllm_pruning_methods_are_the_vllm_classes_own():
    """A family's vLLM pruning peers are what its vLLM classes support (none where a class does
    not support multimodal pruning at all)."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning
    from vllm.model_executor.models.registry import ModelRegistry

    for family in FAMILIES:
        for base in family.architectures.values():
            model_cls = ModelRegistry._try_load_model_cls(base)
            assert model_cls is not None, base
            expected = (tuple(model_cls.supported_video_pruning_methods)
                        if supports_multimodal_pruning(model_cls) else ())
            assert family.vllm_pruning == expected, (family.name, base, expected)


@pytest.fixture(scope="module")
def stock_infos():
    """vLLM's own processing info of each family's tiny checkpoint (no engine)."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    infos = {}
    for family in FAMILIES:
        path = str(ck.ensure(family))
        config = ModelConfig(model=path, tokenizer=path, dtype="float32", enforce_eager=True)
        infos[family.name] = MULTIMODAL_REGISTRY.create_processor(config).info
    return infos


def test_stock_counts_equal_the_family_count_at_full_tokens(stock_infos):
    """At full tokens the family's rows are vLLM's own placeholder count, frame for frame."""
    full = EarlyTomConfig(enabled=False)
    for name, info in stock_infos.items():
        family = families.get(name)
        size = family.benchmark.video_size
        hf_config = info.get_hf_config()
        grid = family.patch_grid(hf_config, size, size)
        per_frame = family.frame_tokens(hf_config, grid)
        for frames in (2, 8, 16):
            kwargs = {"image_width": size, "image_height": size, "num_frames": frames}
            if family.vllm_pruning:  # the Qwen infos also take the image processor
                kwargs.update(image_processor=info.get_image_processor(), mm_kwargs={})
            assert info.get_num_video_tokens(**kwargs) == family.rows(
                family.units(frames), full, per_frame), (name, frames)


def test_server_defaults_are_checked_against_the_model(stock_infos):
    for name, info in stock_infos.items():
        family = families.get(name)
        hf_config = info.get_hf_config()
        assert family.server_defaults(hf_config, {}) == family.defaults
        depth = family.encoder_depth(hf_config)
        with pytest.raises(EarlyTomConfigError) as err:
            family.server_defaults(hf_config, {"prune_layers": [1, depth]})
        assert err.value.field == "hf_overrides.earlytom.prune_layers"
        assert f"below the vision encoder depth {depth}" in str(err.value)
    qwen = families.get("qwen2_5_vl")
    with pytest.raises(EarlyTomConfigError, match="full-attention block"):
        qwen.server_defaults(stock_infos["qwen2_5_vl"].get_hf_config(), {"prune_layers": [7, 8]})


def test_qwen_grids_must_merge():
    qwen = families.get("qwen2_5_vl")
    config = {"vision_config": {"spatial_merge_size": 2, "patch_size": 14}}
    assert qwen.frame_tokens(config, (32, 32)) == 256
    assert qwen.patch_grid(config, 448, 224) == (32, 16)
    with pytest.raises(ValueError, match="multiples of 2"):
        qwen.frame_tokens(config, (31, 32))
    with pytest.raises(ValueError, match="multiples of 28 px"):
        qwen.patch_grid(config, 450, 448)
