"""Write small synthetic RLDS datasets in the exact fractal and bridge schemas (train and val splits).

Usage:
    uv run scripts/data/make_synthetic_rlds.py --output_dir DIR
        [--datasets fractal20220817_data bridge_dataset] [--episodes_per_split 8]
        [--steps 10 20] [--image_size H W] [--num_shards 2] [--seed 0]
        [--empty_language_fraction F] [--overwrite]

Each dataset lands in DIR/<name>/<version> (bridge_dataset/1.0.0, fractal20220817_data/0.1.0) and
opens with `tfds.builder_from_directory`. Episodes have a random number of steps in [MIN, MAX]
(`--steps MIN MAX`); the output is fully determined by `--seed`. Without `--image_size` each dataset
uses its release resolution (bridge 256x256, fractal 256x320). `--empty_language_fraction` sets the
share of episodes without a language instruction (default: 0.25 for bridge, 0 for fractal).
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure(native_logs=True)  # before the libraries load (tensorflow runs in this process)

import argparse
import sys

from pg_vla.data.rlds.schemas import BRIDGE_NAME, FRACTAL_NAME
from pg_vla.data.rlds.synthetic import make_synthetic_bridge, make_synthetic_fractal

MAKERS = {FRACTAL_NAME: make_synthetic_fractal, BRIDGE_NAME: make_synthetic_bridge}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="root data dir (datasets go to <dir>/<name>/<version>)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(MAKERS), default=[FRACTAL_NAME, BRIDGE_NAME])
    parser.add_argument("--episodes_per_split", type=int, default=8)
    parser.add_argument(
        "--steps",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=[10, 20],
        help="episode length range, drawn uniformly per episode",
    )
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--num_shards", type=int, default=2, help="shards per split (at most episodes_per_split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--empty_language_fraction", type=float, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    args = parser.parse_args(argv)

    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()

    for name in args.datasets:
        kwargs = dict(
            episodes_per_split=args.episodes_per_split,
            min_steps=args.steps[0],
            max_steps=args.steps[1],
            num_shards=args.num_shards,
            seed=args.seed,
            overwrite=args.overwrite,
        )
        if args.image_size is not None:
            kwargs["image_size"] = tuple(args.image_size)
        if args.empty_language_fraction is not None:
            kwargs["empty_language_fraction"] = args.empty_language_fraction
        try:
            path = MAKERS[name](args.output_dir, **kwargs)
        except (FileExistsError, ValueError) as err:
            sys.exit(f"error: {name}: {err}")
        print(f"wrote {name} to {path}")


if __name__ == "__main__":
    main()
