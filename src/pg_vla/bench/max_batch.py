"""The largest train batch that fits: doubling from batch 1, then bisection over real train steps.

Each try runs `--max_batch_steps` steps with the configured optimizer and dtype; an out-of-memory error
is the answer for that batch (memory is freed between tries). On CPU, where running out of memory is
the OOM killer, each try is checked against the memory estimate first. Peak memory per try in MiB.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Any

import torch

from pg_vla.bench.harness import error_entry, free_memory, is_oom, log, synchronize
from pg_vla.bench.memory import activation_bytes, check_fits, memory_probe, train_extra_bytes, trainable_count
from pg_vla.bench.workload import bench_optimizer, make_inputs, make_train_step, trainable_parameters
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero


def try_train_batch(
    model: PiZero,
    cfg: PiZeroConfig,
    batch: int,
    dtype: torch.dtype,
    args: argparse.Namespace,
    device: torch.device,
    checkpointing: bool,
) -> dict[str, Any]:
    """`--max_batch_steps` train steps at `batch` -> {"batch", "fits", peak memory, ...}; frees everything after."""
    row: dict[str, Any] = {"batch": batch}
    if device.type == "cpu" and not args.no_memory_check:
        # On CPU running out of memory is the OOM killer, not an exception: check the estimate first.
        need = train_extra_bytes(trainable_count(model), dtype, args.optimizer) + activation_bytes(
            cfg, batch, dtype, checkpointing
        )
        reason = check_fits(need, device, f"train step at batch {batch}")
        if reason:
            row.update(fits=False, reason=f"memory estimate: {reason}")
            return row
    params = trainable_parameters(model)
    model.train()
    model.set_gradient_checkpointing(checkpointing)
    free_memory(device)
    optimizer, inputs, step, failure = None, None, None, None
    start = time.perf_counter()
    try:
        with memory_probe(device, row):
            inputs = make_inputs(cfg, batch, dtype, device, torch.Generator().manual_seed(args.seed))
            optimizer = bench_optimizer(args.optimizer, model)
            step = make_train_step(model, inputs, optimizer)
            for _ in range(args.max_batch_steps):
                step()
            synchronize(device)
        row["fits"] = True
    except Exception as error:  # noqa: BLE001 - an OOM is the answer; anything else ends the search
        failure = error_entry(error)
        if not is_oom(error):
            traceback.print_exc(file=sys.stderr)
    # Out of the except block: the exception (and the frames holding tensors) is gone before freeing.
    if failure is not None:
        row.update(fits=False, **failure)
    row["seconds"] = round(time.perf_counter() - start, 2)
    for p in params:
        p.grad = None
    del optimizer, inputs, step
    model.set_gradient_checkpointing(False)
    model.eval()
    free_memory(device)
    return row


def find_max_batch(
    model: PiZero,
    cfg: PiZeroConfig,
    dtype: torch.dtype,
    args: argparse.Namespace,
    device: torch.device,
    checkpointing: bool,
) -> dict[str, Any]:
    """Largest train batch <= the limit that fits: batch 1, 2, 4, ... until one fails (or the limit),
    then bisection between the last fitting and the first failing batch."""
    limit = args.max_batch_limit
    tried: list[dict[str, Any]] = []
    stop: dict[str, Any] = {}

    def fits(batch: int) -> bool:
        row = try_train_batch(model, cfg, batch, dtype, args, device, checkpointing)
        tried.append(row)
        log(f"  max batch (checkpointing={checkpointing}): batch {batch} {'fits' if row['fits'] else 'does not fit'}")
        if not row["fits"] and row.get("error") not in (None, "out_of_memory"):
            stop.update(error=row["error"], message=row.get("message", ""))  # not a memory failure
        return row["fits"]

    good, bad, batch = 0, None, 1
    while batch <= limit and not stop:
        if fits(batch):
            good, batch = batch, batch * 2
        else:
            bad = batch
            break
    if bad is None and good < limit and not stop:  # doubled past the limit: the limit itself
        if fits(limit):
            good = limit
        else:
            bad = limit
    while bad is not None and bad - good > 1 and not stop:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    out: dict[str, Any] = {
        "max_batch": good,
        "limit": limit,
        "hit_limit": good == limit,
        "first_failing_batch": bad,
        "gradient_checkpointing": checkpointing,
        "optimizer": args.optimizer,
        "steps_per_try": args.max_batch_steps,
        "tried": tried,
    }
    if stop:
        out["stopped_by"] = stop
    return out
