"""Round-trip latency of the policy server over loopback with the real openpi client.

Usage:
    uv run scripts/bench/serving.py [--config tiny small] [--requests 50] [--warmup 10] [--clients 4]
        [--image_size 224] [--num_threads N] [--device cpu|cuda] [--output FILE]

For each config a random checkpoint folder is generated in a temporary directory (a tiny PaliGemma of
the same-named variant, the preset's action expert, 1 camera, horizon 4, 7-D bridge state/actions),
then scripts/serve_policy.py serves it in a child process on a free 127.0.0.1 port and
`openpi_client.websocket_client_policy.WebsocketClientPolicy` sends observations with one
`image_size` x `image_size` uint8 camera image, a 7-D state, a prompt and a seed.

Reported per config (after `warmup` untimed requests):
    in_process     Policy.infer in this process on the same observation (no network, no server)
    sequential     one client, `requests` requests: round trip measured by the client, the server's
                   server_timing.infer_ms (decode + queue + inference) and policy_timing.infer_ms
                   (Policy.infer_batch), each as median / p99 / mean ms
    concurrent     `clients` clients in threads, `requests` requests each: round trip, throughput,
                   and the batch sizes the server formed
Exactly one JSON document goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pg_vla.policy import Observation, Policy
from pg_vla.serving.launch import ServerProcess
from pg_vla.utils.machine import cpu_model_name

PROMPT = "put the carrot on the plate"
STATE_DIM = 7


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_checkpoint(config_name: str, folder: Path) -> Path:
    """A training checkpoint folder of a random pi0 whose VLM is the `config_name` tiny PaliGemma."""
    from pg_vla.model.paligemma.processing import VLAProcessor
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint
    from pg_vla.model.vla.config import PRESETS
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training.checkpoint import save_training_checkpoint

    variant = {"tiny": "gqa", "small": "small"}[config_name]
    paligemma = make_tiny_paligemma_checkpoint(folder / "paligemma", variant=variant, seed=0)
    torch.manual_seed(0)
    overrides = {
        "proprio_dim": STATE_DIM,
        "action_dim": STATE_DIM,
        "horizon_steps": 4,
        "cond_steps": 1,
        "num_cameras": 1,
        "max_text_tokens": 20,
        "action_expert": dataclasses.asdict(PRESETS[config_name].action_expert),
    }
    model = PiZero.from_paligemma(paligemma, **overrides)
    cfg = model.config
    processor = VLAProcessor.from_pretrained(
        paligemma, max_text_tokens=cfg.max_text_tokens, image_size=cfg.vision.image_size, max_cameras=cfg.num_views
    )
    statistics = Path(__file__).resolve().parents[2] / "config" / "bridge_statistics.json"
    run_config = {
        "data": {"mix": "bridge", "camera_roles": ["primary"], "normalization": "bounds"},
        "model": overrides,
        "seed": 0,
    }
    return save_training_checkpoint(
        folder / "checkpoints",
        1,
        model,
        config=run_config,
        statistics={"bridge_dataset": statistics},
        tokenizer=processor,
    )


def request(rng: np.random.Generator, image_size: int, seed: int) -> dict[str, Any]:
    return {
        "observation/image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
        "observation/state": rng.normal(0, 0.1, STATE_DIM),
        "prompt": PROMPT,
        "seed": seed,
    }


def stats(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values)
    return {
        "median_ms": round(float(np.median(ms)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(values),
    }


def bench_in_process(checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    policy = Policy.from_checkpoint(checkpoint, device=args.device)
    obs = request(np.random.default_rng(0), args.image_size, 0)
    observation = Observation(
        images={"primary": obs["observation/image"]}, state=obs["observation/state"], prompt=PROMPT
    )
    for _ in range(args.warmup):
        policy.infer(observation, seed=0)
    seconds = []
    for i in range(args.requests):
        start = time.perf_counter()
        policy.infer(observation, seed=i)
        seconds.append((time.perf_counter() - start) * 1000.0)
    parameters = sum(p.numel() for p in policy.model.parameters())
    return {"parameters": parameters, "infer": stats(seconds)}


def bench_sequential(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(server.host, server.port)
    rng = np.random.default_rng(1)
    obs = request(rng, args.image_size, 0)
    for _ in range(args.warmup):
        client.infer(obs)
    round_trip, server_ms, policy_ms = [], [], []
    for i in range(args.requests):
        obs["seed"] = i
        start = time.perf_counter()
        reply = client.infer(obs)
        round_trip.append((time.perf_counter() - start) * 1000.0)
        server_ms.append(reply["server_timing"]["infer_ms"])
        policy_ms.append(reply["policy_timing"]["infer_ms"])
    return {
        "round_trip": stats(round_trip),
        "server_infer": stats(server_ms),
        "policy_infer": stats(policy_ms),
        "overhead_median_ms": round(float(np.median(np.subtract(round_trip, policy_ms))), 3),
    }


def bench_concurrent(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    round_trip: list[float] = []
    batch_sizes: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start_together = threading.Barrier(args.clients)

    def worker(index: int) -> None:
        try:
            client = WebsocketClientPolicy(server.host, server.port)
            obs = request(np.random.default_rng(100 + index), args.image_size, 0)
            for _ in range(max(1, args.warmup // args.clients)):
                client.infer(obs)
            start_together.wait()
            for i in range(args.requests):
                obs["seed"] = i
                start = time.perf_counter()
                reply = client.infer(obs)
                with lock:
                    round_trip.append((time.perf_counter() - start) * 1000.0)
                    batch_sizes.append(int(reply["server_timing"]["batch_size"]))
        except BaseException as err:  # noqa: BLE001 - reported in the JSON
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        return {"error": f"{type(errors[0]).__name__}: {errors[0]}"}
    sizes = np.asarray(batch_sizes)
    return {
        "clients": args.clients,
        "round_trip": stats(round_trip),
        "requests_per_s": round(len(round_trip) / elapsed, 2),
        "mean_batch_size": round(float(sizes.mean()), 2),
        "max_batch_size": int(sizes.max()),
    }


def bench_config(config_name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    log(f"{config_name}: generating a checkpoint")
    checkpoint = make_checkpoint(config_name, workdir / config_name)
    entry: dict[str, Any] = {"config": config_name}
    log(f"{config_name}: in-process Policy.infer")
    entry["in_process"] = bench_in_process(checkpoint, args)
    server_args = ["--checkpoint_path", str(checkpoint), "--device", args.device, "--log_level", "WARNING"]
    if args.num_threads:
        server_args += ["--num_threads", str(args.num_threads)]
    with ServerProcess(server_args, log_path=workdir / f"{config_name}_server.log") as server:
        log(f"{config_name}: server on port {server.port}; sequential requests")
        rss_start = server.rss_mib()
        entry["sequential"] = bench_sequential(server, args)
        entry["sequential"]["server_rss_growth_mib"] = round(server.rss_mib() - rss_start, 1)
        if args.clients > 1:
            log(f"{config_name}: {args.clients} concurrent clients")
            entry["concurrent"] = bench_concurrent(server, args)
        entry["server_rss_mib"] = round(server.rss_mib(), 1)
    return entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--requests", type=int, default=50, help="timed requests (per client when concurrent)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (1: skip that part)")
    parser.add_argument("--image_size", type=int, default=224, help="side of the square camera image sent")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads of the server and this process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    document: dict[str, Any] = {
        "header": {
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "num_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "options": vars(args),
        },
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="pg_vla_bench_serving_") as tmp:
        for config_name in args.config:
            document["results"].append(bench_config(config_name, args, Path(tmp)))
    document["header"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(document, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
