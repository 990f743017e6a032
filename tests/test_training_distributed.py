"""Training across processes: two CPU ranks under torchrun (gloo), and exact resumption after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}

# Runs one rank: builds the TrainConfig from a JSON file, records the parameters right before training,
# counts the samples this rank trains on, then saves the final parameters (rank<r>.pt, init_rank<r>.pt).
DRIVER = '''
import json, os, sys
import torch
from pg_vla.training.config import TrainConfig
from pg_vla.training.trainer import Trainer

cfg_path, out = sys.argv[1:3] if len(sys.argv) > 2 else (None, None)
rank = int(os.environ.get("RANK", 0))
seen = {"samples": 0, "micro_batches": 0, "batch_sizes": set()}

def weights(model):  # FSDP holds shards (DTensors): gather them (a collective every rank makes)
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}

class Recording(Trainer):
    def _resume(self):
        torch.save(weights(self.model), f"{out}/init_rank{rank}.pt")
        return super()._resume()

    def _inputs(self, batch):
        seen["samples"] += len(batch["language"])
        seen["micro_batches"] += 1
        seen["batch_sizes"].add(len(batch["language"]))
        return super()._inputs(batch)

if __name__ == "__main__":  # the data workers are spawned and import this module again
    trainer = Recording(TrainConfig.from_dict(json.loads(open(cfg_path).read())))
    result = trainer.run()
    if not any(hasattr(p, "full_tensor") for p in trainer.model.parameters()):  # FSDP: see its checkpoint
        torch.save(weights(trainer.model), f"{out}/rank{rank}.pt")
    with open(f"{out}/seen_rank{rank}.json", "w") as f:
        json.dump({**seen, "batch_sizes": sorted(seen["batch_sizes"]), "result": result,
                   "world_size": int(os.environ.get("WORLD_SIZE", 1))}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def quickstart_inputs(tmp_path_factory):
    """(cache dir, data path, PaliGemma folder): 4 synthetic bridge episodes of 32x32 images, a tiny VLM."""
    from pg_vla.training.quickstart import prepare

    cache = tmp_path_factory.mktemp("qs_cache") / "quickstart"
    data_path, model_path = prepare(cache, episodes=4, image_size=32)
    return cache, data_path, model_path


def _config(data_path: Path, model_path: Path, log_dir: Path, **overrides) -> dict:
    cfg = {
        "pretrained_model_path": str(model_path), "log_dir": str(log_dir), "n_updates": 3, "seed": 7,
        "global_batch_size": 4, "per_device_batch_size": 2, "precision": "fp32", "device": "cpu",
        "log_every": 1, "save_every": 100, "model": {"max_text_tokens": 12, "horizon_steps": 4, "cond_steps": 1},
        "optimizer": {"name": "adamw", "vlm_lr": 1e-3, "action_expert_lr": 1e-3, "grad_clip_norm": 1.0},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "data": {"data_path": str(data_path), "mix": "bridge", "shuffle_buffer": 50, "read_threads": 1,
                 "transform_threads": 1},
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("global_batch_size,micro_batches", [(4, 1), (8, 2)])
def test_torchrun_two_ranks_stay_in_sync(quickstart_inputs, tmp_path, global_batch_size, micro_batches):
    _, data_path, model_path = quickstart_inputs
    n_updates = 2
    out = tmp_path / "out"
    out.mkdir()
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(_config(data_path, model_path, tmp_path / "run", n_updates=n_updates,
                                           global_batch_size=global_batch_size)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(driver), str(cfg_path), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    seen = [json.loads((out / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    for s in seen:
        assert s["world_size"] == 2
        assert s["batch_sizes"] == [2]  # per_device_batch_size
        assert s["micro_batches"] == n_updates * micro_batches  # global / (per device x ranks) per step
    assert sum(s["samples"] for s in seen) == n_updates * global_batch_size

    init = [torch.load(out / f"init_rank{r}.pt") for r in (0, 1)]
    final = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert init[0].keys() == final[0].keys() == final[1].keys() and len(final[0]) > 0
    for name in init[0]:
        assert torch.equal(init[0][name], init[1][name]), f"{name} starts differently on the two ranks"
        assert torch.equal(final[0][name], final[1][name]), f"{name} diverged between the ranks"
    # The ranks read disjoint episodes, so identical weights after training need the gradient all-reduce.
    changed = [n for n in final[0] if not torch.equal(final[0][n], init[0][n])]
    assert len(changed) > len(final[0]) // 2, f"only {len(changed)} of {len(final[0])} tensors were updated"

    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, n_updates + 1))  # rank 0 logs alone
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert checkpoints == [f"step_{n_updates:06d}"]


def _final_weights(tmp_path: Path, data_path: Path, model_path: Path, name: str, nproc: int, **overrides):
    """Run the driver (torchrun with `nproc` ranks, or a plain process) and return rank 0's final weights."""
    out = tmp_path / name
    out.mkdir()
    cfg_path = out / "cfg.json"
    cfg_path.write_text(json.dumps(_config(data_path, model_path, out / "run", **overrides)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                 f"--master_port={_free_port()}"] if nproc > 1 else [sys.executable])
    result = subprocess.run([*launcher, str(driver), str(cfg_path), str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=400, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    final = out / "rank0.pt"
    return (torch.load(final) if final.is_file() else None), out


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(quickstart_inputs, tmp_path):
    """DDP (and FSDP) over 2 ranks x 1 micro-batch of 2 == 1 process x 2 micro-batches of 2: with the replicated
    data stream both see the same 4 samples per step with the same flow noise, so only the gradient
    averaging differs in how it is computed."""
    _, data_path, model_path = quickstart_inputs
    common = {"n_updates": 3, "global_batch_size": 4, "per_device_batch_size": 2, "data_stream": "replicated",
              "data": {"data_path": str(data_path), "mix": "bridge", "shuffle_buffer": 50, "read_threads": 1,
                       "transform_threads": 1, "deterministic": True}}
    single, _ = _final_weights(tmp_path, data_path, model_path, "single", 1, **common)
    ddp, _ = _final_weights(tmp_path, data_path, model_path, "ddp", 2, **common)
    _, fsdp_out = _final_weights(tmp_path, data_path, model_path, "fsdp", 2, distributed="fsdp", **common)
    initial = torch.load(tmp_path / "single" / "init_rank0.pt")
    assert single.keys() == ddp.keys()
    assert sum(not torch.equal(single[k], initial[k]) for k in single) > len(single) // 2
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=2e-5, rtol=1e-4, msg=f"ddp: {name}")
    # FSDP ranks hold shards: compare the full weights its checkpoint gathered at the last step
    # Reduce-scatter sums in another order than DDP's all-reduce; Adam divides by the gradient's own scale,
    # so rounding shows up at ~1% of a step (each step moves a weight by ~lr = 1e-3). Attention key biases
    # get a gradient of exactly zero in exact arithmetic (a shift shared by all keys of a query leaves the
    # softmax unchanged): Adam turns their pure rounding noise into full-size steps, so they are skipped.
    fsdp = _raw_weights(fsdp_out / "run" / "checkpoints" / "step_000003")
    for name in single:
        if not name.endswith("k_proj.bias"):
            torch.testing.assert_close(fsdp[name], single[name], atol=1e-4, rtol=1e-3, msg=f"fsdp: {name}")


@pytest.mark.slow
def test_two_rank_resume_continues_like_an_uninterrupted_run(quickstart_inputs, tmp_path):
    _, data_path, model_path = quickstart_inputs
    common = {"global_batch_size": 4, "per_device_batch_size": 2, "save_every": 2,
              "data": {"data_path": str(data_path), "mix": "bridge", "shuffle_buffer": 50, "read_threads": 1,
                       "transform_threads": 1, "deterministic": True}}
    straight, _ = _final_weights(tmp_path, data_path, model_path, "straight", 2, n_updates=4, **common)
    first_half = tmp_path / "resumed"
    _, out = _final_weights(tmp_path, data_path, model_path, "resumed", 2, n_updates=2, **common)
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["n_updates"] = 4
    (out / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(tmp_path / "driver.py"), str(out / "cfg.json"), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=ENV)
    assert result.returncode == 0, result.stderr[-5000:]
    resumed = torch.load(first_half / "rank0.pt")
    assert "resumed" in (out / "run" / "log.jsonl").read_text()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0, msg=name)


def _run_args(cache: Path, log_dir: Path) -> list[str]:
    return [sys.executable, "scripts/run.py", "--config-name=quickstart", f"quickstart.cache_dir={cache}",
            "quickstart.episodes=4", "quickstart.image_size=32", f"log_dir={log_dir}", "n_updates=6", "seed=3",
            "save_every=2", "log_every=1", "global_batch_size=4", "per_device_batch_size=2",
            "schedule.warmup_steps=1", "data.shuffle_buffer=50", "data.deterministic=true"]


def _losses(log_dir: Path) -> dict[int, float]:
    """step -> loss of the last record of that step (a resumed run logs the repeated steps again)."""
    losses = {}
    for line in (log_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def _raw_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from pg_vla.training.checkpoint import read_training_state

    state = read_training_state(checkpoint)
    return state["model"] if state["model"] is not None else load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(quickstart_inputs, tmp_path):
    cache, _, _ = quickstart_inputs
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    first = subprocess.run(_run_args(cache, run_a), cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr[-4000:]

    proc = subprocess.Popen(_run_args(cache, run_b), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    latest = run_b / "checkpoints" / "latest"
    try:
        deadline = time.monotonic() + 240
        while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its data worker, no chance to clean up
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "run B ended before it could be killed"
    killed_at = latest.read_text().strip()
    assert killed_at in ("step_000002", "step_000004"), killed_at

    second = subprocess.run(_run_args(cache, run_b), cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = [json.loads(line) for line in (run_b / "log.jsonl").read_text().splitlines()
               if json.loads(line).get("event") == "resumed"]
    assert [r["step"] for r in resumed] == [int(killed_at.split("_")[1])]

    losses_a, losses_b = _losses(run_a), _losses(run_b)
    assert sorted(losses_a) == sorted(losses_b) == [1, 2, 3, 4, 5, 6]
    for step in losses_a:
        assert losses_b[step] == pytest.approx(losses_a[step], abs=1e-6, rel=0), f"loss differs at step {step}"

    weights_a = _raw_weights(run_a / "checkpoints" / "step_000006")
    weights_b = _raw_weights(run_b / "checkpoints" / "step_000006")
    assert weights_a.keys() == weights_b.keys()
    initial = _raw_weights(run_a / "checkpoints" / "step_000002")
    assert any(not torch.equal(weights_a[k], initial[k]) for k in weights_a)  # the last steps trained
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], atol=1e-6, rtol=0, msg=f"{key} differs")
