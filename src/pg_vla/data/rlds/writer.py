"""Write RLDS datasets in the real TFDS on-disk format from Python episodes.

`write_rlds_dataset` turns streams of episode dicts into a prepared TFDS dataset folder
`<data_dir>/<name>/<version>/` holding `dataset_info.json`, `features.json` and, per split, the
shards `<name>-<split>.tfrecord-0000k-of-0000n` (the template of the Open X-Embodiment releases).
`tfds.builder_from_directory(<that folder>)` opens it and `builder.as_dataset(split=...)` reads it,
exactly like a downloaded bridge or fractal release.

How: the episodes go through tensorflow-datasets' own ad-hoc builder
(`tfds.dataset_builders.AdhocBuilder`, the class behind `tfds.dataset_builders.store_as_tfds_dataset`),
i.e. the regular `GeneratorBasedBuilder.download_and_prepare` path: each feature connector encodes
its values (the `Image` feature compresses images as JPEG or PNG per its `encoding_format`), the
examples are serialized, and the split writer distributes them over exactly `num_shards` shards.
Nothing is downloaded: GCS look-ups are turned off and no download folder is left behind.

Memory: episodes are pulled one at a time from the given iterables (pass generators), so a split is
never materialized as Python objects. TFDS keeps the serialized examples of a split in memory up to
1 GB and beyond that spills them to temporary bucket files on disk, so memory stays bounded.

Episode order: like the real releases, examples are placed in the shards in an order given by a
hash of their key (the episode's index in its split), so the order on disk is a deterministic
permutation of the input order. `shuffle=False` keeps the input order instead; TFDS then records
`disable_shuffling` in the dataset info, and reading it with `shuffle_files=True` (or interleaving
files) raises unless `tfds.ReadConfig(enable_ordering_guard=False)` is used.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

Episode = Mapping[str, Any]
"""One episode: `{"steps": [step dict, ...], <episode-level features>: ...}` with numpy/python values."""


def write_rlds_dataset(
    data_dir: str | Path,
    name: str,
    version: str,
    features: "tfds.features.FeaturesDict",
    splits: Mapping[str, Iterable[Episode]],
    num_shards: int = 1,
    description: str = "",
    *,
    shuffle: bool = True,
    overwrite: bool = False,
    homepage: str | None = None,
    citation: str | None = None,
    release_notes: Mapping[str, str] | None = None,
) -> Path:
    """Write `splits` as the TFDS dataset `<data_dir>/<name>/<version>` and return that folder.

    Args:
        data_dir: root folder; the dataset goes to `<data_dir>/<name>/<version>/`.
        name: dataset name (snake_case, e.g. "bridge_dataset"); also the shard file prefix.
        version: "MAJOR.MINOR.PATCH".
        features: the episode schema; must contain a `steps` feature of type
            `tfds.features.Dataset` (RLDS layout).
        splits: split name -> iterable of episodes. Each episode is a dict matching `features`:
            `{"steps": [step dict, ...], ...episode-level features}`. Values are numpy arrays or
            python scalars/strings; images are uint8 arrays of the feature's shape. Iterables are
            consumed once, lazily.
        num_shards: number of shard files per split. Every split must yield at least
            `num_shards` episodes.
        description: free text stored in dataset_info.json.
        shuffle: place episodes in hash-of-key order as TFDS does for real datasets (default), or
            keep the input order (see the module docstring for what `False` implies for readers).
        overwrite: replace an existing dataset folder instead of raising `FileExistsError`.
        homepage, citation, release_notes: optional metadata stored in dataset_info.json.

    Returns:
        The dataset folder, to pass to `tfds.builder_from_directory`.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.dataset_builders import adhoc_builder

    if not splits:
        raise ValueError("splits is empty: give at least one split name -> episodes")
    if int(num_shards) != num_shards or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    num_shards = int(num_shards)
    if not isinstance(features, tfds.features.FeaturesDict):
        raise TypeError(f"features must be a tfds.features.FeaturesDict, got {type(features).__name__}")
    if not isinstance(dict(features.items()).get("steps"), tfds.features.Dataset):
        raise ValueError("features must hold a `steps` feature of type tfds.features.Dataset (RLDS layout)")
    for split, episodes in splits.items():
        if isinstance(episodes, (list, tuple)) and len(episodes) < num_shards:
            raise ValueError(f"split {split!r} has {len(episodes)} episodes, fewer than num_shards={num_shards}")

    data_dir = Path(data_dir)
    dataset_dir = data_dir / name / str(version)
    if dataset_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{dataset_dir} already exists (pass overwrite=True to replace it)")
        shutil.rmtree(dataset_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    class _Builder(adhoc_builder.AdhocBuilder, skip_registration=True):
        # The builder has no source file of its own: no checksums file to look up. (This also avoids
        # tfds' module-path probing, which needs the `importlib_resources` backport.)
        code_path = None

    builder = _Builder(
        name=name,
        version=str(version),
        features=features,
        split_datasets={split: _keyed(episodes) for split, episodes in splits.items()},
        data_dir=str(data_dir),
        description=description or None,
        homepage=homepage,
        citation=citation,
        release_notes=dict(release_notes) if release_notes else None,
        disable_shuffling=not shuffle,
    )
    download_config = tfds.download.DownloadConfig(
        num_shards=num_shards,
        try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    name_dir_existed = dataset_dir.parent.exists()
    with tempfile.TemporaryDirectory(prefix="rlds_writer_") as scratch:
        try:
            builder.download_and_prepare(download_dir=scratch, download_config=download_config)
        except BaseException as err:
            # tfds removes its incomplete folder; drop the `<name>` folder too if this call made it.
            if not name_dir_existed and dataset_dir.parent.is_dir() and not any(dataset_dir.parent.iterdir()):
                dataset_dir.parent.rmdir()
            message = str(err)
            if isinstance(err, AssertionError) and ("number_of_shards" in message or "No examples" in message):
                # tfds' shard planner reports too-small splits this way.
                raise ValueError(
                    f"cannot write dataset {name!r} with num_shards={num_shards}: {message} "
                    "(every split needs at least num_shards episodes)"
                ) from err
            raise
    return dataset_dir


def _keyed(episodes: Iterable[Episode]) -> Iterator[tuple[int, Episode]]:
    """Attach the running index as the example key (unique within a split, fixes the shard layout)."""
    for index, episode in enumerate(episodes):
        yield index, episode
