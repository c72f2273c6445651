"""Fuzzing the config loaders: whatever a YAML file holds, loading and validating it either succeeds or raises a
user error (one line, no traceback in the CLI) - never a TypeError, KeyError or AttributeError."""

from __future__ import annotations

import copy
import dataclasses
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit.errors import is_user_error
from probekit.experiment.spec import ExperimentConfig, load_experiment
from probekit.probes.spec import ProbeSpec, load_spec
from probekit.serde import from_dict, load_mapping
from probekit.training.config import FinetuneConfig, TrainConfig

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = ["1e-3", "all", "ntp", "p", "q", "value", "torch", "-1", "0"]
scalars = (st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=6) | st.sampled_from(WORDS))  # fmt: skip
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6
)

TRAIN = {"data": "d", "out": "o", "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64},
         "max_steps": 10, "warmup_steps": 1}  # fmt: skip
EXPERIMENT = {"name": "x", "datasets": [{"name": "s", "n_people": 40}],
              "models": [{"name": "m", "data": "s", "train": {"max_steps": 4, "warmup_steps": 1,
                                                              "model": {"n_heads": 2, "d_model": 32}}}],
              "probe": {"kinds": ["q"]}, "qa": {"models": ["m"], "finetune": {"max_steps": 2}}}  # fmt: skip


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _load(cls: type, data: Any) -> None:
    try:
        cfg = from_dict(cls, data)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except Exception as e:
        assert is_user_error(e), "".join(traceback.format_exception(e))
        assert "\n" not in str(e).strip() or cls is TrainConfig, str(e)


def _mutated(base: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


CASES = [(TrainConfig, TRAIN), (ProbeSpec, {"kinds": ["p"]}), (FinetuneConfig, {"max_steps": 2}),
         (ExperimentConfig, EXPERIMENT)]  # fmt: skip


@pytest.mark.parametrize("cls,base", CASES, ids=[c.__name__ for c, _ in CASES])
@SETTINGS
@given(data=st.data())
def test_random_settings_give_only_user_errors(cls: type, base: dict[str, Any], data: st.DataObject) -> None:
    keys = st.sampled_from([*_field_names(cls), "bogus"])
    # a whole random mapping, and a valid config with one setting replaced by a random value
    _load(cls, data.draw(st.dictionaries(keys, values, max_size=6) | values))
    _load(cls, _mutated(base, [data.draw(keys)], data.draw(values)))


NESTED = [["models", 0, "train", "model", "n_heads"], ["models", 0, "train", "betas"], ["models", 0, "data"],
          ["datasets", 0, "pool_limits"], ["datasets", 0, "augmentation"], ["probe", "l2_grid"],
          ["probe", "embed_probe"], ["qa", "finetune", "lr"], ["qa", "models"], ["figures_layer"]]  # fmt: skip


@SETTINGS
@given(path=st.sampled_from(NESTED), value=values)
def test_nested_experiment_settings_give_only_user_errors(path: list[Any], value: Any) -> None:
    _load(ExperimentConfig, _mutated(EXPERIMENT, path, value))


@SETTINGS
@given(text=st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_random_files_give_only_user_errors(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    root = tmp_path_factory.mktemp("fuzz", numbered=True)
    for name in ("cfg.yaml", "cfg.json"):
        path = Path(root) / name
        path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        for load in (
            lambda p: load_mapping(p),
            load_spec,
            load_experiment,
            lambda p: from_dict(TrainConfig, load_mapping(p)),
        ):
            try:
                load(path)
            except Exception as e:
                assert is_user_error(e), "".join(traceback.format_exception(e))
