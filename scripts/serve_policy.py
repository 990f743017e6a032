"""Serve a pg-vla checkpoint to robots and simulators over openpi's websocket protocol.

Usage:
    uv run scripts/serve_policy.py --checkpoint_path CKPT [--host 127.0.0.1] [--port 8000] [--use_bf16]
        [--use_torch_compile] [--api_key KEY] [--max_message_mb 32] [--dataset_name NAME]
        [--obs_keys config/serve/default.yaml] [--max_batch_size 8] [--max_connections 64] [--device cpu|cuda]
        [--num_threads N] [--decode_threads 2] [--connection_mb_per_s 128] [--connection_requests_per_s 200]
        [--max_limit_violations 3] [--no_verify]

Clients: `openpi_client.websocket_client_policy.WebsocketClientPolicy(host, port, api_key=KEY)`;
`get_server_metadata()` describes the request keys, `infer(obs)` returns {"actions": (H, A), ...}.
Request keys come from --obs_keys (default: config/serve/default.yaml, openpi's "observation/image",
"observation/wrist_image", "observation/state", "prompt", optional integer "seed").

The model answers one dummy observation before the socket opens, so the first client is not slow.
Once listening, one line "listening on ws://HOST:PORT" goes to stdout (with --port 0 the port is
chosen by the system); logs go to stderr. SIGINT/SIGTERM stop the server.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pg_vla.policy import NonFiniteActionsError, Observation, Policy
from pg_vla.serving.observations import ObservationKeys
from pg_vla.serving.server import MIB, PolicyServer, ServerConfig
from pg_vla.utils.devices import resolve_device

DEFAULT_OBS_KEYS = Path(__file__).resolve().parents[1] / "config" / "serve" / "default.yaml"
log = logging.getLogger("serve_policy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint_path", required=True, help="checkpoint folder, or a run's checkpoints/ or log_dir"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--use_bf16", action="store_true", help="bfloat16 weights")
    parser.add_argument("--use_torch_compile", action="store_true", help="torch.compile the model (slow start)")
    parser.add_argument("--api_key", default=None, help="require the header 'Authorization: Api-Key KEY'")
    parser.add_argument("--max_message_mb", type=float, default=32.0, help="largest accepted request in MiB")
    parser.add_argument("--dataset_name", default=None, help="statistics to use when the run mixed datasets")
    parser.add_argument("--obs_keys", default=str(DEFAULT_OBS_KEYS), help="YAML mapping of request keys")
    parser.add_argument("--max_batch_size", type=int, default=8, help="most waiting requests run as one batch")
    parser.add_argument("--max_connections", type=int, default=64, help="open connections beyond this get HTTP 503")
    parser.add_argument("--decode_threads", type=int, default=2, help="threads decoding requests (all connections)")
    parser.add_argument(
        "--connection_mb_per_s", type=float, default=128.0, help="MiB per second one connection may send, sustained"
    )
    parser.add_argument(
        "--connection_requests_per_s",
        type=float,
        default=200.0,
        help="requests per second one connection may send, sustained",
    )
    parser.add_argument(
        "--max_limit_violations",
        type=int,
        default=3,
        help="messages beyond the decoding limits before a connection is closed (code 1008)",
    )
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--no_verify",
        action="store_true",
        help="skip checking the checkpoint against its manifest.json (sha256 of every file)",
    )
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def warm_up(policy: Policy) -> float:
    """One inference on a blank observation of the expected sizes; -> its milliseconds."""
    size = policy.config.vision.image_size
    blank = Observation(
        images={role: np.zeros((size, size, 3), np.uint8) for role in policy.camera_roles},
        state=np.zeros(policy.state_dim),
        prompt="warm up",
    )
    start = time.perf_counter()
    policy.infer(blank, seed=0)
    return (time.perf_counter() - start) * 1000.0


async def run(server: PolicyServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(host: str, port: int) -> None:
        print(f"listening on ws://{host}:{port}", flush=True)
        log.info("serving %s on ws://%s:%d", server.policy.name, host, port)

    await server.serve(stop, on_ready=ready)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        device = resolve_device(args.device)
        keys = ObservationKeys.load(args.obs_keys)
        config = ServerConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            max_message_bytes=int(args.max_message_mb * MIB),
            max_batch_size=args.max_batch_size,
            max_connections=args.max_connections,
            decode_threads=args.decode_threads,
            connection_bytes_per_s=args.connection_mb_per_s * MIB,
            connection_messages_per_s=args.connection_requests_per_s,
            max_limit_violations=args.max_limit_violations,
        )
        policy = Policy.from_checkpoint(
            args.checkpoint_path,
            device=device,
            dtype="bfloat16" if args.use_bf16 else None,
            compile=args.use_torch_compile,
            dataset_name=args.dataset_name,
            verify=not args.no_verify,
        )
        server = PolicyServer(policy, keys, config, checkpoint=str(args.checkpoint_path))
    except (OSError, ValueError) as err:  # missing files, bad checkpoint (CheckpointError), bad key file
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("loaded %s on %s (%s); warming up", policy.name, device, policy.dtype)
    try:
        log.info("warm-up inference: %.1f ms", warm_up(policy))
    except NonFiniteActionsError as err:  # a broken model is refused before any robot connects
        print(f"error: {args.checkpoint_path}: {err} (on a blank observation); not serving it", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(server))
    except OSError as err:  # e.g. the port is taken
        print(f"error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
