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
DRIVER = """
import json, logging, os, sys
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
    logging.basicConfig(level=logging.INFO, format=f"rank {rank} %(name)s: %(message)s")
    trainer = Recording(TrainConfig.from_dict(json.loads(open(cfg_path).read())))
    result = trainer.run()
    if not any(hasattr(p, "full_tensor") for p in trainer.model.parameters()):  # FSDP: see its checkpoint
        torch.save(weights(trainer.model), f"{out}/rank{rank}.pt")
    with open(f"{out}/seen_rank{rank}.json", "w") as f:
        json.dump({**seen, "batch_sizes": sorted(seen["batch_sizes"]), "result": result,
                   "world_size": int(os.environ.get("WORLD_SIZE", 1)),
                   "statistics": {k: v.to_dict() for k, v in trainer.statistics.items()}}, f)
"""


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
        "pretrained_model_path": str(model_path),
        "log_dir": str(log_dir),
        "n_updates": 3,
        "seed": 7,
        "global_batch_size": 4,
        "per_device_batch_size": 2,
        "precision": "fp32",
        "device": "cpu",
        "log_every": 1,
        "save_every": 100,
        "model": {"max_text_tokens": 12, "horizon_steps": 4, "cond_steps": 1},
        "optimizer": {"name": "adamw", "vlm_lr": 1e-3, "action_expert_lr": 1e-3, "grad_clip_norm": 1.0},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "data": {
            "data_path": str(data_path),
            "mix": "bridge",
            "shuffle_buffer": 50,
            "read_threads": 1,
            "transform_threads": 1,
        },
    }
    cfg.update(overrides)
    return cfg


def _run_driver(tmp_path: Path, data_path: Path, model_path: Path, name: str, nproc: int, **overrides) -> Path:
    """Run the driver (torchrun with `nproc` ranks, or a plain process) on a config -> its output folder."""
    return _launch(_driver_folder(tmp_path, data_path, model_path, name, **overrides), nproc)


def _driver_folder(tmp_path: Path, data_path: Path, model_path: Path, name: str, **overrides) -> Path:
    """tmp_path/name holding the run's cfg.json (its log_dir: run/ there)."""
    out = tmp_path / name
    out.mkdir()
    (out / "cfg.json").write_text(json.dumps(_config(data_path, model_path, out / "run", **overrides)))
    return out


def _launch(out: Path, nproc: int) -> Path:
    """Run the driver on `out`/cfg.json (torchrun with `nproc` ranks, or a plain process) -> `out`."""
    _finish(_start(out, nproc), out)
    return out


def _start(out: Path, nproc: int) -> subprocess.Popen:
    """Start the driver on `out`/cfg.json; its stdout and stderr (every rank's log lines) go to files in `out`."""
    driver = out.parent / "driver.py"
    if not driver.is_file() or driver.read_text() != DRIVER:  # never rewritten under a running driver
        driver.write_text(DRIVER)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
        if nproc > 1
        else [sys.executable]
    )
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [*launcher, str(driver), str(out / "cfg.json"), str(out)],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env=ENV,
            start_new_session=True,  # a run past its time is killed with its ranks and data workers
        )


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 400) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    logs = (out / "stdout.txt").read_text()[-3000:] + (out / "stderr.txt").read_text()[-5000:]
    assert proc.returncode == 0, logs


def _launch_together(runs: list[tuple[Path, int]]) -> None:
    """Independent driver runs started at once: a one-process run keeps about one core of two busy (its
    data worker starts while the trainer waits), so two of them take about the time of one."""
    procs = [(_start(out, nproc), out) for out, nproc in runs]
    try:
        for proc, out in procs:
            _finish(proc, out)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _check_ranks_in_sync(out: Path, n_updates: int, global_batch_size: int, micro_batches: int) -> None:
    """Both ranks trained their share of every step and end with identical weights (which, as they read
    disjoint or differently ordered samples, needs the gradient all-reduce)."""
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
    changed = [n for n in final[0] if not torch.equal(final[0][n], init[0][n])]
    assert len(changed) > len(final[0]) // 2, f"only {len(changed)} of {len(final[0])} tensors were updated"

    records = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, n_updates + 1))  # rank 0 logs alone


def _fresh_statistics(data_path: Path, folder: Path) -> dict:
    """The data section with its own (empty) statistics folder: the run computes them."""
    return {"data": {**_config(data_path, data_path, folder)["data"], "statistics_dir": str(folder)}}


def _check_statistics_computed_once(logs: str, folder: Path, out: Path) -> None:
    """One rank of the job computed the statistics (one log line); all ranks use that one file."""
    computing = [line for line in logs.splitlines() if "computing normalization statistics" in line]
    assert len(computing) == 1, computing
    files = sorted(folder.iterdir())
    assert [f.name for f in files if not f.name.startswith(".")] == [f.name for f in files], "a temporary is left"
    assert len(files) == 1 and str(files[0]) in computing[0]
    saved = json.loads(files[0].read_text())
    for r in (0, 1):
        assert json.loads((out / f"seen_rank{r}.json").read_text())["statistics"] == {"bridge_dataset": saved}


@pytest.mark.slow
def test_torchrun_two_ranks_accumulate_and_stay_in_sync(quickstart_inputs, tmp_path):
    """2 ranks x 2 micro-batches of 2 per step (global batch 8), the sharded stream: disjoint episodes per rank.
    Rank 0 alone computes the statistics; rank 1 waits and reads its file."""
    _, data_path, model_path = quickstart_inputs
    statistics = tmp_path / "statistics"
    out = _run_driver(
        tmp_path,
        data_path,
        model_path,
        "accumulate",
        2,
        n_updates=2,
        global_batch_size=8,
        **_fresh_statistics(data_path, statistics),
    )
    _check_ranks_in_sync(out, n_updates=2, global_batch_size=8, micro_batches=2)
    checkpoints = sorted(p.name for p in (out / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert checkpoints == ["step_000002"]
    logs = (out / "stderr.txt").read_text()
    _check_statistics_computed_once(logs, statistics, out)
    assert "rank 0 pg_vla.data.rlds.statistics: computing normalization statistics" in logs


@pytest.mark.slow
def test_two_nodes_train_as_one_job(ddp_reference):
    """The reference DDP job is launched as two nodes: two torchrun launchers (one rank each) meet by the c10d
    rendezvous at 127.0.0.1:<free port> and train as one job of 2 ranks sharing log_dir and statistics folder:
    identical weights, one log and rank 0's checkpoints, statistics computed once. (That its weights equal one
    process with the same global batch is checked below, with the FSDP run.)"""
    _check_ranks_in_sync(ddp_reference, n_updates=4, global_batch_size=4, micro_batches=1)
    checkpoints = sorted(
        p.name for p in (ddp_reference / "run" / "checkpoints").iterdir() if p.name.startswith("step_")
    )
    assert checkpoints == ["step_000002", "step_000004"]
    logs = "".join((ddp_reference / f"node{i}.log").read_text() for i in (0, 1))
    _check_statistics_computed_once(logs, ddp_reference.parent / "statistics", ddp_reference)


RANK_ZERO_FIRST = """
import sys, time
import torch.distributed as dist
from pg_vla.training.distributed import rank_zero_first

dist.init_process_group("gloo")
rank, out = dist.get_rank(), sys.argv[1]

def work():
    with open(f"{out}/order", "a") as f:
        f.write(f"start {rank}\\n")
    time.sleep(1.0 if rank == 0 else 0.0)
    with open(f"{out}/order", "a") as f:
        f.write(f"end {rank}\\n")
    return rank

def failing():
    if rank == 0:
        raise ValueError("no such dataset")
    return rank

assert rank_zero_first(work) == rank
try:
    rank_zero_first(failing)
except Exception as err:
    with open(f"{out}/error{rank}", "w") as f:
        f.write(f"{type(err).__name__}: {err}")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_rank_zero_first_runs_rank_zero_alone_first_and_shares_its_failure(tmp_path):
    """The others start only after rank 0 has finished; when rank 0 fails they raise (naming its error)
    instead of waiting for ever or doing the work themselves."""
    script = tmp_path / "rank_zero_first.py"
    script.write_text(RANK_ZERO_FIRST)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(script),
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "order").read_text().split("\n")[:4] == ["start 0", "end 0", "start 1", "end 1"]
    assert (tmp_path / "error0").read_text() == "ValueError: no such dataset"
    assert (tmp_path / "error1").read_text() == (
        "RuntimeError: rank 0 failed in work the other ranks wait for (1 rank(s) failed): ValueError: no such dataset"
    )


# One 2-rank DDP run serves as the reference of the single-process, FSDP and resume tests: 4 steps of global
# batch 4 (1 micro-batch of 2 per rank), the replicated deterministic stream, a checkpoint every 2 steps. It is
# launched as two nodes (test_two_nodes_train_as_one_job): to the ranks a job of one node and one of two differ
# only in how the rendezvous found them (the tests that launch one torchrun of 2 ranks match it within 1e-6).
REFERENCE = {
    "n_updates": 4,
    "global_batch_size": 4,
    "per_device_batch_size": 2,
    "data_stream": "replicated",
    "save_every": 2,
}


def _reference_data(data_path: Path) -> dict:
    return {
        "data": {
            "data_path": str(data_path),
            "mix": "bridge",
            "shuffle_buffer": 50,
            "read_threads": 1,
            "transform_threads": 1,
            "deterministic": True,
        }
    }


@pytest.fixture(scope="module")
def ddp_reference(quickstart_inputs, tmp_path_factory) -> Path:
    """The reference run over 2 DDP ranks, one per "node": two torchrun launchers that meet by the c10d rendezvous
    and share the output folder (its log_dir) and a statistics folder (statistics/ next to it), which the job fills.
    The nodes' logs: node0.log, node1.log."""
    _, data_path, model_path = quickstart_inputs
    folder = tmp_path_factory.mktemp("ddp_reference")
    data = {**_reference_data(data_path)["data"], "statistics_dir": str(folder / "statistics")}
    out = _driver_folder(folder, data_path, model_path, "ddp", **REFERENCE, data=data)
    (folder / "driver.py").write_text(DRIVER)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes, logs = [], [out / f"node{i}.log" for i in (0, 1)]
    try:
        for log in logs:
            with open(log, "w") as stderr:
                nodes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "torch.distributed.run",
                            "--nnodes=2",
                            "--nproc_per_node=1",
                            "--rdzv_backend=c10d",
                            f"--rdzv_endpoint={endpoint}",
                            "--rdzv_id=two-nodes",
                            str(folder / "driver.py"),
                            str(out / "cfg.json"),
                            str(out),
                        ],
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                        env=ENV,
                        start_new_session=True,
                    )
                )
        codes = [node.wait(timeout=400) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text[0][-4000:] + text[1][-4000:]
    return out


@pytest.fixture(scope="module")
def single_references(quickstart_inputs, tmp_path_factory) -> dict[str, Path]:
    """The reference run in one process (2 micro-batches of 2 per step), with torch's AdamW ("adamw": the
    reference of the DDP and FSDP runs) and with bitsandbytes' 8-bit AdamW ("adamw8bit": of FSDP + adamw8bit),
    launched together."""
    _, data_path, model_path = quickstart_inputs
    folder = tmp_path_factory.mktemp("single_reference")
    common = {**REFERENCE, **_reference_data(data_path)}
    runs = {
        "adamw": _driver_folder(folder, data_path, model_path, "single", **common),
        "adamw8bit": _driver_folder(folder, data_path, model_path, "single_8bit", **common, **EIGHT_BIT),
    }
    _launch_together([(out, 1) for out in runs.values()])
    return runs


@pytest.fixture(scope="module")
def single_reference(single_references) -> Path:
    return single_references["adamw"]


def _assert_moved_alike(ours: dict, reference: dict, initial: dict, rel: float) -> None:
    """Each tensor moved from `initial` as the reference run moved it: ||(ours - initial) - (ref - initial)|| <=
    rel * ||ref - initial|| (L2 over the tensor), and more than half of the tensors moved at all.

    A run that sums gradients in another order (FSDP's reduce-scatter against one process) agrees in its losses
    within ~1e-4, but Adam divides every gradient element by its own scale: elements whose gradient is a near
    cancellation (small against its terms, so rounding is large against it) take steps of the full learning rate
    in either direction. So a few elements per tensor differ by up to a step (which CPU kernels round how, and so
    which elements, changes with the machine), while the tensor's movement as a whole agrees. Attention key
    biases are skipped: their gradient is exactly zero in exact arithmetic (a shift shared by all keys of a query
    leaves the softmax unchanged), so all they get is rounding noise that Adam makes full-size."""
    moved = 0
    for name in reference:
        expected = reference[name].double() - initial[name].double()
        if name.endswith("k_proj.bias") or not expected.any():
            continue
        moved += 1
        error = (ours[name].double() - initial[name].double() - expected).norm() / expected.norm()
        assert error <= rel, f"{name}: moved {error:.3%} away from the reference's movement (bound {rel:.0%})"
    assert moved > len(reference) // 2


def _assert_losses_alike(run: Path, reference: Path, rel: float) -> None:
    """The 4 logged losses of two driver outputs agree within `rel` (relative)."""
    losses = [
        [json.loads(line)["loss"] for line in (out / "run" / "log.jsonl").open() if '"loss"' in line]
        for out in (run, reference)
    ]
    assert len(losses[0]) == len(losses[1]) == 4, losses
    assert max(abs(a - b) / abs(b) for a, b in zip(*losses)) < rel, losses


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(
    quickstart_inputs, ddp_reference, single_reference, tmp_path
):
    """DDP (the reference job, of two nodes) and FSDP over 2 ranks x 1 micro-batch of 2 == 1 process x 2
    micro-batches of 2: with the replicated data stream both see the same 4 samples per step with the same flow
    noise, so only the gradient averaging differs in how it is computed."""
    _, data_path, model_path = quickstart_inputs
    ddp = torch.load(ddp_reference / "rank0.pt")
    single = torch.load(single_reference / "rank0.pt")
    fsdp_out = _run_driver(
        tmp_path, data_path, model_path, "fsdp", 2, distributed="fsdp", **REFERENCE, **_reference_data(data_path)
    )
    initial = torch.load(single_reference / "init_rank0.pt")
    assert single.keys() == ddp.keys()
    assert sum(not torch.equal(single[k], initial[k]) for k in single) > len(single) // 2
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=2e-5, rtol=1e-4, msg=f"ddp: {name}")
    # FSDP ranks hold shards: compare the full weights its checkpoint gathered at the last step. Measured: at
    # most 0.9% of a tensor's movement (a 2-core Xeon; up to 0.8% of a tensor's elements beyond 1e-4).
    fsdp = _raw_weights(fsdp_out / "run" / "checkpoints" / "step_000004")
    _assert_moved_alike(fsdp, single, initial, rel=0.03)
    _assert_losses_alike(fsdp_out, single_reference, rel=3e-4)


OFFLOADED = {
    "optimizer": {"name": "adamw", "vlm_lr": 1e-3, "action_expert_lr": 1e-3, "grad_clip_norm": 1.0, "offload": True}
}


# FSDP with offload is run by the adamw8bit test below. On these CPU ranks offload changes FSDP's wrapping alone
# (its CPU offload policy in place of the default one), whichever optimizer steps the shards, and that test's
# run wraps so; torch's AdamW on the shards is the FSDP run above. So a second FSDP run (offload + torch's AdamW)
# would check no code that these two runs do not.
@pytest.mark.slow
def test_optimizer_offload_under_ddp(quickstart_inputs, ddp_reference, tmp_path):
    """optimizer.offload=true over 2 DDP ranks: the ranks step host copies of the parameters after the
    all-reduce, the same arithmetic as the reference DDP run: its weights within 1e-6."""
    _, data_path, model_path = quickstart_inputs
    out = _run_driver(
        tmp_path,
        data_path,
        model_path,
        "ddp",
        2,
        distributed="ddp",
        **REFERENCE,
        **_reference_data(data_path),
        **OFFLOADED,
    )
    _check_ranks_in_sync(out, n_updates=4, global_batch_size=4, micro_batches=1)
    ours, reference = torch.load(out / "rank0.pt"), torch.load(ddp_reference / "rank0.pt")
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=0, msg=name)


EIGHT_BIT = {
    "optimizer": {"name": "adamw8bit", "vlm_lr": 1e-3, "action_expert_lr": 1e-3, "grad_clip_norm": 1.0},
}


@pytest.mark.slow
def test_fsdp_with_8bit_adamw_offloaded_matches_one_process_and_resumes(quickstart_inputs, single_references, tmp_path):
    """distributed=fsdp + adamw8bit + offload over 2 ranks: each rank steps bitsandbytes' 8-bit AdamW on its own
    CPU-resident shards. Its losses follow a one-process adamw8bit run with the same global batch within 0.1%,
    and its weights moved within 15% (L2) of how that run moved each tensor (the reduce-scatter sums in another
    order than one process does, and 8-bit quantization turns those roundings into whole quantization steps;
    the 32-bit FSDP comparison above is tighter); the per-rank 8-bit state saved at step 2, resumed by 2 ranks,
    repeats steps 3-4 exactly."""
    import shutil

    _, data_path, model_path = quickstart_inputs
    common, single = {**REFERENCE, **_reference_data(data_path)}, single_references["adamw8bit"]
    offloaded = {"optimizer": {**EIGHT_BIT["optimizer"], "offload": True}}
    fsdp = _run_driver(tmp_path, data_path, model_path, "fsdp", 2, distributed="fsdp", **common, **offloaded)
    checkpoints = fsdp / "run" / "checkpoints"
    ours, reference = _raw_weights(checkpoints / "step_000004"), torch.load(single / "rank0.pt")
    _assert_moved_alike(ours, reference, torch.load(single / "init_rank0.pt"), rel=0.15)
    _assert_losses_alike(fsdp, single, rel=1e-3)

    out = tmp_path / "resumed"
    (out / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoints / "step_000002", out / "run" / "checkpoints" / "step_000002")
    (out / "run" / "checkpoints" / "latest").write_text("step_000002\n")
    cfg = json.loads((fsdp / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps({**cfg, "log_dir": str(out / "run")}))
    _launch(out, 2)
    resumed = _raw_weights(out / "run" / "checkpoints" / "step_000004")
    for name in ours:
        torch.testing.assert_close(resumed[name], ours[name], atol=1e-6, rtol=0, msg=name)


def test_per_rank_8bit_state_is_refused_at_another_world_size():
    """The per-rank state of FSDP + adamw8bit loads only at the world size it was saved with."""
    from pg_vla.training.optim import LocalShardOptimizer

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = LocalShardOptimizer([{"params": [weight]}], lambda groups: torch.optim.AdamW(groups, lr=0.1))
    state = {"format": "local_shards", "world_size": 4, "ranks": [optimizer.state_dict()] * 4}
    with pytest.raises(ValueError, match="sharded over 4 ranks and this run has 2"):
        optimizer.load_sharded_state_dict(state, rank=0, world_size=2)
    with pytest.raises(ValueError, match="not per-rank 8-bit state"):
        optimizer.load_sharded_state_dict(optimizer.state_dict(), rank=0, world_size=2)
    optimizer.load_sharded_state_dict({**state, "world_size": 2, "ranks": state["ranks"][:2]}, rank=1, world_size=2)


@pytest.mark.slow
def test_two_rank_resume_continues_like_an_uninterrupted_run(ddp_reference, tmp_path):
    """The reference run's step-2 checkpoint, resumed by 2 ranks to step 4: the data stream is restored from the
    checkpoint's position (not replayed), and the run repeats the reference's losses and step-4 weights."""
    import shutil

    out = tmp_path / "resumed"
    (out / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ddp_reference / "run" / "checkpoints" / "step_000002", out / "run" / "checkpoints" / "step_000002")
    (out / "run" / "checkpoints" / "latest").write_text("step_000002\n")
    cfg = json.loads((ddp_reference / "cfg.json").read_text())
    cfg["log_dir"] = str(out / "run")
    (out / "cfg.json").write_text(json.dumps(cfg))
    _launch(out, 2)
    records = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["data_stream"]) for r in records if r.get("event") == "resumed"] == [(2, "restored")]
    assert [r["step"] for r in records if "loss" in r] == [3, 4]
    reference = {
        r["step"]: r["loss"]
        for r in map(json.loads, (ddp_reference / "run" / "log.jsonl").read_text().splitlines())
        if "loss" in r
    }
    for r in records:
        if "loss" in r:
            assert abs(r["loss"] - reference[r["step"]]) <= 1e-6, (r, reference)
    straight, resumed = torch.load(ddp_reference / "rank0.pt"), torch.load(out / "rank0.pt")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0, msg=name)


def _run_args(cache: Path, log_dir: Path) -> list[str]:
    return [
        sys.executable,
        "scripts/run.py",
        "--config-name=quickstart",
        f"quickstart.cache_dir={cache}",
        "quickstart.episodes=4",
        "quickstart.val_episodes=4",  # quickstart_inputs' data: A and B, run together, find it made
        "quickstart.image_size=32",
        "quickstart.evaluate=false",
        f"log_dir={log_dir}",
        "model.action_head=flow",
        "n_updates=6",
        "seed=3",
        "save_every=2",
        "log_every=1",
        "global_batch_size=4",
        "per_device_batch_size=2",
        "schedule.warmup_steps=1",
        "validation.every=null",  # the weights and losses are compared; a validation worker would only cost time
        "data.shuffle_buffer=50",
        "data.deterministic=true",
    ]


def _losses(log_dir: Path) -> dict[int, float]:
    """step -> loss; each step is logged once, also by a run that resumed and trained some steps again."""
    steps = [json.loads(line) for line in (log_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert sorted(r["step"] for r in steps) == sorted({r["step"] for r in steps}), "a step is logged twice"
    return {r["step"]: r["loss"] for r in steps}


def _raw_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from pg_vla.training.checkpoint import read_training_state

    state = read_training_state(checkpoint)
    return state["model"] if state["model"] is not None else load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(quickstart_inputs, tmp_path):
    """Run B, SIGKILLed (with its data worker) once its first checkpoint is written, then started again, resumes
    from that checkpoint and ends as run A, the same command uninterrupted: same losses and step-6 weights.
    A runs meanwhile (each of the two keeps about one core busy)."""
    cache, _, _ = quickstart_inputs
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    with open(tmp_path / "a.stderr", "w") as stderr_a:
        first = subprocess.Popen(
            _run_args(cache, run_a),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr_a,
            env=ENV,
            start_new_session=True,
        )
    try:
        _kill_at_first_checkpoint_and_resume(cache, run_b)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, (tmp_path / "a.stderr").read_text()[-4000:]

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


def _kill_at_first_checkpoint_and_resume(cache: Path, run_b: Path) -> None:
    """Run B: SIGKILLed once a checkpoint is written, then the same command again, which resumes from it."""
    proc = subprocess.Popen(
        _run_args(cache, run_b),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
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
    resumed = [
        json.loads(line)
        for line in (run_b / "log.jsonl").read_text().splitlines()
        if json.loads(line).get("event") == "resumed"
    ]
    assert [r["step"] for r in resumed] == [int(killed_at.split("_")[1])]
