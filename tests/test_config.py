"""Strict configs: unknown keys and wrong types raise; dotted overrides parse YAML values (1e-4 included)."""
from dataclasses import dataclass, field

import pytest

from retrieval.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_from_dict_fills_nested_and_coerces():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"lr": 1, "betas": [0.8, 0.9]}})
    assert cfg.steps == 3 and cfg.inner.lr == 1.0 and cfg.inner.betas == (0.8, 0.9)
    assert to_dict(cfg)["inner"]["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("data,msg", [
    ({"stepz": 1}, r"unknown key\(s\) \['stepz'\]"),
    ({"steps": "10"}, "steps: expected an integer"),
    ({"steps": True}, "steps: expected an integer"),
    ({"inner": {"lr": "fast"}}, "inner.lr: expected a number"),
    ({"inner": 3}, "expected a mapping for Inner"),
])
def test_bad_values_raise_with_the_key(data, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, data)


def test_dotted_overrides():
    data = apply_overrides({"inner": {"lr": 0.1}}, ["inner.lr=1e-4", "steps=5", "path=null", "name=run 1"])
    assert data == {"inner": {"lr": 1e-4}, "steps": 5, "path": None, "name": "run 1"}
    assert from_dict(Outer, data).inner.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["steps"])


def test_load_yaml(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("inner: {lr: 4e-4}\n")
    assert load_yaml(good) == {"inner": {"lr": 4e-4}}
    bad = tmp_path / "b.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(bad)
    with pytest.raises(FileNotFoundError):
        load_yaml(tmp_path / "missing.yaml")
