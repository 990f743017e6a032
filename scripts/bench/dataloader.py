"""Throughput (frames/s) and memory (peak RSS) of the RLDS training loader over shuffle buffers and threads.

Usage:
    uv run scripts/bench/dataloader.py (--data_path DIR | --synthetic_dir DIR [--episodes 200]
        [--image_size 256 256] [--steps 20 40] [--num_shards 16] [--regenerate])
        [--mix bridge] [--split train] [--shuffle_buffers 1000 10000 50000] [--threads 1 2 4]
        [--batch_size 16] [--num_batches 50] [--warmup_batches 5] [--windows 5] [--target_size 224]
        [--camera_roles primary] [--statistics_dir DIR] [--timeout_s 900] [--output FILE]

Examples:
    uv run scripts/bench/dataloader.py --synthetic_dir /tmp/bench_rlds --episodes 400 --image_size 256 256
    uv run scripts/bench/dataloader.py --data_path /data/rlds --mix oxe_simple --shuffle_buffers 100000 --threads 8

Data: `--data_path` points at a root holding the mix's datasets (`<root>/<name>/<version>`);
`--synthetic_dir` writes (or reuses, if already there) synthetic datasets of the mix
(`pg_vla.data.rlds.synthetic`, train split only) with `--episodes` episodes of `--steps MIN MAX`
steps and camera images of `--image_size H W`.

What is measured: for every (shuffle_buffer, threads) combination a FRESH Python process builds
`pg_vla.data.rlds.pipeline.make_dataset(RLDSConfig(train=True, shuffle_buffer=S, read_threads=T,
transform_threads=T, image_size=--target_size, batch_size=...))` and iterates it the way the
training loader does (`to_numpy_batch` on every batch):

    time_to_first_batch_s   make_dataset + the first batch: building the pipeline and filling the
                            shuffle buffer (tf.data fills it completely before the first element)
    warm-up                 `--warmup_batches` batches in all (the first included), untimed
    rss_after_warmup_mib    resident memory once the buffer is full and the pipeline runs
    timing                  `--num_batches` batches split into `--windows` equal windows; frames/s
                            per window, `frames_per_s` is their median
    peak_rss_mib            ru_maxrss of the process at the end (a high-water mark: the interpreter,
                            TensorFlow, the shuffle buffer of encoded frames, prefetched batches)

Normalization statistics are computed (or found in their cache) once, in a separate process before
the grid, so no configuration pays for them. Every configuration process runs with
TF_CPP_MIN_LOG_LEVEL=2 and is killed after `--timeout_s` (reported as an error).

Exactly one JSON document goes to stdout: a `header` (date, CPU, core counts, load average, the
command line, versions, options, dataset summary) and `results`, one entry per configuration.
Progress goes to stderr. When the shuffle buffer is larger than the split's frame count, the
buffer holds repeated frames (the training stream repeats the dataset); the header gives the count.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pg_vla.utils.machine import cpu_model_name, current_rss_mib, load_average, peak_rss_mib


def log(message: str) -> None:
    print(f"[bench-loader] {message}", file=sys.stderr, flush=True)


# ---- measurements inside one fresh process --------------------------------------------------------
def rlds_kwargs(spec: dict) -> dict:
    return dict(
        data_path=spec["data_path"],
        mix=spec["mix"],
        split=spec["split"],
        train=True,
        camera_roles=tuple(spec["camera_roles"]),
        image_size=spec["target_size"],
        batch_size=spec["batch_size"],
        shuffle_buffer=spec.get("shuffle_buffer", 1000),
        read_threads=spec.get("threads", 1),
        transform_threads=spec.get("threads", 1),
        statistics_dir=spec["statistics_dir"],
        seed=spec.get("seed", 0),
    )


def child_statistics(spec: dict) -> dict:
    """Compute or load the mix's statistics (cached for the measuring processes)."""
    start = time.perf_counter()
    from pg_vla.data.rlds.config import RLDSConfig
    from pg_vla.data.rlds.pipeline import prepare_mix

    info = prepare_mix(RLDSConfig(**rlds_kwargs(spec)))
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "datasets": {
            name: {
                "statistics_path": str(info.statistics_paths[name]),
                "trajectories": info.statistics[name].num_trajectories,
                "frames": info.statistics[name].num_transitions,
                "weight": weight,
            }
            for name, weight in zip(info.datasets, info.weights)
        },
    }


def child_measure(spec: dict) -> dict:
    """One configuration: time to first batch, warm-up, timed windows, RSS."""
    start = time.perf_counter()
    from pg_vla.data.rlds.config import RLDSConfig
    from pg_vla.data.rlds.pipeline import make_dataset, prepare_mix, to_numpy_batch

    import_s = time.perf_counter() - start
    rlds = RLDSConfig(**rlds_kwargs(spec))
    start = time.perf_counter()
    info = prepare_mix(rlds)  # cached by the statistics process: only loads JSON files
    statistics_s = time.perf_counter() - start
    rss_before = current_rss_mib()

    start = time.perf_counter()
    ds, _ = make_dataset(rlds, info=info)
    iterator = iter(ds)
    first = to_numpy_batch(next(iterator))
    time_to_first_batch = time.perf_counter() - start
    batch_frames = len(first["language"])
    for _ in range(max(spec["warmup_batches"] - 1, 0)):
        to_numpy_batch(next(iterator))
    warmup_s = time.perf_counter() - start
    rss_after_warmup = current_rss_mib()
    peak_after_warmup = peak_rss_mib()

    windows = max(1, min(spec["windows"], spec["num_batches"]))
    per_window = [spec["num_batches"] // windows + (i < spec["num_batches"] % windows) for i in range(windows)]
    rates, frames_total, timed_s = [], 0, 0.0
    for count in per_window:
        frames = 0
        t0 = time.perf_counter()
        for _ in range(count):
            batch = to_numpy_batch(next(iterator))
            frames += len(batch["language"])
        dt = time.perf_counter() - t0
        rates.append(frames / dt)
        frames_total += frames
        timed_s += dt
    return {
        "shuffle_buffer": spec["shuffle_buffer"],
        "threads": spec["threads"],
        "frames_per_s": round(statistics.median(rates), 1),
        "frames_per_s_windows": [round(r, 1) for r in rates],
        "frames_per_s_overall": round(frames_total / timed_s, 1),
        "batches_timed": sum(per_window),
        "frames_timed": frames_total,
        "batch_frames": batch_frames,
        "time_to_first_batch_s": round(time_to_first_batch, 2),
        "warmup_batches": spec["warmup_batches"],
        "warmup_s": round(warmup_s, 2),
        "rss_before_pipeline_mib": None if rss_before is None else round(rss_before, 1),
        "rss_after_warmup_mib": None if rss_after_warmup is None else round(rss_after_warmup, 1),
        "peak_rss_after_warmup_mib": round(peak_after_warmup, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "import_s": round(import_s, 2),
        "statistics_load_s": round(statistics_s, 2),
        "image_shape": list(first["images"].shape[1:]),
    }


def child_main(task: str, spec_json: str, result_path: str) -> None:
    spec = json.loads(spec_json)
    result = child_statistics(spec) if task == "statistics" else child_measure(spec)
    Path(result_path).write_text(json.dumps(result))


# ---- orchestration ----------------------------------------------------------------------------------
def run_child(task: str, spec: dict, timeout_s: float) -> dict:
    """Run one task in a fresh interpreter; its result, or {"error": ...}."""
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as scratch:
        result_path = Path(scratch) / "result.json"
        command = [sys.executable, os.path.abspath(__file__), "--_child", task, json.dumps(spec), str(result_path)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as err:
            tail = (err.stderr or b"")[-2000:]
            return {
                "error": f"timed out after {timeout_s:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
            }
        wall = time.perf_counter() - start
        if done.returncode != 0 or not result_path.is_file():
            return {"error": f"exit status {done.returncode}", "stderr_tail": done.stderr[-2000:]}
        result = json.loads(result_path.read_text())
        result["process_wall_s"] = round(wall, 2)
        return result


def ensure_synthetic(args: argparse.Namespace) -> str:
    """Write (or reuse) synthetic datasets of the mix under --synthetic_dir; return the data root."""
    from pg_vla.data.rlds.dataset_configs import get_dataset_config, get_mix
    from pg_vla.data.rlds.schemas import BRIDGE_NAME, FRACTAL_NAME

    root = Path(args.synthetic_dir)
    for name in get_mix(args.mix):
        cfg = get_dataset_config(name)
        folder = root / cfg.name / cfg.version
        if folder.is_dir() and not args.regenerate:
            info = json.loads((folder / "dataset_info.json").read_text())
            counts = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
            if counts.get(args.split) != args.episodes:
                raise SystemExit(
                    f"error: {folder} holds {counts} episodes, not {args.episodes} in {args.split!r}: "
                    "pass --regenerate or another --synthetic_dir"
                )
            log(f"reusing {folder} ({counts[args.split]} episodes in {args.split!r})")
            continue
        from pg_vla.data.rlds import synthetic

        makers = {BRIDGE_NAME: synthetic.make_synthetic_bridge, FRACTAL_NAME: synthetic.make_synthetic_fractal}
        if name not in makers:
            raise SystemExit(f"error: no synthetic generator for {name!r}")
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        log(
            f"writing synthetic {name}: {args.episodes} episodes of {args.steps[0]}-{args.steps[1]} steps, "
            f"images {args.image_size[0]}x{args.image_size[1]} ..."
        )
        start = time.perf_counter()
        saved = os.dup(1)
        os.dup2(2, 1)  # TFDS prints to stdout; stdout is for the JSON document only
        try:
            makers[name](
                root,
                episodes_per_split=args.episodes,
                splits=(args.split,),
                min_steps=args.steps[0],
                max_steps=args.steps[1],
                image_size=tuple(args.image_size),
                num_shards=args.num_shards,
                seed=args.seed,
                overwrite=True,
            )
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log(f"wrote {folder} in {time.perf_counter() - start:.1f} s")
    return str(root)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _folder_bytes(root: str, mix: str) -> dict[str, int]:
    from pg_vla.data.rlds.dataset_configs import get_dataset_config, get_mix

    out = {}
    for name in get_mix(mix):
        cfg = get_dataset_config(name)
        folder = Path(root) / cfg.name / cfg.version
        out[name] = sum(p.stat().st_size for p in folder.glob("*.tfrecord-*")) if folder.is_dir() else 0
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        child_main(*argv[1:4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_path", help="root holding <name>/<version> of the mix's datasets")
    source.add_argument("--synthetic_dir", help="write/reuse synthetic datasets of the mix here")
    parser.add_argument("--episodes", type=int, default=200, help="synthetic: episodes in the split")
    parser.add_argument(
        "--image_size", type=int, nargs=2, metavar=("H", "W"), default=[256, 256], help="synthetic: camera image size"
    )
    parser.add_argument(
        "--steps", type=int, nargs=2, metavar=("MIN", "MAX"), default=[20, 40], help="synthetic: episode length range"
    )
    parser.add_argument("--num_shards", type=int, default=16, help="synthetic: shard files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regenerate", action="store_true", help="synthetic: rewrite even if present")
    parser.add_argument("--mix", default="bridge")
    parser.add_argument("--split", default="train")
    parser.add_argument("--shuffle_buffers", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="read_threads = transform_threads")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=50, help="timed batches per configuration")
    parser.add_argument("--warmup_batches", type=int, default=5, help="untimed batches, the first included")
    parser.add_argument("--windows", type=int, default=5, help="timing windows (frames/s = their median)")
    parser.add_argument("--target_size", type=int, default=224, help="RLDSConfig.image_size")
    parser.add_argument("--camera_roles", nargs="+", default=["primary"])
    parser.add_argument("--statistics_dir", default=None, help="default: the pipeline's cache location")
    parser.add_argument("--timeout_s", type=float, default=900.0, help="per configuration process")
    parser.add_argument("--output", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.num_batches < 1 or args.warmup_batches < 1 or args.windows < 1:
        parser.error("--num_batches, --warmup_batches and --windows must be >= 1")

    started = time.perf_counter()
    header: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "load_average": load_average(),
        "python_version": platform.python_version(),
        "tensorflow_version": _version("tensorflow"),
        "tensorflow_datasets_version": _version("tensorflow-datasets"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "options": vars(args),
    }
    data_path = args.data_path or ensure_synthetic(args)
    base = {
        "data_path": data_path,
        "mix": args.mix,
        "split": args.split,
        "camera_roles": args.camera_roles,
        "target_size": args.target_size,
        "batch_size": args.batch_size,
        "statistics_dir": args.statistics_dir,
        "seed": args.seed,
        "num_batches": args.num_batches,
        "warmup_batches": args.warmup_batches,
        "windows": args.windows,
    }
    log("statistics (computed once, or loaded from the cache) ...")
    stats = run_child("statistics", {**base, "threads": max(args.threads)}, args.timeout_s)
    if "error" in stats:
        print(json.dumps({"header": header, "statistics": stats, "results": []}, indent=2))
        raise SystemExit(f"error: statistics failed: {stats['error']}")
    header["data_path"] = data_path
    header["dataset"] = {
        name: {**entry, "tfrecord_bytes": _folder_bytes(data_path, args.mix)[name]}
        for name, entry in stats["datasets"].items()
    }
    header["statistics_s"] = stats["seconds"]

    results = []
    for buffer in args.shuffle_buffers:
        for threads in args.threads:
            log(f"shuffle_buffer={buffer} threads={threads} ...")
            result = run_child("measure", {**base, "shuffle_buffer": buffer, "threads": threads}, args.timeout_s)
            if "error" in result:
                result = {"shuffle_buffer": buffer, "threads": threads, **result}
                log(f"  failed: {result['error']}")
            else:
                log(
                    f"  {result['frames_per_s']} frames/s, first batch {result['time_to_first_batch_s']} s, "
                    f"peak RSS {result['peak_rss_mib']:.0f} MiB"
                )
            results.append(result)
    header["load_average_at_end"] = load_average()
    header["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps({"header": header, "results": results}, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        log(f"wrote {args.output}")
    print(text, flush=True)


if __name__ == "__main__":
    main()
