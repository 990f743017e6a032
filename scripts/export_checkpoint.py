"""Export a pg-vla checkpoint as a pi0 folder (transformers' PI0 layout, which LeRobot and openpi users read).

Usage:
    uv run scripts/export_checkpoint.py --checkpoint_path CK --output_dir OUT [--dtype float32|bfloat16]

CK is a checkpoint folder (`log_dir/checkpoints/step_N`), a run's checkpoints/ folder or its log_dir
(the newest intact checkpoint). OUT must not exist or be empty. It receives config.json
(model_type pi0), model.safetensors, the normalization statistics, the run's config, the tokenizer
and a model card (pg_vla.model.export). Models pi0's layout cannot express (adaLN time conditioning,
the discrete action head, cond_steps > 1) are refused with the reason, before anything is written.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import sys

import torch

from pg_vla.model.export import export_pi0
from pg_vla.model.paligemma.loading import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--no_verify",
        action="store_true",
        help="skip checking the checkpoint against its manifest.json (sha256 of every file)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="weights dtype of the export (default: the checkpoint's)",
    )
    args = parser.parse_args(argv)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[args.dtype]
    try:
        out = export_pi0(args.checkpoint_path, args.output_dir, dtype=dtype, verify=not args.no_verify)
    except (CheckpointError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
