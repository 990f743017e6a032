"""Rewrite a raw RLDS dataset with every image resized to a square size (default 224x224) and JPEG-encoded.

Run once before training, then point the training data path at the output:

    uv run scripts/data/modify_rlds_dataset.py --data_path IN_DIR --dataset_name NAME [--version V]
        --output_path OUT_DIR [--image_size 224] [--jpeg_quality 95] [--num_workers 4]
        [--num_shards N] [--splits train val] [--overwrite]

Examples:
    uv run scripts/data/modify_rlds_dataset.py --data_path /data/raw --dataset_name fractal20220817_data \
        --output_path /data/224
    uv run scripts/data/modify_rlds_dataset.py --data_path /data/raw --dataset_name bridge_dataset \
        --version 1.0.0 --output_path /data/224 --num_workers 8

Reads `IN_DIR/NAME/VERSION` (VERSION: the only one present when `--version` is not given) and writes
`OUT_DIR/NAME/VERSION` in the same schema except the image shapes: every image feature (all cameras)
is resized to exactly IMAGE_SIZE x IMAGE_SIZE with an antialiased bilinear filter, without keeping
the aspect ratio (the model takes square images; a 256x320 frame is squeezed, not cropped), and
JPEG-encoded at `--jpeg_quality` (uint16 or 2/4-channel images: lossless PNG). All other features,
the episode-level metadata, the splits (or the ones given with `--splits`), the number and order of
the episodes and the dataset metadata are kept. `--num_shards` defaults to each split's shard count
in the input. `--num_workers` episodes are processed in parallel (tf.data threads); memory stays
bounded whatever the dataset size. An existing output is only replaced with `--overwrite`.
See `pg_vla.data.rlds.resize` for the details.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure(native_logs=True)  # before the libraries load (tensorflow runs in this process)

import argparse
import contextlib
import sys
import time

from pg_vla.data.rlds.resize import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_JPEG_QUALITY,
    check_output_dir,
    modify_rlds_dataset,
    resolve_input_dir,
)


def log(message: str) -> None:
    print(f"[modify_rlds] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_path", required=True, help="input root (the dataset is DATA_PATH/NAME/VERSION)")
    parser.add_argument("--dataset_name", required=True, help="e.g. bridge_dataset, fractal20220817_data")
    parser.add_argument("--version", default=None, help="default: the only version present")
    parser.add_argument("--output_path", required=True, help="output root (writes OUTPUT_PATH/NAME/VERSION)")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE, help="side of the square images")
    parser.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY, help="1..100")
    parser.add_argument("--num_workers", type=int, default=4, help="episodes transformed in parallel")
    parser.add_argument("--num_shards", type=int, default=None, help="shards per split (default: as the input)")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to write (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    args = parser.parse_args(argv)
    if args.image_size < 1:
        parser.error(f"--image_size must be positive, got {args.image_size}")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in 1..100, got {args.jpeg_quality}")
    if args.num_workers < 1 or (args.num_shards is not None and args.num_shards < 1):
        parser.error("--num_workers and --num_shards must be >= 1")

    try:
        # Path checks first: they need no tensorflow, so mistakes are reported at once.
        input_dir = resolve_input_dir(args.data_path, args.dataset_name, args.version)
        check_output_dir(input_dir, args.output_path, args.overwrite)

        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        start = time.perf_counter()
        # TFDS prints its own per-split messages (about the staging folders) to stdout: keep stdout
        # for the output folder alone.
        with contextlib.redirect_stdout(sys.stderr):
            output_dir = modify_rlds_dataset(
                args.data_path,
                args.dataset_name,
                args.output_path,
                version=input_dir.name,
                image_size=args.image_size,
                jpeg_quality=args.jpeg_quality,
                num_workers=args.num_workers,
                num_shards=args.num_shards,
                splits=args.splits,
                overwrite=args.overwrite,
                log=log,
            )
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        sys.exit(f"error: {err}")
    log(f"done in {time.perf_counter() - start:.1f} s")
    print(output_dir)


if __name__ == "__main__":
    main()
