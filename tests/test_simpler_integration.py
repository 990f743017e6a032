"""Real SimplerEnv episodes through scripts/serve_policy.py + scripts/simpler_client.py (marker `simpler`).

They need the simulator venv (scripts/setup_simpler.sh): its python from PG_VLA_SIMPLER_PYTHON, else
~/.cache/pg_vla/simpler-venv/bin/python; without it they are skipped. A random tiny pi0 per robot (the
bridge 7-D / fractal 8-D proprio with the published statistics) is served on CPU; one episode of each
task of config/eval/bridge.yaml and fractal.yaml runs PG_VLA_SIMPLER_TEST_STEPS control steps (default
8; success is not expected), writes its video, and its success is the env's own info["success"].
On CPU the drawer tasks take minutes to build (ray-traced shaders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIMPLER_PYTHON = Path.home() / ".cache" / "pg_vla" / "simpler-venv" / "bin" / "python"
SIMPLER_PYTHON = Path(os.environ.get("PG_VLA_SIMPLER_PYTHON", DEFAULT_SIMPLER_PYTHON))
STEPS = int(os.environ.get("PG_VLA_SIMPLER_TEST_STEPS", "8"))
STATISTICS = {"widowx": ("bridge", "bridge_dataset", 7), "google_robot": ("fractal", "fractal20220817_data", 8)}

pytestmark = [
    pytest.mark.simpler,
    pytest.mark.skipif(
        not SIMPLER_PYTHON.is_file(),
        reason=f"no SimplerEnv venv at {SIMPLER_PYTHON} (build it with scripts/setup_simpler.sh "
        "or point PG_VLA_SIMPLER_PYTHON at its python)",
    ),
]


def config_tasks(name: str) -> list[str]:
    return list(yaml.safe_load((ROOT / "config" / "eval" / f"{name}.yaml").read_text())["env"]["tasks"])


def make_checkpoint(folder: Path, paligemma: Path, robot: str) -> Path:
    """A random tiny pi0 training checkpoint taking this robot's proprio and 7-D actions."""
    import torch

    from pg_vla.model.paligemma.processing import VLAProcessor
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training.checkpoint import save_training_checkpoint

    mix, dataset, state_dim = STATISTICS[robot]
    torch.manual_seed(0)
    model_options = {
        "proprio_dim": state_dim,
        "action_dim": 7,
        "horizon_steps": 4,
        "cond_steps": 1,
        "num_cameras": 1,
        "max_text_tokens": 12,
        "action_expert": {"hidden_size": 32, "intermediate_size": 64},
    }
    model = PiZero.from_paligemma(paligemma, **model_options)
    processor = VLAProcessor.from_pretrained(
        paligemma, max_text_tokens=12, image_size=model.config.vision.image_size, max_cameras=1
    )
    config = {
        "data": {"mix": mix, "camera_roles": ["primary"], "normalization": "bounds"},
        "model": model_options,
        "seed": 0,
    }
    return save_training_checkpoint(
        folder / "checkpoints",
        1,
        model,
        config=config,
        statistics={dataset: ROOT / "config" / f"{mix}_statistics.json"},
        tokenizer=processor,
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path):
    from pg_vla.serving.launch import ServerProcess

    running = {}
    try:
        for robot, (_, dataset, _) in STATISTICS.items():
            folder = tmp_path_factory.mktemp(f"simpler_{robot}")
            checkpoint = make_checkpoint(folder, tiny_checkpoint_dir, robot)
            server = ServerProcess(
                ["--checkpoint_path", str(checkpoint), "--device", "cpu", "--no_verify", "--dataset_name", dataset],
                log_path=folder / "server.log",
            )
            running[robot] = server.start().wait_ready()
        yield running
    finally:
        for server in running.values():
            server.stop()


def run_client(server, config: str, task: str, log_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        str(SIMPLER_PYTHON),
        str(ROOT / "scripts" / "simpler_client.py"),
        "--config",
        config,
        "--host",
        server.host,
        "--port",
        str(server.port),
        f"env.tasks=[{task}]",
        "n_eval_episode=1",
        "n_video=1",
        f"env.max_steps={STEPS}",
        f"log_dir={log_dir}",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    "robot, config, task",
    [("widowx", "bridge", t) for t in config_tasks("bridge")]
    + [("google_robot", "fractal", t) for t in config_tasks("fractal")],
)
def test_real_episode_through_server_and_client(servers, tmp_path: Path, robot: str, config: str, task: str) -> None:
    done = run_client(servers[robot], f"config/eval/{config}.yaml", task, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    episodes = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 1
    episode = episodes[0]
    assert episode["task"] == task and episode["seed"] == 0 and episode["steps"] == STEPS
    assert isinstance(episode["success"], bool) and episode["instruction"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["per_task"] == {task: float(episode["success"])}
    assert summary["timing"]["control_steps"] == STEPS and summary["timing"]["per_step_s"] > 0
    videos = list((tmp_path / "videos").glob(f"{task}_seed0_*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert videos[0].stem.endswith("success" if episode["success"] else "failure")


def test_client_names_an_unreachable_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        str(SIMPLER_PYTHON),
        str(ROOT / "scripts" / "simpler_client.py"),
        "--config",
        "config/eval/bridge.yaml",
        "--port",
        str(port),
        f"log_dir={tmp_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0
    assert f"no policy server at ws://127.0.0.1:{port}" in done.stderr


def test_client_rejects_a_server_of_the_other_robot(servers, tmp_path: Path) -> None:
    done = run_client(servers["widowx"], "config/eval/fractal.yaml", "google_robot_pick_coke_can", tmp_path)
    assert done.returncode != 0
    assert "reads 7 state values, the google_robot sends 8" in done.stderr


if __name__ == "__main__":  # pragma: no cover - builds the two checkpoints for manual runs
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

    out = Path(sys.argv[1])
    paligemma = make_tiny_paligemma_checkpoint(out / "tiny_paligemma", variant="gqa", seed=0)
    for robot in STATISTICS:
        print(robot, make_checkpoint(out / robot, paligemma, robot))
