"""EarlyTomConfig: frozen, validated (ValueError naming the field), dict/JSON round trips."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from core_reference import FAST
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.config import EarlyTomConfig as ConfigFromModule


def test_package_exports_the_config_class():
    assert EarlyTomConfig is ConfigFromModule


def test_defaults_are_the_serving_default():
    c = EarlyTomConfig()
    # docs/method.md section 5: (10,21,23), tau=0.5, max_window=6, ema=0.9; released ratio 0.1
    assert c.prune_layers == (10, 21, 23)
    assert c.tau == 0.5
    assert c.max_window == 6
    assert c.ema == 0.9
    assert c.retain_ratio == 0.1
    assert c.enabled is True
    assert c.keep_last_middle is False  # released-code behaviour by default
    assert c.method == "earlytom"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retain_ratio", 0),
        ("retain_ratio", 0.0),
        ("retain_ratio", 1.5),
        ("retain_ratio", -0.1),
        ("retain_ratio", math.nan),
        ("retain_ratio", math.inf),
        ("retain_ratio", "abc"),
        ("retain_ratio", "0.1"),
        ("retain_ratio", True),
        ("retain_ratio", None),
        ("prune_layers", (21, 10)),
        ("prune_layers", [3, 1, 2]),
        ("prune_layers", (5, 5)),
        ("prune_layers", (10, 21, 21)),
        ("prune_layers", (-1, 3)),
        ("prune_layers", ()),
        ("prune_layers", []),
        ("prune_layers", (1.5, 3)),
        ("prune_layers", (1.0, 3)),
        ("prune_layers", (True, 3)),
        ("prune_layers", ("1", "3")),
        ("prune_layers", "10,21,23"),
        ("prune_layers", 10),
        ("prune_layers", None),
        ("tau", -0.01),
        ("tau", 1.01),
        ("tau", math.nan),
        ("tau", "0.5"),
        ("tau", None),
        ("max_window", 1),
        ("max_window", 0),
        ("max_window", -6),
        ("max_window", 6.0),
        ("max_window", 2.5),
        ("max_window", True),
        ("max_window", "6"),
        ("ema", 0),
        ("ema", 0.0),
        ("ema", -0.5),
        ("ema", 1.0000001),
        ("ema", 2),
        ("ema", math.nan),
        ("ema", "0.9"),
        ("method", "unknown"),
        ("method", ""),
        ("method", None),
        ("method", 1),
        ("enabled", "yes"),
        ("enabled", 1),
        ("enabled", None),
        ("keep_last_middle", "no"),
        ("keep_last_middle", 0),
        ("max_frames", 0),
        ("max_frames", 1.5),
        ("attention_chunk_frames", 0),
        ("attention_chunk_frames", "4"),
    ],
)
def test_bad_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EarlyTomConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        EarlyTomConfig.from_dict({field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("tau", 0.0), ("tau", 1.0), ("tau", 0), ("tau", 1), ("ema", 1.0), ("ema", 1e-9),
     ("retain_ratio", 1.0), ("retain_ratio", 1), ("retain_ratio", 1e-6), ("max_window", 2),
     ("prune_layers", (0,)), ("prune_layers", [0, 25]), ("method", "post_encoder"),
     ("method", "evs"), ("method", "none"), ("keep_last_middle", True), ("enabled", False)],
)
def test_boundary_values_are_accepted(field, value):
    c = EarlyTomConfig(**{field: value})
    got = getattr(c, field)
    if field == "prune_layers":
        assert got == tuple(value)
    else:
        assert got == value


def test_unknown_key_in_from_dict_names_the_key():
    with pytest.raises(ValueError, match="retain_ration"):
        EarlyTomConfig.from_dict({"retain_ration": 0.2})
    with pytest.raises(ValueError, match="bogus"):
        EarlyTomConfig.from_dict({"tau": 0.5, "bogus": 1})


def test_from_dict_none_and_empty_give_defaults():
    assert EarlyTomConfig.from_dict(None) == EarlyTomConfig()
    assert EarlyTomConfig.from_dict({}) == EarlyTomConfig()


def test_from_dict_partial_overrides_keep_other_defaults():
    c = EarlyTomConfig.from_dict({"tau": 0.3, "prune_layers": [4, 14, 24]})
    assert c.tau == 0.3
    assert c.prune_layers == (4, 14, 24)
    assert isinstance(c.prune_layers, tuple)
    assert c.max_window == EarlyTomConfig().max_window


def test_config_is_frozen():
    c = EarlyTomConfig()
    for field, value in [("tau", 0.2), ("retain_ratio", 0.5), ("prune_layers", (1,)),
                         ("method", "evs"), ("enabled", False)]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(c, field, value)
    assert c == EarlyTomConfig()


def test_config_is_hashable_and_prune_layers_is_a_tuple():
    c = EarlyTomConfig(prune_layers=[1, 2, 3])
    assert c.prune_layers == (1, 2, 3)
    assert hash(c) == hash(EarlyTomConfig(prune_layers=(1, 2, 3)))


valid_configs = st.builds(
    EarlyTomConfig,
    retain_ratio=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    prune_layers=st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
    tau=st.floats(min_value=0.0, max_value=1.0),
    max_window=st.integers(2, 64),
    ema=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    enabled=st.booleans(),
    keep_last_middle=st.booleans(),
    method=st.sampled_from(["earlytom", "post_encoder", "evs", "none"]),
    max_frames=st.integers(1, 1024),
    attention_chunk_frames=st.integers(1, 64),
)


@FAST
@given(valid_configs)
def test_to_dict_from_dict_round_trip(cfg):
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(EarlyTomConfig)}
    assert EarlyTomConfig.from_dict(d) == cfg


@FAST
@given(valid_configs)
def test_json_round_trip(cfg):
    text = json.dumps(cfg.to_dict())  # must be JSON-serialisable as is
    back = EarlyTomConfig.from_dict(json.loads(text))
    assert back == cfg
    assert back.prune_layers == cfg.prune_layers
    assert isinstance(back.prune_layers, tuple)


def test_compresses_flag():
    assert EarlyTomConfig().compresses
    assert not EarlyTomConfig(retain_ratio=1.0).compresses
    assert not EarlyTomConfig(enabled=False).compresses
    assert not EarlyTomConfig(method="none").compresses
    assert EarlyTomConfig(method="evs", retain_ratio=0.5).compresses
