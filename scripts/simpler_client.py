"""Evaluate a served checkpoint in SimplerEnv: the simulator here, the policy in scripts/serve_policy.py.

Usage (SIMPLER_PY: the simulator venv's python, built by scripts/setup_simpler.sh):
    uv run scripts/serve_policy.py --checkpoint_path CKPT --port 8000 [--dataset_name bridge_dataset] &
    $SIMPLER_PY scripts/simpler_client.py --config config/eval/bridge.yaml [--host 127.0.0.1] [--port 8000]
        [--api_key KEY] [--wait_s 0] [key=value ...]

key=value overrides any key of the eval config, e.g. `env.tasks=[widowx_carrot_on_plate] n_eval_episode=1
n_video=1 log_dir=runs/simpler act_steps=4 env.max_steps=20`. The config's tasks, episodes
(n_eval_episode, seeds eval_seed_start + i), act_steps, videos and log_dir drive the run; log_dir gets
episodes.jsonl, summary.json (with per-step times) and videos/ (see pg_vla.eval.simpler.client).
The CPU-rendering variables setup_simpler.sh wrote into the venv are applied before the simulator starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="eval config: config/eval/bridge.yaml or fractal.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api_key", default=None)
    parser.add_argument("--wait_s", type=float, default=0.0, help="seconds to wait for the server to listen")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the eval config")
    return parser.parse_args(argv)


def load_config(path: str, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise FileNotFoundError(f"eval config {path!r} does not exist (e.g. config/eval/bridge.yaml)")
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))  # the client code is torch-free; no install needed
    from pg_vla.eval.simpler.client import ClientConfig, PolicyConnection, load_render_env, run_evaluation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    load_render_env()
    cfg = ClientConfig.from_dict(load_config(args.config, args.overrides))
    server = PolicyConnection.connect(args.host, args.port, api_key=args.api_key, wait_s=args.wait_s)
    summary = run_evaluation(cfg, server)
    print(json.dumps({k: summary[k] for k in ("per_task", "mean", "episodes", "timing")}, indent=1))
    print(f"wrote {Path(cfg.log_dir) / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
