"""Offline evaluation of a pg-vla checkpoint: predicted vs recorded action chunks, metrics and plots.

    # Parquet episode files (globs and folders too)
    uv run scripts/eval_offline.py --checkpoint_path runs/x/checkpoints/step_001000 \
        --eval_data_path val/a.parquet val/b.parquet --output_dir eval/x [--save_predictions] \
        [--max_batches N] [--batch_size B] [--seed S]
    # an RLDS data folder (a split of a single-dataset mix; the statistics are the checkpoint's)
    uv run scripts/eval_offline.py --checkpoint_path CKPT --eval_data_path /data/rlds \
        --dataset_name bridge_dataset --split val --output_dir eval/x

Writes metrics.json (MSE/MAE per dimension in normalized and original units, threshold accuracy, bin
accuracy for the discrete head), predictions.csv with --save_predictions, and trajectories.png.
Columns and definitions: src/pg_vla/eval/offline.py and src/pg_vla/eval/metrics.py.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint_path", required=True, help="checkpoint folder, a run's checkpoints/ folder or its log_dir"
    )
    parser.add_argument(
        "--eval_data_path",
        required=True,
        nargs="+",
        help="Parquet files/globs/folders, one LeRobot dataset folder, or one RLDS data folder",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--source",
        choices=("auto", "parquet", "rlds", "lerobot"),
        default="auto",
        help="data kind (auto: LeRobot for LeRobot dataset folders, Parquet when every path is or "
        "holds .parquet files, else RLDS)",
    )
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="the checkpoint statistics to normalize with (needed when it holds several)",
    )
    parser.add_argument("--mix", default=None, help="RLDS: mix of that one dataset (default: the run's)")
    parser.add_argument("--split", default="val", help="RLDS split (default val)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the flow-matching noise")
    parser.add_argument("--save_predictions", action="store_true", help="write predictions.csv")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:0, ...")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--num_workers", type=int, default=1, help="Parquet reader processes (0: in this process)")
    parser.add_argument(
        "--no_verify",
        dest="verify",
        action="store_false",
        help="skip checking the checkpoint against its manifest.json (sha256 of every file)",
    )
    parser.add_argument("--plot_episodes", type=int, default=3, help="episodes drawn in trajectories.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from pg_vla.eval.offline import OfflineEvalConfig, run

    metrics = run(OfflineEvalConfig(**vars(args)))
    keys = ("num_samples", "mse_normalized", "mae_normalized", "mse", "mae", "accuracy@0.1", "bin_accuracy")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}))


if __name__ == "__main__":
    main()
