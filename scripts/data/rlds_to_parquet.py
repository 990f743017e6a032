"""Convert an RLDS dataset split to Parquet episodes (one row per standardized step).

Usage:
    uv run scripts/data/rlds_to_parquet.py --data_path DIR --dataset_name bridge_dataset --split train \
        --output_dir OUT [--rows_per_group 1024] [--rows_per_file 100000] [--max_episodes N] \
        [--image_2_role wrist|secondary|none]

Reads `<data_path>/<dataset_name>/<version>` (a registered dataset, see
`pg_vla.data.rlds.dataset_configs`) and writes `<output_dir>/<dataset_name>-<split>-NNNNN.parquet`
with columns image_1, image_2, state, action, is_first, is_last, is_terminal, prompt, episode_id
(see `pg_vla.data.parquet.convert`). Prints the written files, one per line.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure(native_logs=True)  # before the libraries load (tensorflow runs in this process)

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="folder holding <dataset_name>/<version>")
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--rows_per_group", type=int, default=1024)
    parser.add_argument("--rows_per_file", type=int, default=100_000)
    parser.add_argument("--max_episodes", type=int, default=None)
    parser.add_argument(
        "--image_2_role",
        default="default",
        help="camera role stored as image_2 (default: wrist if the dataset has one, else secondary)",
    )
    args = parser.parse_args()

    from pg_vla.data.parquet.convert import convert_rlds_to_parquet

    files = convert_rlds_to_parquet(
        args.data_path,
        args.dataset_name,
        args.split,
        args.output_dir,
        rows_per_group=args.rows_per_group,
        rows_per_file=args.rows_per_file,
        max_episodes=args.max_episodes,
        image_2_role=None if args.image_2_role == "none" else args.image_2_role,
        log=print,
    )
    for path in files:
        print(path)


if __name__ == "__main__":
    main()
