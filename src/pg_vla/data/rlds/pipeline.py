"""The RLDS input pipeline on tf.data: read, standardize, normalize, window, mix, shuffle, decode, batch.

    per dataset   read episodes (this rank's slice of the split) -> trajectories (steps batched)
                  -> standardize -> refuse (or, with skip_non_finite, drop) NaN/inf -> drop unlabeled
                  -> normalize -> windows/chunks -> frames
    mix           sample frames from the datasets by weight (each dataset repeated when training)
    then          shuffle buffer of encoded frames -> decode + resize (+ augment) -> batch -> prefetch

With `cond_steps` C > 1 each frame carries its C encoded images per camera through the shuffle
buffer (C times the encoded bytes per frame) and decodes all C x N views after shuffling.

Sharding across torchrun ranks splits each dataset's episodes evenly (`tfds.even_splits`), so ranks
read disjoint episodes whose union is the split. Statistics are computed once per dataset config
(see `statistics.py`). Everything here imports tensorflow: torch code reaches it only through
`pg_vla.data.dataloader`, which runs it in a separate process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pg_vla.data.normalization import DatasetStatistics, Normalizer, action_normalization_mask
from pg_vla.data.rlds.config import NO_AUGMENT, RLDSConfig
from pg_vla.data.rlds.dataset_configs import (
    DatasetConfig,
    check_scene_state,
    dataset_folder,
    get_dataset_config,
    get_mix,
)
from pg_vla.data.rlds.frames import augment, decode_and_resize
from pg_vla.data.rlds.standardize import standardize
from pg_vla.data.rlds.trajectory import add_windows, normalize_tf

MAX_EPISODE_STEPS = 1 << 14
NON_FINITE_MODES = ("raise", "skip", "keep")
NAMED_SKIPS = 10  # skipped episodes named one by one in warnings and in the statistics JSON
logger = logging.getLogger(__name__)

tf.config.set_visible_devices([], "GPU")  # tf.data runs on the CPU; the GPUs belong to torch


def open_builder(
    data_path: str | Path, cfg: DatasetConfig, camera_roles: Sequence[str] | None = None
) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `<data_path>/<name>/<version>`, checked against the dataset config: the image
    feature of every camera role in `camera_roles` (None: every role the config names) must exist."""
    folder = dataset_folder(data_path, cfg)
    if not Path(data_path).is_dir():
        raise FileNotFoundError(f"data path {data_path} does not exist")
    if not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"no RLDS dataset at {folder} (expected <data_path>/{cfg.name}/{cfg.version} with dataset_info.json)"
        )
    builder = tfds.builder_from_directory(str(folder))
    observation = builder.info.features["steps"]["observation"]
    roles = cfg.image_keys if camera_roles is None else camera_roles
    for role in roles:
        key = cfg.image_keys.get(role)
        if key is not None and key not in observation:
            raise KeyError(
                f"{cfg.name}: image key {key!r} (camera {role}) is not an observation feature; "
                f"available: {sorted(observation.keys())}"
            )
    return builder


def available_camera_roles(builder: tfds.core.DatasetBuilder, cfg: DatasetConfig) -> tuple[str, ...]:
    """The camera roles whose image feature this dataset has (a config may name optional cameras)."""
    observation = builder.info.features["steps"]["observation"]
    return tuple(role for role, key in cfg.image_keys.items() if key is not None and key in observation)


def rank_split(split: str, rank: int, world_size: int) -> str:
    """This rank's share of `split`: contiguous, disjoint, covering the split together with the others."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return split if world_size == 1 else tfds.even_splits(split, n=world_size, drop_remainder=False)[rank]


def read_trajectories(
    builder: tfds.core.DatasetBuilder,
    cfg: DatasetConfig,
    split: str,
    *,
    shuffle: bool,
    read_threads: int,
    seed: int,
    camera_roles: tuple[str, ...] = (),
) -> tf.data.Dataset:
    """Episodes as trajectories (every step feature batched along time), plus `tfds_id`.

    Only the image features of `camera_roles` are kept (still encoded); the others are dropped
    before batching so they do not travel through the pipeline. Without shuffling the pass is in
    file order.
    """
    observation = builder.info.features["steps"]["observation"]
    image_features = [k for k, f in observation.items() if isinstance(f, tfds.features.Image)]
    wanted = {cfg.image_keys.get(role) for role in camera_roles} - {None}
    dropped = [k for k in image_features if k not in wanted]
    decoders = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k in image_features}}}
    cycle = read_threads if shuffle else 1  # one file at a time keeps an unshuffled pass in order
    read_config = tfds.ReadConfig(
        add_tfds_id=True,
        shuffle_seed=seed,
        interleave_cycle_length=cycle,
        num_parallel_calls_for_interleave_files=cycle,
        try_autocache=False,
    )
    try:
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=shuffle, read_config=read_config)
    except ValueError as err:  # unknown split names and the like
        raise ValueError(f"{cfg.name}: cannot read split {split!r}: {err}") from err

    def to_trajectory(episode: dict) -> dict:
        steps = episode["steps"]
        length = steps.cardinality()
        if dropped:
            steps = steps.map(
                lambda s: {**s, "observation": {k: v for k, v in s["observation"].items() if k not in dropped}}
            )
        # batch() preallocates its batch size, so batch exactly the episode length (known for RLDS
        # steps, which TFDS decodes from one sequence); the fallback bounds unknown lengths.
        traj = steps.batch(tf.where(length > 0, length, MAX_EPISODE_STEPS)).get_single_element()
        traj["tfds_id"] = episode["tfds_id"]
        return traj

    return ds.map(to_trajectory, num_parallel_calls=read_threads, deterministic=None)


def standardized_trajectories(
    builder,
    cfg: DatasetConfig,
    split: str,
    *,
    skip_unlabeled: bool,
    shuffle: bool,
    read_threads: int,
    seed: int,
    camera_roles: tuple[str, ...] = (),
    non_finite: str = "raise",
) -> tf.data.Dataset:
    """Standardized trajectories; cameras outside `camera_roles` come out as empty strings.

    A NaN/inf action or proprio value: `non_finite="raise"` fails the pass (NonFiniteDataError via
    `non_finite_data_error`), "skip" drops the episode (each dropped episode is logged, the first
    few by id), "keep" passes it on for the caller to deal with (statistics count them).
    """
    if non_finite not in NON_FINITE_MODES:
        raise ValueError(f"non_finite must be one of {NON_FINITE_MODES}, got {non_finite!r}")

    def apply(traj: dict) -> dict:
        out = standardize(traj, cfg)
        out["tfds_id"] = traj["tfds_id"]
        if non_finite != "raise":
            return out
        checks = []
        for key, values in (("action", out["action"]), ("proprio", out["observation"]["proprio"])):
            finite = tf.reduce_all(tf.math.is_finite(values), axis=-1)  # (T,)
            checks.append(
                tf.debugging.Assert(
                    tf.reduce_all(finite),
                    [
                        f"{NON_FINITE_MARK} {key} value in {cfg.name} split {split}, episode",
                        traj["tfds_id"],
                        "step",
                        tf.argmin(tf.cast(finite, tf.int32)),
                    ],
                    summarize=1,
                )
            )
        with tf.control_dependencies(checks):  # the checks run before anything reads the values
            out["action"] = tf.identity(out["action"])
            out["observation"] = {**out["observation"], "proprio": tf.identity(out["observation"]["proprio"])}
        return out

    ds = read_trajectories(
        builder, cfg, split, shuffle=shuffle, read_threads=read_threads, seed=seed, camera_roles=camera_roles
    )
    ds = ds.map(apply, num_parallel_calls=read_threads, deterministic=None)
    ds = ds.filter(lambda t: tf.shape(t["action"])[0] > 0)
    if non_finite == "skip":
        report = SkipReport(f"{cfg.name} split {split}")

        def keep(t: dict) -> tf.Tensor:
            ok = all_finite(t["action"], t["observation"]["proprio"])

            def dropped() -> tf.Tensor:
                out = tf.py_function(report, [t["tfds_id"]], tf.bool)
                out.set_shape([])
                return out

            return tf.cond(ok, lambda: tf.constant(True), dropped)

        ds = ds.filter(keep)
    if skip_unlabeled:
        ds = ds.filter(lambda t: tf.strings.length(t["language_instruction"][0]) > 0)
    return ds


def all_finite(action: tf.Tensor, proprio: tf.Tensor) -> tf.Tensor:
    """Scalar bool: every action and proprio value of a trajectory is finite (the numpy twin is in statistics.py)."""
    return tf.reduce_all(tf.math.is_finite(action)) & tf.reduce_all(tf.math.is_finite(proprio))


class SkipReport:
    """Called (through tf.py_function) for each episode the stream drops for NaN/inf: logs the first
    `NAMED_SKIPS` by id, then the running count at 10x steps; an episode seen again (the next epoch) is
    not counted twice. Returns False, the filter's verdict."""

    def __init__(self, where: str):
        self.where, self.seen = where, set()

    def __call__(self, tfds_id: tf.Tensor) -> bool:
        name = tfds_id.numpy().decode()
        if name not in self.seen:
            self.seen.add(name)
            n = len(self.seen)
            if n <= NAMED_SKIPS:
                logger.warning(
                    "%s: skipped episode %s (NaN/inf action or proprio; skip_non_finite=true), %d skipped so far",
                    self.where,
                    name,
                    n,
                )
            elif str(n).rstrip("0") == "1":
                logger.warning(
                    "%s: %d episodes skipped so far for NaN/inf action or proprio (skip_non_finite=true)", self.where, n
                )
        return False


def dataset_statistics(data_path: str | Path, cfg: DatasetConfig, rlds: RLDSConfig) -> tuple[DatasetStatistics, Path]:
    from pg_vla.data.rlds.statistics import load_or_compute_statistics

    fixed = rlds.statistics_paths.get(cfg.name)
    if fixed:
        return DatasetStatistics.load(fixed), Path(fixed)
    return load_or_compute_statistics(
        data_path,
        cfg,
        split=rlds.statistics_split,
        skip_unlabeled=rlds.skip_unlabeled,
        statistics_dir=rlds.statistics_dir,
        read_threads=rlds.read_threads,
        skip_non_finite=rlds.skip_non_finite,
    )


def frames_of_dataset(
    cfg: DatasetConfig,
    stats: DatasetStatistics,
    rlds: RLDSConfig,
    index: int,
    proprio_dim: int,
    action_dim: int,
    rank: int,
    world_size: int,
) -> tf.data.Dataset:
    """One dataset as a stream of frames (encoded image histories, normalized and windowed proprio/actions)."""
    builder = open_builder(rlds.data_path, cfg, rlds.camera_roles)
    action_mask = action_normalization_mask(
        cfg.action_dim, rlds.normalize_gripper, dataset_mask=cfg.action_normalization_mask
    )
    action_norm = Normalizer(stats.action, rlds.normalization, action_mask)
    proprio_norm = Normalizer(stats.proprio, rlds.normalization)
    scene_norm = Normalizer(stats.scene_state, rlds.normalization) if rlds.scene_state else None
    seed = rlds.seed + 1000 * rank + index

    def prepare(traj: dict) -> dict:
        obs = traj["observation"]
        traj = {
            **traj,
            "action": normalize_tf(traj["action"], action_norm),
            "observation": {
                **obs,
                "proprio": normalize_tf(obs["proprio"], proprio_norm),
                **({"scene_state": normalize_tf(obs["scene_state"], scene_norm)} if scene_norm is not None else {}),
            },
        }
        traj = add_windows(traj, rlds.cond_steps, rlds.horizon_steps)
        length = tf.shape(traj["step"])[0]
        obs = traj["observation"]
        return {
            "images": {role: obs[f"image_{role}"] for role in rlds.camera_roles},  # (T, C) encoded
            "proprio": _pad_last(obs["proprio"], proprio_dim),  # (T, C, P)
            "proprio_mask": obs["proprio_mask"],
            "actions": _pad_last(traj["action"], action_dim),  # (T, H, A)
            "action_mask": traj["action_mask"],
            "language": traj["language_instruction"],
            "step": traj["step"],
            "tfds_id": tf.fill([length], traj["tfds_id"]),
            "dataset_index": tf.fill([length], index),
            **({"scene_state": obs["scene_state"]} if scene_norm is not None else {}),  # (T, K), the current step's
        }

    ds = standardized_trajectories(
        builder,
        cfg,
        rank_split(rlds.split, rank, world_size),
        skip_unlabeled=rlds.skip_unlabeled,
        shuffle=rlds.train,
        read_threads=rlds.read_threads,
        seed=seed,
        camera_roles=rlds.camera_roles,
        non_finite="skip" if rlds.skip_non_finite else "raise",
    )
    if rlds.train:
        ds = ds.repeat()
    ds = ds.map(prepare, num_parallel_calls=rlds.read_threads, deterministic=None)
    return ds.flat_map(tf.data.Dataset.from_tensor_slices)


def _pad_last(x: tf.Tensor, dim: int) -> tf.Tensor:
    """Zero-pad the last dimension to `dim` (mixes of datasets with different proprio sizes)."""
    pad = dim - tf.shape(x)[-1]
    return tf.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[0, pad]])


@dataclass
class MixInfo:
    datasets: list[str]
    weights: list[float]  # normalized
    statistics: dict[str, DatasetStatistics]
    statistics_paths: dict[str, Path]
    proprio_dim: int  # max over the mix (smaller ones are zero-padded)
    action_dim: int


def prepare_mix(rlds: RLDSConfig) -> MixInfo:
    """Resolve the mix and load (or compute) every dataset's statistics."""
    mix = get_mix(rlds.mix)
    configs = [get_dataset_config(name) for name in mix]
    if rlds.scene_state:
        check_scene_state(configs)
    stats, paths = {}, {}
    for cfg in configs:
        stats[cfg.name], paths[cfg.name] = dataset_statistics(rlds.data_path, cfg, rlds)
        if rlds.scene_state and stats[cfg.name].scene_state is None:
            raise ValueError(
                f"the normalization statistics {paths[cfg.name]} of {cfg.name} hold no scene_state entry, which "
                "the scene-state target needs: drop that fixed statistics file or compute the statistics again"
            )
    total = sum(mix.values())
    return MixInfo(
        datasets=list(mix),
        weights=[w / total for w in mix.values()],
        statistics=stats,
        statistics_paths=paths,
        proprio_dim=max(c.proprio_dim for c in configs),
        action_dim=max(c.action_dim for c in configs),
    )


def make_dataset(
    rlds: RLDSConfig, rank: int = 0, world_size: int = 1, info: MixInfo | None = None
) -> tuple[tf.data.Dataset, MixInfo]:
    """Batches of numpy-ready tensors (see `pg_vla.data.dataloader` for the layout)."""
    info = info or prepare_mix(rlds)
    per_dataset = [
        frames_of_dataset(
            get_dataset_config(name),
            info.statistics[name],
            rlds,
            i,
            info.proprio_dim,
            info.action_dim,
            rank,
            world_size,
        )
        for i, name in enumerate(info.datasets)
    ]
    seed = rlds.seed + 1000 * rank
    if len(per_dataset) == 1:
        ds = per_dataset[0]
    else:
        ds = tf.data.Dataset.sample_from_datasets(
            per_dataset, weights=info.weights, seed=seed, stop_on_empty_dataset=False
        )
    if rlds.train:
        ds = ds.shuffle(rlds.shuffle_buffer, seed=seed)
    augments = {role: rlds.augment.get(role, NO_AUGMENT) if rlds.train else NO_AUGMENT for role in rlds.camera_roles}

    def decode(frame: dict, frame_seed: tf.Tensor) -> dict:
        """Decodes the frame's C x N views, frame-major (oldest frame first, cameras in role order).

        A camera's augmentation seed is the same for all C frames of its history, so they get the
        same crop and colour jitter. A view is masked where its camera is absent (black) or its step
        lies before the episode start (the first frame repeated, as `proprio_mask` says)."""
        images, present = [], []
        for c in range(rlds.cond_steps):
            for i, role in enumerate(rlds.camera_roles):
                image, ok = decode_and_resize(frame["images"][role][c], rlds.image_size, rlds.image_resize)
                if augments[role] != NO_AUGMENT:  # an absent camera stays black
                    image = tf.where(ok, augment(image, augments[role], frame_seed + i), image)
                images.append(image)
                present.append(ok & frame["proprio_mask"][c])
        out = {k: v for k, v in frame.items() if k != "images"}
        out["images"] = tf.stack(images)  # (C * N, S, S, 3) uint8
        out["image_mask"] = tf.stack(present)  # (C * N,)
        return out

    seeds = tf.data.Dataset.random(seed=seed).map(lambda s: tf.stack([s, s // 3 + 1]))
    ds = tf.data.Dataset.zip((ds, seeds)).map(decode, num_parallel_calls=rlds.transform_threads, deterministic=None)
    ds = ds.batch(rlds.batch_size, drop_remainder=rlds.train, num_parallel_calls=rlds.transform_threads)
    options = tf.data.Options()
    options.autotune.ram_budget = int(rlds.ram_budget_gb * (1 << 30))
    options.threading.private_threadpool_size = max(rlds.read_threads, rlds.transform_threads) + 1
    options.deterministic = rlds.deterministic or not rlds.train  # governs every map above (deterministic=None)
    # Iterator checkpoints (RLDSBatchStream.save) refuse "stateful" ops; the only ones here are the
    # get_single_element calls that gather one episode's steps, which hold nothing across elements.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(options).prefetch(2), info


class CorruptDatasetError(RuntimeError):
    """A tfrecord file of a dataset could not be read."""


NON_FINITE_MARK = "non-finite"  # starts the message of the finite-values assertion in standardized_trajectories


class NonFiniteDataError(ValueError):
    """A standardized action or proprio value is NaN or infinite; names the dataset, episode and step."""


def non_finite_data_error(err: tf.errors.InvalidArgumentError) -> NonFiniteDataError | None:
    """The NonFiniteDataError an assertion of standardized_trajectories raised, else None."""
    message = getattr(err, "message", str(err))
    if NON_FINITE_MARK not in message:
        return None
    detail = message[message.index(NON_FINITE_MARK) :].splitlines()[0]
    return NonFiniteDataError(
        f"{detail.replace('] [', ' ').strip('[]')}: fix or drop that episode (statistics and "
        "training refuse NaN/inf), or set skip_non_finite=true to leave such episodes out"
    )


def corrupt_data_error(err: Exception, where: str) -> CorruptDatasetError:
    return CorruptDatasetError(
        f"corrupt or truncated tfrecord data in {where}: {getattr(err, 'message', err)}. "
        f"Re-copy or regenerate the dataset files."
    )


class RLDSBatchStream:
    """Numpy batches of `make_dataset`; a corrupt file surfaces as CorruptDatasetError naming the datasets.

    Its position is tf.data's own iterator checkpoint (`save(folder)` writes `folder/iterator.*`;
    `folder=` continues from one): the shuffle buffer of encoded frames, the file readers' offsets and
    the random generators, so a resumed stream goes on exactly where it stopped when the pipeline is
    deterministic, without reading the consumed data again.
    """

    def __init__(
        self,
        rlds: RLDSConfig,
        rank: int = 0,
        world_size: int = 1,
        info: MixInfo | None = None,
        folder: Path | None = None,
    ):
        self.rlds = rlds
        ds, self.info = make_dataset(rlds, rank, world_size, info)
        self.iterator = iter(ds)
        if folder is not None:
            tf.train.Checkpoint(iterator=self.iterator).read(str(folder / ITERATOR_PREFIX)).assert_consumed()

    def __iter__(self) -> "RLDSBatchStream":
        return self

    def __next__(self) -> dict[str, np.ndarray | list[str]]:
        try:
            batch = next(self.iterator)
        except tf.errors.DataLossError as err:
            rlds = self.rlds
            folders = ", ".join(
                f"{name} ({dataset_folder(rlds.data_path, get_dataset_config(name))}, split {rlds.split!r})"
                for name in self.info.datasets
            )
            raise corrupt_data_error(err, folders) from err
        except tf.errors.InvalidArgumentError as err:
            raise (non_finite_data_error(err) or err) from err
        return to_numpy_batch(batch)

    def save(self, folder: Path) -> None:
        tf.train.Checkpoint(iterator=self.iterator).write(str(folder / ITERATOR_PREFIX))


ITERATOR_PREFIX = "iterator"


def iterate_numpy_batches(rlds: RLDSConfig, rank: int = 0, world_size: int = 1, info: MixInfo | None = None):
    """The batches of an `RLDSBatchStream` from its start."""
    yield from RLDSBatchStream(rlds, rank, world_size, info)


def to_numpy_batch(batch: dict) -> dict[str, np.ndarray | list[str]]:
    """tf batch -> numpy arrays; strings become lists of str."""
    out = {}
    for key, value in batch.items():
        array = value.numpy() if hasattr(value, "numpy") else value
        out[key] = [b.decode() for b in array] if array.dtype == object else array
    return out
