"""Convert an RLDS dataset split to a LeRobot dataset folder (format v3.0).

Usage:
    uv run scripts/data/rlds_to_lerobot.py --data_path DIR --dataset_name bridge_dataset --split train \
        --output_dir OUT [--fps 5] [--images] [--codec libsvtav1] [--frames_per_file 100000] [--max_episodes N]

Reads `<data_path>/<dataset_name>/<version>` (a registered dataset, see `pg_vla.data.rlds.dataset_configs`)
and writes OUT/meta (info.json, tasks.parquet, episodes/, stats.json), OUT/data/chunk-*/file-*.parquet and,
unless --images (cameras kept as their encoded images in the parquet), OUT/videos/<camera>/chunk-*/file-*.mp4
(see `pg_vla.data.lerobot.convert`). Train on it with data.source=lerobot data.path=OUT.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="folder holding <dataset_name>/<version>")
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fps", type=int, default=5, help="frame rate written to info.json and the videos")
    parser.add_argument("--images", action="store_true", help="cameras as encoded images in the parquet, no video")
    parser.add_argument("--codec", default="libsvtav1", help="video encoder (LeRobot's default: libsvtav1, AV1)")
    parser.add_argument("--frames_per_file", type=int, default=100_000, help="rows per data file and video file")
    parser.add_argument("--max_episodes", type=int, default=None)
    args = parser.parse_args()

    from pg_vla.data.lerobot.convert import convert_rlds_to_lerobot

    out = convert_rlds_to_lerobot(
        args.data_path,
        args.dataset_name,
        args.split,
        args.output_dir,
        video=not args.images,
        fps=args.fps,
        codec=args.codec,
        frames_per_file=args.frames_per_file,
        max_episodes=args.max_episodes,
        log=print,
    )
    print(out)


if __name__ == "__main__":
    main()
