"""Training data behind one call, whatever the storage: RLDS/TFDS, Parquet episodes or LeRobot folders.

The run config's `data` section picks the source with `source` (default `rlds`); the other keys are
the source's own config (`pg_vla.data.rlds.config.RLDSConfig`, `pg_vla.data.parquet.ParquetConfig` or
`pg_vla.data.lerobot.LeRobotConfig`) minus what the model fixes (batch size, image size, history and chunk
lengths, seed). All sources yield the same batch layout (see `pg_vla.data.parquet.loader`) and the same
statistics dict, so the trainer and evaluation never know which one they read.

    data: {source: rlds, data_path: ..., mix: bridge, ...}
    data: {source: parquet, paths: [train/*.parquet], val_paths: [val/*.parquet], dataset_name: my_robot, ...}
    data: {source: lerobot, path: [folder_a, folder_b], weights: [1, 2], cameras: {observation.images.top: primary}}

The shared training defaults (config/train/_train.yaml) list every key of every source at the
loaders' defaults (RLDS's `augment` aside), so any of them is overridden without Hydra's `+`. A
run reads one source; the keys only other sources read are dropped before the loader is built
(RLDS keys silently: run configs such as bridge.yaml set them; a Parquet or LeRobot key changed
from its default is refused by a run that does not read it).

Under torchrun, `dataset_dims` and `make_loader` let global rank 0 compute missing statistics while
the other ranks wait, which then read its file (once per job when the nodes share the statistics folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from functools import cache
from typing import Any

from torch.utils.data import DataLoader

from pg_vla.data.normalization import DatasetStatistics
from pg_vla.data.stream_checkpoint import StreamCheckpoints

SOURCES = ("rlds", "parquet", "lerobot")
# loader fields the model and the trainer fix (not data.* keys)
FIXED = ("batch_size", "image_size", "cond_steps", "horizon_steps", "seed", "train")
RLDS_FIXED = ("scene_state",)  # RLDS loader fields the trainer sets from the model (the scene-state target)
PARQUET_EXTRA = {"val_paths": None}  # data.* keys of the Parquet source that are not ParquetConfig fields
LEROBOT_EXTRA = {"val_path": None}  # data.* keys of the LeRobot source that are not LeRobotConfig fields


def _defaults(cls: type) -> dict[str, Any]:
    """field -> default (None for required fields, null in the YAML; factories called) of a config dataclass."""
    out = {}
    for f in fields(cls):
        if f.name not in FIXED + RLDS_FIXED:
            out[f.name] = (
                f.default_factory() if f.default_factory is not MISSING else None if f.default is MISSING else f.default
            )
    return out


@cache
def read_keys() -> dict[str, dict[str, Any]]:
    """source -> {data.* key: its default} of every key that source reads."""
    from pg_vla.data.lerobot.config import LeRobotConfig
    from pg_vla.data.parquet.config import ParquetConfig
    from pg_vla.data.rlds.config import RLDSConfig

    return {
        "rlds": _defaults(RLDSConfig),
        "parquet": {**_defaults(ParquetConfig), **PARQUET_EXTRA},
        "lerobot": {**_defaults(LeRobotConfig), **LEROBOT_EXTRA},
    }


@cache
def source_keys() -> dict[str, dict[str, Any]]:
    """source -> {data.* key: its default} of the keys only that source reads (the shared ones excluded)."""
    keys = read_keys()
    return {
        s: {k: v for k, v in own.items() if not any(k in keys[o] for o in SOURCES if o != s)} for s, own in keys.items()
    }


def source_of(data: Mapping[str, Any]) -> str:
    source = data.get("source", "rlds")
    if source not in SOURCES:
        raise ValueError(f"unknown data.source {source!r}; choose from {SOURCES}")
    return source


def source_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data section without `source` and without the keys only other sources read.

    RLDS keys are ignored by the other sources (run configs such as bridge.yaml set them); a Parquet or
    LeRobot key changed from its default is refused by a run that does not read it (it would otherwise
    be silently unused)."""
    source = source_of(data)
    own = read_keys()[source]
    for other in SOURCES:
        if other in (source, "rlds"):
            continue
        keys = {k: v for k, v in read_keys()[other].items() if k not in own}
        changed = sorted(k for k in keys if k in data and _plain(data[k]) != _plain(keys[k]))
        if changed:
            name = {"parquet": "Parquet", "lerobot": "LeRobot"}[other]
            raise ValueError(
                f"data.{changed[0]} is an option of data.source={other}, but this run reads "
                f"data.source={source} (changed {name} keys: {changed}); set data.source={other} "
                "or leave them at their defaults"
            )
    foreign = {k for other in SOURCES if other != source for k in read_keys()[other] if k not in own}
    return {k: v for k, v in data.items() if k != "source" and k not in foreign}


def _plain(value: Any) -> Any:
    """Hydra lists/tuples and dicts compared by value."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_paths(data: Mapping[str, Any]) -> None:
    """Clear errors for data locations that are unset or missing (before anything heavy starts)."""
    import os

    if source_of(data) == "parquet":
        if not data.get("paths"):
            raise ValueError("data.paths is not set: list the Parquet files, globs or folders to train on")
        return
    if source_of(data) == "lerobot":
        folders = data.get("path")
        if not folders:
            raise ValueError("data.path is not set: give the LeRobot dataset folder (or a list of folders)")
        for folder in [folders] if isinstance(folders, str) else folders:
            if not os.path.isdir(os.path.expanduser(folder)):
                raise FileNotFoundError(f"data.path {folder} does not exist")
        return
    if not data.get("data_path"):
        raise ValueError(
            "data.data_path is not set: set VLA_DATA_DIR to the folder holding the RLDS datasets "
            "or pass data.data_path=..."
        )
    if not os.path.isdir(data["data_path"]):
        raise FileNotFoundError(f"data.data_path {data['data_path']} does not exist")


def action_mask(data: Mapping[str, Any], dataset_name: str, action_dim: int) -> list[bool] | None:
    """The action-normalization mask the loaders apply to `dataset_name` under this data section (False: a
    dim left as it is, e.g. the gripper's 0..1; None: every dim normalized). Inference reads it from the
    checkpoint's inference record (`inference_record`), so it undoes exactly what training did."""
    from pg_vla.data.normalization import action_normalization_mask

    dataset_mask = None
    if source_of(data) == "rlds":
        from pg_vla.data.rlds.dataset_configs import DATASET_CONFIGS

        config = DATASET_CONFIGS.get(dataset_name)
        dataset_mask = config.action_normalization_mask if config is not None else None
    return action_normalization_mask(
        action_dim, bool(data.get("normalize_gripper", False)), int(data.get("gripper_dims", 1)), dataset_mask
    )


def inference_record(data: Mapping[str, Any], statistics: Mapping[str, DatasetStatistics], image_size: int):
    """The `pg_vla.checkpoint_folder.InferenceRecord` of a run reading this data section with these
    statistics: what `Policy` applies and inverts (camera roles, image size and resize mode,
    normalization mode, and per dataset the exact masks and dims the loaders used)."""
    from pg_vla.checkpoint_folder import DatasetTransforms, InferenceRecord

    source = source_of(data)
    conventions: dict[str, str] = {}
    if source == "rlds":
        from pg_vla.data.rlds.dataset_configs import DATASET_CONFIGS

        conventions = {name: c.gripper_convention for name, c in DATASET_CONFIGS.items()}
    datasets = {
        name: DatasetTransforms(
            proprio_dim=stats.proprio.dim,
            action_dim=stats.action.dim,
            action_mask=action_mask(data, name, stats.action.dim),
            gripper_convention=conventions.get(name),
        )
        for name, stats in statistics.items()
    }
    return InferenceRecord(
        source=source,
        camera_roles=tuple(data.get("camera_roles") or ("primary",)),
        image_size=int(image_size),
        image_resize=str(data.get("image_resize", "stretch")),
        normalization=str(data.get("normalization", "bounds")),
        datasets=datasets,
    )


def _parquet_config(data: Mapping[str, Any], **fixed: Any):
    from pg_vla.data.parquet import ParquetConfig

    options = {k: v for k, v in source_options(data).items() if k not in PARQUET_EXTRA}
    return ParquetConfig(**{**options, **fixed})


def _lerobot_config(data: Mapping[str, Any], **fixed: Any):
    from pg_vla.data.lerobot import LeRobotConfig

    options = {k: v for k, v in source_options(data).items() if k not in LEROBOT_EXTRA}
    return LeRobotConfig(**{**options, **fixed})


def dataset_dims(data: Mapping[str, Any]) -> tuple[int, int, tuple[str, ...]]:
    """(proprio_dim, action_dim, camera roles) the model must have for this data."""
    if source_of(data) == "lerobot":
        from pg_vla.data.lerobot.loader import open_folders

        cfg = _lerobot_config(data)
        folders = _rank_zero_first(lambda: open_folders(cfg))  # computes missing statistics once
        return (
            max(f.statistics.proprio.dim for f in folders),
            max(f.statistics.action.dim for f in folders),
            tuple(cfg.camera_roles),
        )
    if source_of(data) == "parquet":
        from pg_vla.data.parquet.loader import ParquetSource
        from pg_vla.data.parquet.statistics import load_or_compute_statistics

        cfg = _parquet_config(data)

        def statistics() -> DatasetStatistics:
            source = ParquetSource.open(cfg)
            return load_or_compute_statistics(cfg, source.files, source.indexes, source.plans)[0]

        stats = _rank_zero_first(statistics)
        return stats.proprio.dim, stats.action.dim, tuple(cfg.camera_roles)
    from pg_vla.data.rlds.dataset_configs import get_dataset_config, get_mix

    configs = [get_dataset_config(name) for name in get_mix(data.get("mix", "bridge"))]
    return (
        max(c.proprio_dim for c in configs),
        max(c.action_dim for c in configs),
        tuple(data.get("camera_roles", ("primary",))),
    )


def scene_state_dim(data: Mapping[str, Any]) -> int:
    """K of the privileged scene state every dataset of this data section holds (the scene-state target);
    ValueError where one has none: only simulated RLDS datasets (`DatasetConfig.scene_state_key`) do."""
    if source_of(data) != "rlds":
        raise ValueError(
            f"the scene-state target (model.scene_state_weight > 0) is read from RLDS datasets with a scene "
            f"state; data.source={source_of(data)} has none"
        )
    from pg_vla.data.rlds.dataset_configs import check_scene_state, get_dataset_config, get_mix

    return check_scene_state([get_dataset_config(name) for name in get_mix(data.get("mix", "bridge"))])


def make_loader(
    data: Mapping[str, Any],
    *,
    batch_size: int,
    image_size: int,
    cond_steps: int,
    horizon_steps: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    validation: bool = False,
    val_split: str = "val",
    train_statistics: Mapping[str, DatasetStatistics] | None = None,
    checkpoints: StreamCheckpoints | None = None,
    scene_state: bool = False,
) -> tuple[DataLoader, dict[str, DatasetStatistics]]:
    """A loader of this rank's batches and the statistics they are normalized with.

    validation=True: one ordered pass over the validation data (RLDS: `val_split` of the same datasets,
    normalized with the training split's statistics; Parquet: `data.val_paths`, normalized with
    `train_statistics`).

    A training loader writes its stream position and resumes from one as `checkpoints` says
    (`pg_vla.data.stream_checkpoint`), so a resumed run does not read the consumed data again.
    scene_state=True: batches also hold `scene_state` (B, K), the privileged scene state (`scene_state_dim`).

    Under torchrun every rank of the job must call it: global rank 0 builds its loader first (computing
    and caching statistics that are missing) while the others wait, then they build theirs from the
    cache (`pg_vla.training.distributed.rank_zero_first`), so the statistics are computed once per job.
    """
    return _rank_zero_first(
        lambda: _make_loader(
            data,
            batch_size=batch_size,
            image_size=image_size,
            cond_steps=cond_steps,
            horizon_steps=horizon_steps,
            seed=seed,
            rank=rank,
            world_size=world_size,
            validation=validation,
            val_split=val_split,
            train_statistics=train_statistics,
            checkpoints=checkpoints,
            scene_state=scene_state,
        )
    )


def _rank_zero_first(fn):
    from pg_vla.training.distributed import rank_zero_first

    return rank_zero_first(fn)


def _make_loader(
    data: Mapping[str, Any],
    *,
    batch_size: int,
    image_size: int,
    cond_steps: int,
    horizon_steps: int,
    seed: int,
    rank: int,
    world_size: int,
    validation: bool,
    val_split: str,
    train_statistics: Mapping[str, DatasetStatistics] | None,
    checkpoints: StreamCheckpoints | None,
    scene_state: bool = False,
) -> tuple[DataLoader, dict[str, DatasetStatistics]]:
    if scene_state:
        scene_state_dim(data)  # a clear error for data without one
    fixed = {
        "batch_size": batch_size,
        "image_size": image_size,
        "cond_steps": cond_steps,
        "horizon_steps": horizon_steps,
        "seed": seed,
    }
    if source_of(data) == "parquet":
        from pg_vla.data.parquet import make_parquet_loader

        if validation:
            if not data.get("val_paths"):
                raise ValueError("validation needs data.val_paths (Parquet files of the validation episodes)")
            stats = dict(train_statistics or {})
            name = data.get("dataset_name", "parquet")
            path = _statistics_file(stats.get(name)) if name in stats else None
            cfg = _parquet_config({**data, "paths": data["val_paths"]}, train=False, statistics_path=path, **fixed)
        else:
            cfg = _parquet_config(data, **fixed)
        return make_parquet_loader(cfg, rank, world_size, checkpoints=None if validation else checkpoints)
    if source_of(data) == "lerobot":
        from pg_vla.data.lerobot import make_lerobot_loader

        if validation:
            if not data.get("val_path"):
                raise ValueError("validation needs data.val_path (the LeRobot folder of the validation episodes)")
            stats = dict(train_statistics or {})
            if len(stats) != 1:
                raise ValueError(
                    f"validation normalizes with the training statistics of one folder; this run has "
                    f"{sorted(stats)}: validate a mix's folders one at a time"
                )
            path = _statistics_file(next(iter(stats.values())))
            cfg = _lerobot_config(
                {**data, "path": data["val_path"], "weights": None}, train=False, statistics_path=path, **fixed
            )
        else:
            cfg = _lerobot_config(data, **fixed)
        return make_lerobot_loader(cfg, rank, world_size, checkpoints=None if validation else checkpoints)
    from pg_vla.data.dataloader import make_rlds_loader, rlds_config

    options = source_options(data)
    if validation:
        options.update(split=val_split, train=False)
    return make_rlds_loader(
        rlds_config(**options, **fixed, scene_state=scene_state),
        rank,
        world_size,
        checkpoints=None if validation else checkpoints,
    )


def _statistics_file(stats: DatasetStatistics | str | None) -> str | None:
    """The statistics as a JSON path (the Parquet loader takes a path): in-memory ones go to a temporary file."""
    if stats is None or not isinstance(stats, DatasetStatistics):
        return None if stats is None else str(stats)
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    handle.close()
    return str(stats.save(handle.name))
