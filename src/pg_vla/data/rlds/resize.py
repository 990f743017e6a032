"""Rewrite an RLDS dataset with every image resized to a fixed square size and JPEG-encoded.

Raw releases store camera images larger than the model's input (fractal 256x320, bridge 256x256);
decoding and shrinking them on every read costs the loader more than anything else. This module
rewrites a prepared TFDS dataset `<data_path>/<name>/<version>` once into
`<output_path>/<name>/<version>` where every `tfds.features.Image` feature holds images of exactly
(height, width) = `image_size` (square by default, 224x224) and everything else is unchanged:

- schema: the input builder's feature tree with only each Image feature's shape and encoding
  replaced (rebuilt from its feature proto, so descriptions and all other features stay as they are);
- values: every non-image feature of every step and every episode-level feature is read, decoded and
  written back unchanged (bit-exact arrays, strings, flags);
- episodes: the same splits (or the chosen ones), the same episodes in the same on-disk order, and by
  default the same number of shards per split, hence the same shard lengths for datasets written by
  TFDS (its shard planner splits a split's episodes the same way for the same counts);
- dataset metadata: the input's `dataset_info.json` (description, citation, release notes, the
  `disable_shuffling` flag, ...) with only the split sizes, shard lengths and file format updated.

Resizing: images are resized to exactly `image_size`, without keeping the aspect ratio (a 256x320
fractal frame is squeezed horizontally, not cropped or padded): the model sees fixed square inputs
and the training loader would otherwise squeeze it the same way itself. The filter is bilinear with
antialiasing (`tf.image.resize(..., "bilinear", antialias=True)`, a triangle filter widened by the
downscale factor, like PIL's bilinear), the same operation the loader applies to images that do not
have the target size (`pg_vla.data.rlds.frames`), so a rewritten dataset gives the pixels the
loader would have computed, up to the JPEG round trip. uint8 images with 1 or 3 channels are
encoded as JPEG of quality `jpeg_quality`; other uint8 images (2 or 4 channels) and uint16 images
(depth) are encoded as lossless PNG, since JPEG cannot hold them. An image already of the target size
whose feature already has the target encoding is copied byte for byte (no second JPEG generation).

Parallelism and memory: episodes are read with `builder.as_dataset` (images left encoded) in file
order, and a `tf.data` map with `num_parallel_calls=num_workers` batches each episode's steps and
decodes, resizes and re-encodes its images. These are TensorFlow kernels that release the GIL, so
the work runs on `num_workers` threads of one process, with no pickling of episodes to worker
processes and no fork of a process that has TensorFlow loaded; the map is deterministic, so the
episode order is kept. At most about `2 * num_workers` episodes are in flight (the map's parallel
calls plus a prefetch of `num_workers`), each held as encoded bytes. The main thread pulls one
episode at a time and hands it to `writer.write_rlds_dataset` (TFDS' own feature encoding,
serialization and shard writing; it keeps up to 1 GB of serialized episodes in memory and spills the
rest to disk), so a split is never materialized.

Writing: each split is written with `shuffle=False` (TFDS keeps the given order instead of placing
episodes by a hash of their key) into a staging folder next to the output, then the shard files of
all splits are moved into one dataset folder, `dataset_info.json` is rebuilt from the input's, and
the folder is moved into place only when complete. The `disable_shuffling` flag is copied from the
input (the writer would record `True`, which would stop readers from shuffling files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf
    import tensorflow_datasets as tfds

DEFAULT_IMAGE_SIZE = 224
DEFAULT_JPEG_QUALITY = 95
MAX_EPISODE_STEPS = 1 << 14  # bound for batching the steps of an episode whose length is unknown
_DATASET_INFO = "dataset_info.json"

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# locating the input and the output (no tensorflow)


def available_datasets(data_path: str | Path) -> dict[str, list[str]]:
    """name -> versions of the prepared datasets `<data_path>/<name>/<version>/dataset_info.json`."""
    out: dict[str, list[str]] = {}
    root = Path(data_path)
    if not root.is_dir():
        return out
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = available_versions(name_dir)
        if versions:
            out[name_dir.name] = versions
    return out


def available_versions(name_dir: str | Path) -> list[str]:
    name_dir = Path(name_dir)
    if not name_dir.is_dir():
        return []
    return sorted((p.name for p in name_dir.iterdir() if (p / _DATASET_INFO).is_file()), key=_version_key)


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def resolve_input_dir(data_path: str | Path, dataset_name: str, version: str | None = None) -> Path:
    """The prepared dataset folder `<data_path>/<dataset_name>/<version>`, with clear errors.

    `version` may be omitted when exactly one version is present.
    """
    root = Path(data_path)
    if not root.exists():
        raise FileNotFoundError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"input path {root} is not a folder")
    name_dir = root / dataset_name
    if not name_dir.is_dir():
        found = available_datasets(root)
        listing = ", ".join(f"{n} ({', '.join(v)})" for n, v in found.items()) or "none"
        raise FileNotFoundError(f"no dataset {dataset_name!r} in {root} (datasets found there: {listing})")
    versions = available_versions(name_dir)
    if version is None:
        if not versions:
            raise FileNotFoundError(f"{name_dir} holds no prepared version (no <version>/{_DATASET_INFO})")
        if len(versions) > 1:
            raise ValueError(f"{name_dir} holds several versions ({', '.join(versions)}): pick one with --version")
        version = versions[0]
    folder = name_dir / version
    if not (folder / _DATASET_INFO).is_file():
        what = "does not exist" if not folder.exists() else f"has no {_DATASET_INFO}"
        raise FileNotFoundError(
            f"dataset {dataset_name!r} version {version!r}: {folder} {what} "
            f"(versions present: {', '.join(versions) or 'none'})"
        )
    return folder


def check_output_dir(input_dir: Path, output_path: str | Path, overwrite: bool) -> Path:
    """`<output_path>/<name>/<version>` for the input folder; refuses to clobber it or the input."""
    output_dir = Path(output_path) / input_dir.parent.name / input_dir.name
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or target in source.parents or source in target.parents:
        raise ValueError(f"output {output_dir} overlaps the input {input_dir}: choose another --output_path")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output {output_dir} already exists (pass --overwrite / overwrite=True to replace it)")
    if Path(output_path).exists() and not Path(output_path).is_dir():
        raise NotADirectoryError(f"output path {output_path} is not a folder")
    return output_dir


def normalize_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(v) for v in image_size)
        if len(size) == 1:
            size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive size or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# schema


@dataclass(frozen=True)
class ImageTarget:
    """How one Image feature is rewritten."""

    path: tuple[str, ...]  # keys from the episode root; "steps" marks a per-step image
    source_shape: tuple[int | None, ...]
    source_encoding: str
    dtype: str  # "uint8" or "uint16"
    channels: int
    shape: tuple[int, int, int]
    encoding: str  # "jpeg" or "png"

    @property
    def per_step(self) -> bool:
        return self.path[0] == "steps"


def target_encoding(dtype: str, channels: int) -> str:
    """JPEG where it can hold the image (uint8, 1 or 3 channels), else lossless PNG."""
    return "jpeg" if dtype == "uint8" and channels in (1, 3) else "png"


def image_targets(features: "tfds.features.FeaturesDict", image_size: int | Sequence[int]) -> list[ImageTarget]:
    """Every Image feature of an RLDS schema (in steps or at the episode level) and its new form."""
    import numpy as np
    import tensorflow_datasets as tfds

    height, width = normalize_image_size(image_size)
    out = []

    def walk(feature, path: tuple[str, ...], in_steps: bool) -> None:
        if isinstance(feature, tfds.features.Image):
            shape = tuple(feature.shape)
            dtype = np.dtype(feature.np_dtype).name
            where = "/".join(path)
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(
                    f"image feature {where} has shape {shape}: need (height, width, channels) "
                    "with a known number of channels"
                )
            if dtype not in ("uint8", "uint16"):
                raise ValueError(
                    f"image feature {where} has dtype {dtype}: only uint8 and uint16 images can be resized"
                )
            channels = int(shape[-1])
            out.append(
                ImageTarget(
                    path=path,
                    source_shape=shape,
                    source_encoding=feature._encoding_format or "png",
                    dtype=dtype,
                    channels=channels,
                    shape=(height, width, channels),
                    encoding=target_encoding(dtype, channels),
                )
            )
        elif isinstance(feature, tfds.features.FeaturesDict):
            for key, sub in feature.items():
                walk(sub, (*path, key), in_steps)
        elif isinstance(feature, tfds.features.Dataset) and not in_steps and path == ("steps",):
            walk(feature.feature, path, True)
        elif isinstance(feature, (tfds.features.Sequence, tfds.features.Dataset)):
            if _contains_image(feature):
                raise ValueError(f"images inside the nested sequence {'/'.join(path)} are not supported")

    walk(features, (), False)
    return out


def _contains_image(feature) -> bool:
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Image):
        return True
    if isinstance(feature, tfds.features.FeaturesDict):
        return any(_contains_image(sub) for sub in feature.values())
    if isinstance(feature, (tfds.features.Sequence, tfds.features.Dataset)):
        return _contains_image(feature.feature)
    return False


def resized_features(
    features: "tfds.features.FeaturesDict", image_size: int | Sequence[int]
) -> "tfds.features.FeaturesDict":
    """The same schema with each Image feature's shape and encoding replaced.

    Built from the feature proto of `features`, so every other feature (class, shape, dtype,
    description) and the Image features' other fields are carried over exactly.
    """
    import tensorflow_datasets as tfds

    targets = {t.path: t for t in image_targets(features, image_size)}
    proto = features.to_proto()

    def node_at(path: tuple[str, ...]):
        node = proto
        for key in path:
            if node.HasField("sequence"):  # the steps Dataset
                node = node.sequence.feature
            node = node.features_dict.features[key]
        return node

    for path, target in targets.items():
        node = node_at(path)
        if not node.HasField("image"):
            raise ValueError(f"feature {'/'.join(path)}: expected an image in the feature proto")
        del node.image.shape.dimensions[:]
        node.image.shape.dimensions.extend(target.shape)
        node.image.encoding_format = target.encoding
    new = tfds.features.FeatureConnector.from_proto(proto)
    if not isinstance(new, tfds.features.FeaturesDict):
        raise TypeError(f"rebuilt schema is a {type(new).__name__}, expected a FeaturesDict")
    return new


# --------------------------------------------------------------------------------------------------
# image transform (tensorflow)


def resize_encoded_image(
    encoded: "tf.Tensor", target: ImageTarget, jpeg_quality: int = DEFAULT_JPEG_QUALITY
) -> "tf.Tensor":
    """One encoded image () string -> re-encoded image () string of `target.shape`.

    Decoding follows TFDS' own Image decoder (`tf.image.decode_image` with the feature's channels
    and dtype); an empty string stays empty.
    """
    import tensorflow as tf

    dtype = tf.as_dtype(target.dtype)
    height, width, channels = target.shape
    copy_if_sized = target.source_encoding == target.encoding

    def convert() -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=channels, dtype=dtype, expand_animations=False)
        image.set_shape([None, None, channels])
        sized = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)

        def resize() -> tf.Tensor:
            resized = tf.image.resize(tf.cast(image, tf.float32), [height, width], method="bilinear", antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, float(dtype.max)), dtype)

        def encode(pixels: tf.Tensor) -> tf.Tensor:
            if target.encoding == "jpeg":
                return tf.io.encode_jpeg(pixels, quality=int(jpeg_quality))
            return tf.io.encode_png(pixels)

        if copy_if_sized:
            return tf.cond(sized, lambda: encoded, lambda: encode(resize()))
        return encode(tf.cond(sized, lambda: image, resize))

    return tf.cond(tf.strings.length(encoded) > 0, convert, lambda: encoded)


def resize_encoded_images(
    encoded: "tf.Tensor", target: ImageTarget, jpeg_quality: int = DEFAULT_JPEG_QUALITY
) -> "tf.Tensor":
    """`resize_encoded_image` over a string tensor of any shape (a step's (T,) images, or a scalar)."""
    import tensorflow as tf

    flat = tf.reshape(encoded, [-1])
    out = tf.map_fn(
        lambda x: resize_encoded_image(x, target, jpeg_quality), flat, fn_output_signature=tf.TensorSpec([], tf.string)
    )
    return tf.reshape(out, tf.shape(encoded))


def _batch_steps(steps: "tf.data.Dataset") -> dict:
    """An episode's steps as one trajectory (every feature stacked along time); empty episodes work."""
    import tensorflow as tf

    for spec in tf.nest.flatten(steps.element_spec):
        if not spec.shape.is_fully_defined():
            raise ValueError(f"step feature of variable shape {spec.shape} cannot be stacked per episode")
    length = steps.cardinality()
    empty = tf.nest.map_structure(lambda s: tf.zeros([0, *s.shape], s.dtype), steps.element_spec)
    batched = steps.batch(tf.where(length > 0, length, MAX_EPISODE_STEPS))
    return batched.concatenate(tf.data.Dataset.from_tensors(empty)).take(1).get_single_element()


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of `tree` (dicts along `path` copied) with `value` at `path`."""
    head, *rest = path
    out = dict(tree)
    out[head] = _set(tree[head], tuple(rest), value) if rest else value
    return out


def _skip_decoding_tree(targets: Sequence[ImageTarget]) -> dict:
    import tensorflow_datasets as tfds

    tree: dict = {}
    for target in targets:
        node = tree
        for key in target.path[:-1]:
            node = node.setdefault(key, {})
        node[target.path[-1]] = tfds.decode.SkipDecoding()
    return tree


def resized_episodes(
    builder: "tfds.core.DatasetBuilder",
    split: str,
    targets: Sequence[ImageTarget],
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    num_workers: int = 4,
) -> "tf.data.Dataset":
    """Episodes of `split` in file order: steps stacked into one dict of arrays, images rewritten.

    Yields `{"steps": {feature: (T, ...)}, <episode-level features>}` with images as encoded bytes,
    ready for the writer (TFDS' Image feature stores given bytes as they are).
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    # Shard after shard: the on-disk order. No autocache: TFDS would keep small splits (< 250 MiB) in memory.
    read_config = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
    ds = builder.as_dataset(
        split=split, decoders=_skip_decoding_tree(targets) or None, shuffle_files=False, read_config=read_config
    )

    def transform(episode: dict) -> dict:
        out = {key: value for key, value in episode.items() if key != "steps"}
        out["steps"] = _batch_steps(episode["steps"])
        for target in targets:
            value = _get(out, target.path)
            out = _set(out, target.path, resize_encoded_images(value, target, jpeg_quality))
        return out

    ds = ds.map(transform, num_parallel_calls=num_workers, deterministic=True).prefetch(num_workers)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = num_workers + 1
    return ds.with_options(options)


# --------------------------------------------------------------------------------------------------
# the whole rewrite


def modify_rlds_dataset(
    data_path: str | Path,
    dataset_name: str,
    output_path: str | Path,
    *,
    version: str | None = None,
    image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    num_workers: int = 4,
    num_shards: int | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    log: Log | None = None,
    log_every_s: float = 30.0,
) -> Path:
    """Rewrite `<data_path>/<dataset_name>/<version>` to `<output_path>/<dataset_name>/<version>`.

    Args:
        image_size: side of the square output images, or (height, width).
        jpeg_quality: 1..100, for the JPEG-encoded images.
        num_workers: episodes transformed in parallel (tf.data threads).
        num_shards: shards per split; default: as many as the input split has. A split with fewer
            episodes than `num_shards` gets one shard per episode.
        splits: which splits to write (default: all of the input's, in its order).
        overwrite: replace an existing output folder.
        log: called with progress lines (e.g. `print`); None: silent.

    Returns:
        The output dataset folder.
    """
    size = normalize_image_size(image_size)
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    input_dir = resolve_input_dir(data_path, dataset_name, version)
    output_dir = check_output_dir(input_dir, output_path, overwrite)
    say = log or (lambda message: None)

    import tensorflow_datasets as tfds

    from pg_vla.data.rlds.writer import write_rlds_dataset

    builder = tfds.builder_from_directory(str(input_dir))
    info = builder.info
    available = list(info.splits.keys())
    chosen = list(splits) if splits else available
    unknown = [s for s in chosen if s not in info.splits]
    if unknown:
        raise ValueError(f"{input_dir}: unknown split(s) {unknown}; the dataset has {available}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"splits given twice: {chosen}")
    if not isinstance(dict(info.features.items()).get("steps"), tfds.features.Dataset):
        raise ValueError(f"{input_dir} is not an RLDS dataset (no `steps` Dataset feature)")
    targets = image_targets(info.features, size)
    if not targets:
        raise ValueError(f"{input_dir} has no image features to resize")
    features = resized_features(info.features, size)
    say(
        f"{input_dir} -> {output_dir}: {len(targets)} image feature(s) -> {size[0]}x{size[1]} "
        f"({', '.join(sorted({t.encoding for t in targets}))}), splits {chosen}"
    )

    name, ver = input_dir.parent.name, input_dir.name
    output_root = Path(output_path)
    output_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{ver}-", dir=output_root))
    try:
        merged = staging / "dataset"
        merged.mkdir()
        split_entries = []
        written_info: dict[str, Any] = {}
        for split in chosen:
            split_info = info.splits[split]
            total = int(split_info.num_examples)
            shards = num_shards if num_shards is not None else max(1, len(split_info.shard_lengths))
            shards = max(1, min(shards, total))
            episodes = resized_episodes(builder, split, targets, jpeg_quality, num_workers)
            say(f"{split}: {total} episodes, {shards} shard(s)")
            folder = write_rlds_dataset(
                staging / f"split_{len(split_entries)}",
                name,
                ver,
                features,
                {split: _counted(episodes, split, total, say, log_every_s)},
                num_shards=shards,
                description=info.description or "",
                shuffle=False,
            )
            written_info = json.loads((folder / _DATASET_INFO).read_text())
            entries = [e for e in written_info.get("splits", []) if e.get("name") == split]
            if len(entries) != 1:
                raise RuntimeError(f"{split}: unexpected split record in the written {_DATASET_INFO}")
            split_entries.append(entries[0])
            for file in folder.iterdir():
                if file.name == "features.json" and not (merged / file.name).exists():
                    os.replace(file, merged / file.name)
                elif file.name.startswith(f"{name}-{split}."):
                    os.replace(file, merged / file.name)
        (merged / _DATASET_INFO).write_text(
            json.dumps(_merged_dataset_info(input_dir, written_info, split_entries), indent=2) + "\n"
        )
        _check_written(merged, info, chosen)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(merged, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote {output_dir}")
    return output_dir


def _counted(episodes: "tf.data.Dataset", split: str, total: int, say: Log, every_s: float) -> Iterator[dict]:
    """Numpy episodes, with a progress line every `every_s` seconds and at the end."""
    start = last = time.perf_counter()
    count = 0
    for count, episode in enumerate(episodes.as_numpy_iterator(), start=1):
        yield episode
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            say(f"{split}: {count}/{total} episodes ({count / (now - start):.1f} episodes/s)")
    elapsed = max(time.perf_counter() - start, 1e-9)
    say(f"{split}: {count}/{total} episodes in {elapsed:.1f} s ({count / elapsed:.1f} episodes/s)")


def _merged_dataset_info(input_dir: Path, written: dict, split_entries: list[dict]) -> dict:
    """The input's dataset_info.json with the new splits, file format and sizes."""
    info = json.loads((input_dir / _DATASET_INFO).read_text())
    info["splits"] = split_entries
    info["fileFormat"] = written.get("fileFormat", "tfrecord")
    info.pop("downloadSize", None)
    if "datasetSize" in info:
        info["datasetSize"] = str(sum(int(e.get("numBytes", 0)) for e in split_entries))
    return info


def _check_written(folder: Path, source_info, splits: Sequence[str]) -> None:
    """The rewritten folder opens and every split has as many episodes as the input's."""
    import tensorflow_datasets as tfds

    out = tfds.builder_from_directory(str(folder)).info
    for split in splits:
        expected, got = int(source_info.splits[split].num_examples), int(out.splits[split].num_examples)
        if expected != got:
            raise RuntimeError(f"{split}: wrote {got} episodes, the input has {expected}")
    if bool(out.disable_shuffling) != bool(source_info.disable_shuffling):
        raise RuntimeError("the rewritten dataset_info.json does not carry the input's disable_shuffling flag")
