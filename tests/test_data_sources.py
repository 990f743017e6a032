"""The run config's data section: every key of every loader is in the shared defaults (no Hydra `+`), at the
loaders' own defaults, and each source gets only its keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pg_vla.data.lerobot.config import LeRobotConfig
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.rlds.config import RLDSConfig
from pg_vla.data.sources import FIXED, RLDS_FIXED, source_options

ROOT = Path(__file__).resolve().parents[1]


def _yaml_data() -> dict:
    cfg = OmegaConf.load(ROOT / "config" / "train" / "_train.yaml")
    cfg.data.data_path = None  # an environment interpolation
    return OmegaConf.to_container(cfg.data, resolve=True)


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def test_every_loader_key_is_in_the_yaml_at_its_default() -> None:
    data = _yaml_data()
    expected = {**_defaults(RLDSConfig), **_defaults(ParquetConfig), **_defaults(LeRobotConfig)}
    # set by the trainer from the model / nested dataclasses (+data.augment)
    for name in (*FIXED, *RLDS_FIXED, "augment"):
        expected.pop(name)
    assert set(data) == set(expected) | {"source", "val_paths", "val_path"}
    for key, default in expected.items():
        value = data[key]
        value = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
        assert value == default, key
    assert data["source"] == "rlds" and data["val_paths"] is None and data["val_path"] is None


def test_each_source_gets_its_own_keys() -> None:
    data = _yaml_data()
    rlds = source_options({**data, "data_path": "/d"})
    RLDSConfig(**rlds, batch_size=2)  # accepted as they are
    assert "paths" not in rlds and "gripper_dims" not in rlds and "source" not in rlds
    parquet = source_options({**data, "source": "parquet", "paths": ["/p"], "mix": "fractal", "read_threads": 1})
    assert "mix" not in parquet and "read_threads" not in parquet and parquet["paths"] == ["/p"]
    ParquetConfig(**{k: v for k, v in parquet.items() if k != "val_paths"})
    lerobot = source_options({**data, "source": "lerobot", "path": "/l", "mix": "fractal"})
    assert "mix" not in lerobot and "paths" not in lerobot and "columns" not in lerobot and lerobot["path"] == "/l"
    LeRobotConfig(**{k: v for k, v in lerobot.items() if k != "val_path"})
    assert "path" not in parquet and "cameras" not in parquet and "path" not in rlds


@pytest.mark.parametrize(
    "source,key,value,owner",
    [
        ("lerobot", "paths", ["/p"], "parquet"),
        ("parquet", "cameras", {"k": "wrist"}, "lerobot"),
        ("rlds", "path", "/l", "lerobot"),
    ],
)
def test_a_run_refuses_a_changed_key_of_another_file_source(source: str, key: str, value, owner: str) -> None:
    with pytest.raises(ValueError, match=rf"data\.{key} is an option of data.source={owner}"):
        source_options({**_yaml_data(), "source": source, "data_path": "/d", key: value})


@pytest.mark.parametrize("key,value", [("paths", ["/p"]), ("gripper_dims", 2), ("columns", {"state": "s"})])
def test_an_rlds_run_refuses_a_changed_parquet_key(key: str, value) -> None:
    with pytest.raises(ValueError, match=rf"data\.{key} is an option of data.source=parquet"):
        source_options({**_yaml_data(), "data_path": "/d", key: value})
