"""What resuming a run costs at step k: restored stream position vs replaying the consumed batches.

Trains the quickstart's tiny model on generated data (RLDS in the bridge schema, or the same episodes
as Parquet) to each step k once, then times, in fresh processes and alternating the ks, a resume to
step k + 1: the `Trainer.run()` wall time (model build, loader start, stream restore, one step, the
final save) and the part from the restored checkpoint to the end of that step (loader start, stream
restore or replay, one step). `--replay` also times the same
checkpoints with their stream position removed, which makes the trainer replay the consumed
batches (what checkpoints without a position cost). Prints one JSON object with medians.

    uv run scripts/bench/resume.py [--source rlds|parquet] [--steps 2 200] [--rounds 3] [--replay]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def config(args: argparse.Namespace, work: Path, log_dir: Path, n_updates: int, save_every: int) -> dict:
    data_path, model_path = work / "data", work / "model"
    data = (
        {
            "source": "rlds",
            "data_path": str(data_path),
            "mix": "bridge",
            "shuffle_buffer": args.shuffle_buffer,
            "read_threads": 1,
            "transform_threads": 1,
            "deterministic": True,
        }
        if args.source == "rlds"
        else {
            "source": "parquet",
            "paths": [str(work / "parquet")],
            "num_workers": 1,
            "shuffle_buffer": args.shuffle_buffer,
        }
    )
    return {
        "pretrained_model_path": str(model_path),
        "log_dir": str(log_dir),
        "n_updates": n_updates,
        "seed": 0,
        "global_batch_size": args.batch_size,
        "per_device_batch_size": args.batch_size,
        "device": "cpu",
        "log_every": 1,
        "save_every": save_every,
        "keep_last_n": None,
        "model": {
            "max_text_tokens": 12,
            "horizon_steps": 4,  # the quickstart's sizes
            "action_expert": {"hidden_size": 128, "intermediate_size": 512},
        },
        "optimizer": {"name": "adamw"},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "validation": {"every": None},
        "wandb": {"mode": "disabled"},
        "data": data,
    }


def prepare(args: argparse.Namespace, work: Path) -> None:
    from pg_vla.training.quickstart import prepare as quickstart_data

    data_path, model_path = quickstart_data(work / "cache", episodes=args.episodes, image_size=32)
    os.symlink(data_path, work / "data")
    os.symlink(model_path, work / "model")
    if args.source == "parquet":
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts/data/rlds_to_parquet.py"),
                "--data_path",
                str(data_path),
                "--dataset_name",
                "bridge_dataset",
                "--split",
                "train",
                "--output_dir",
                str(work / "parquet"),
            ],
            check=True,
            capture_output=True,
        )


def one_resume(cfg_path: Path) -> None:
    """In a fresh process: resume the config's run by one step, print the timings as JSON. The log's
    `resumed` record is written once the checkpoint is loaded, before the loader starts; the step's
    record after its optimizer step."""
    from pg_vla.training.config import TrainConfig
    from pg_vla.training.trainer import Trainer

    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    tic = time.time()
    Trainer(cfg).run()
    toc = time.time()
    records = [json.loads(line) for line in (Path(cfg.log_dir) / "log.jsonl").read_text().splitlines()]
    resumed = next(r for r in records if r.get("event") == "resumed")
    step = next(r for r in records if r.get("step") == cfg.n_updates and "loss" in r)
    print(
        json.dumps(
            {
                "run_s": toc - tic,
                "stream_and_step_s": step["time"] - resumed["time"],
                "data_stream": resumed["data_stream"],
            }
        )
    )


def drop_stream_position(checkpoint: Path) -> None:
    """The checkpoint as one written without a stream position (its manifest rewritten to match)."""
    from pg_vla.checkpoint_folder import DATA_STREAM_DIR, checkpoint_step, write_manifest

    shutil.rmtree(checkpoint / DATA_STREAM_DIR)
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint, checkpoint_step(checkpoint))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("rlds", "parquet"), default="rlds")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--shuffle_buffer", type=int, default=500)
    parser.add_argument("--replay", action="store_true", help="also time resuming without the stream position")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one_resume(args.one)

    from pg_vla.training.config import TrainConfig
    from pg_vla.training.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="resume_bench_"))
    prepare(args, work)
    checkpoints = {}
    for k in args.steps:  # the runs to resume: one checkpoint at step k each
        Trainer(TrainConfig.from_dict(config(args, work, work / f"run_{k}", k, k))).run()
        checkpoints[k] = work / f"run_{k}" / "checkpoints" / f"step_{k:06d}"
        if args.replay:
            shutil.copytree(checkpoints[k], work / f"replay_{k}" / "checkpoints" / checkpoints[k].name)
            drop_stream_position(work / f"replay_{k}" / "checkpoints" / checkpoints[k].name)
    modes = ["restored", "replayed"] if args.replay else ["restored"]
    times: dict[str, dict[int, list[dict]]] = {m: {k: [] for k in args.steps} for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            for k in args.steps:
                source = (
                    checkpoints[k]
                    if mode == "restored"
                    else (work / f"replay_{k}" / "checkpoints" / checkpoints[k].name)
                )
                cfg = config(args, work, work / f"resume_{mode}_{k}_{r}", k + 1, k + 1)
                cfg["resume_checkpoint_path"] = str(source)
                path = work / f"resume_{mode}_{k}_{r}.json"
                path.write_text(json.dumps(cfg))
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(path)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                )
                times[mode][k].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {
        "source": args.source,
        "batch_size": args.batch_size,
        "shuffle_buffer": args.shuffle_buffer,
        "rounds": args.rounds,
        "torch_threads": __import__("torch").get_num_threads(),
        "cpu_count": os.cpu_count(),
        "resume": {
            mode: {
                str(k): {
                    "batches_consumed": k,
                    "median_run_s": statistics.median(t["run_s"] for t in v),
                    "median_stream_and_step_s": statistics.median(t["stream_and_step_s"] for t in v),
                    "data_stream": sorted({t["data_stream"] for t in v}),
                }
                for k, v in per_k.items()
            }
            for mode, per_k in times.items()
        },
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
