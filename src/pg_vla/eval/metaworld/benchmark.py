"""The Meta-World benchmark's report: one JSON and one markdown table from a benchmark folder.

scripts/bench/metaworld_benchmark.sh leaves in OUT:
    demos.json               the demonstration generator's summary (episodes, per_task, failed, steps, seconds)
    train/log.jsonl          the trainer's log (step, samples_per_s, val_loss, ...)
    eval_<policy>/summary.json  one per evaluated policy: the checkpoint and the floors (expert, zero, random, replay)

    python -m pg_vla.eval.metaworld.benchmark OUT --train_seconds S [--eval_seconds E]
        -> OUT/benchmark.json and OUT/benchmark.md (also printed)

benchmark.json: per policy the per-task success rates, the mean, episodes per task and evaluation seeds;
the demonstrations (per task, failed seeds); training wall time, steps and steps/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

POLICY_ORDER = ("checkpoint", "expert", "zero", "random", "replay")
POLICY_LABELS = {
    "checkpoint": "pi0 small (trained here)",
    "expert": "expert (scripted, reads the full state)",
    "zero": "zero action",
    "random": "uniform random action",
    "replay": "replay (another seed's expert actions, blind)",
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: did that benchmark step run?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _training(train_dir: Path, train_seconds: float | None) -> dict[str, Any]:
    """Steps, last validation loss and throughput from the trainer's log.jsonl."""
    log = train_dir / "log.jsonl"
    if not log.is_file():
        return {"seconds": train_seconds}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = max((r["step"] for r in records), default=0)
    val = [r for r in records if r.get("val_loss") is not None]
    out: dict[str, Any] = {"steps": steps, "seconds": train_seconds}
    if train_seconds:
        out["steps_per_s"] = round(steps / train_seconds, 3)  # wall clock, start-up included
    if val:
        out["last_val_loss"] = val[-1]["val_loss"]
    return out


def collect(out_dir: str | Path, train_seconds: float | None = None, eval_seconds: float | None = None) -> dict:
    """-> the benchmark result of one folder (see the module docstring)."""
    out = Path(out_dir)
    policies: dict[str, Any] = {}
    for folder in sorted(out.glob("eval_*")):
        summary = _read_json(folder / "summary.json")
        policies[folder.name.removeprefix("eval_")] = {
            "per_task": summary["per_task"],
            "mean": summary["mean"],
            "episodes_per_task": summary["n_eval_episode"],
            "eval_seeds": [summary["eval_seed_start"], summary["eval_seed_start"] + summary["n_eval_episode"] - 1],
            "act_steps": summary.get("act_steps"),
            "temporal_ensemble_k": summary.get("temporal_ensemble_k"),
            "seconds": summary.get("seconds"),
        }
    if not policies:
        raise FileNotFoundError(f"no eval_<policy>/summary.json under {out}")
    demos = _read_json(out / "demos.json") if (out / "demos.json").is_file() else None
    return {
        "tasks": list(next(iter(policies.values()))["per_task"]),
        "demonstrations": demos and {k: demos[k] for k in ("episodes", "per_task", "failed", "steps", "seconds")},
        "training": _training(out / "train", train_seconds),
        "eval_seconds": eval_seconds,
        "policies": policies,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """One row per policy (the checkpoint first, then the floors): success per task, mean, episodes per task."""
    tasks = result["tasks"]
    names = [p for p in POLICY_ORDER if p in result["policies"]] + sorted(set(result["policies"]) - set(POLICY_ORDER))
    lines = [
        "| policy | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " | mean | episodes per task |",
        "| --- | " + " | ".join("---:" for _ in tasks) + " | ---: | ---: |",
    ]
    for name in names:
        row = result["policies"][name]
        cells = [f"{100 * row['per_task'][t]:.0f}%" for t in tasks]
        mean = f"{100 * row['mean']:.1f}%"
        label = POLICY_LABELS.get(name, name)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {row['episodes_per_task']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Meta-World benchmark report: OUT/benchmark.json and benchmark.md")
    parser.add_argument("out_dir")
    parser.add_argument("--train_seconds", type=float, default=None, help="training wall time (the script's clock)")
    parser.add_argument("--eval_seconds", type=float, default=None, help="evaluation wall time, all policies")
    args = parser.parse_args(argv)
    result = collect(args.out_dir, args.train_seconds, args.eval_seconds)
    table = markdown_table(result)
    Path(args.out_dir, "benchmark.json").write_text(json.dumps(result, indent=1))
    Path(args.out_dir, "benchmark.md").write_text(table + "\n")
    print(table)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
