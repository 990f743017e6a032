"""Self-contained training checkpoint folders: atomic saves, integrity checks, resuming.

Layout under a run's checkpoint folder::

    <ckpt_dir>/step_000100/          one checkpoint (step zero-padded to 6 digits)
        model.safetensors            inference weights (`pg_vla.model.checkpoint.save_model`): the averaged
                                     (EMA/SWA) weights when the caller passes `inference_state_dict`
        config.json                  the resolved run config (JSON)
        inference.json               what inference applies and inverts (`pg_vla.checkpoint_folder`)
        statistics/<dataset>.json    normalization statistics used by the run
        tokenizer/                   tokenizer / processor settings (optional)
        training_state.safetensors   every tensor of the training state: optimizer (incl. bitsandbytes
                                     8-bit states), weight averaging, torch/numpy RNG states, and the raw
                                     training weights when they differ from model.safetensors
        training_state.json          the rest, as plain JSON: the structure (naming those tensors),
                                     scheduler state, python RNG state, step, data-stream position
                                     (`pg_vla.training.state_file` describes the encoding)
        data_stream/rank_<r>/        each rank's loader position (`pg_vla.data.stream_checkpoint`), so a
                                     resumed run goes on reading where it stopped (optional)
        manifest.json                size + sha256 of every other file (written last)
    <ckpt_dir>/latest                names the newest complete checkpoint folder

Crash safety: a checkpoint is written into `<ckpt_dir>/.tmp-step_000100-<pid>` and renamed into place
(atomic on POSIX) only once complete, then `latest` is replaced atomically, then old checkpoints are
pruned (renamed to a hidden name before deletion). A crash at any point leaves the previous checkpoint
and `latest` intact; hidden leftovers (names starting with ".") are ignored by readers and removed by the
next save. A save that fails (a full disk: `CheckpointDiskFullError`, naming the file) removes its
temporary folder and leaves the previous checkpoint and `latest` as they were. Weights or optimizer
state holding NaN/Inf are never written (`NonFiniteCheckpointError`), so `latest` stays the last good one.

Security: no checkpoint file is a pickle. Loading reads JSON (`manifest.json`, `config.json`,
`training_state.json`, statistics) and safetensors (`model.safetensors`,
`training_state.safetensors`), neither of which can run code, so a checkpoint from anyone is data, not
code. Folders of the older format 1 (with a pickled `training_state.pt`) still verify and load for
inference, but resuming from them is refused; their pickle is never opened. The manifest guards against
truncation and corruption, not against a deliberately altered folder (which can still hold wrong
numbers).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pg_vla.data.normalization import DatasetStatistics
from pg_vla.checkpoint_folder import (
    CONFIG_FILE,
    DATA_STREAM_DIR,
    FORMAT,
    INFERENCE_FILE,
    LATEST_FILE,
    LEGACY_FORMAT,
    LEGACY_STATE_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PROCESSOR_SETTINGS_FILE,
    STATE_JSON_FILE,
    STATE_TENSORS_FILE,
    STATISTICS_DIR,
    TOKENIZER_DIR,
    _TMP_RE,
    InferenceRecord,
    checkpoint_name,
    checkpoint_step,
    find_latest_checkpoint,
    fsync_dir,
    list_checkpoints,
    verify_checkpoint,
    write_inference_record,
    write_manifest,
)
from pg_vla.model.checkpoint import read_metadata, save_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.training import state_file

logger = logging.getLogger(__name__)

_DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STATE_KEYS = ("step", "model", "model_partial", "optimizer", "schedulers", "averaging", "rng", "data_state")


class NonFiniteCheckpointError(ValueError):
    """A checkpoint was not saved because weights or optimizer state hold NaN or Inf."""


class CheckpointDiskFullError(OSError):
    """A checkpoint save failed for lack of space (or a file-size limit); the previous checkpoint is intact."""


# ----------------------------------------------------------------------------------------------------------
# Low-level file helpers
# ----------------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"run config value {value!r} of type {type(value).__name__} is not JSON serializable")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (an earlier failed save in this process) are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(ckpt_dir: Path) -> None:
    """Remove hidden temporary/deletion folders left by crashed saves of processes no longer running."""
    for entry in ckpt_dir.iterdir():
        match = _TMP_RE.match(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match.group(1))):
            logger.info("removing leftover temporary checkpoint folder %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _write_latest(ckpt_dir: Path, name: str) -> None:
    tmp = ckpt_dir / f".{LATEST_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, ckpt_dir / LATEST_FILE)
    fsync_dir(ckpt_dir)


# ----------------------------------------------------------------------------------------------------------
# State capture
# ----------------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """python's state as a tuple of ints, numpy's legacy MT19937 state with its key as an int64 tensor."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    key = saved["key"]
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64:
        raise TypeError(f"numpy RNG key must be an int64 tensor, got {type(key).__name__}")
    np.random.set_state(
        (
            saved["bit_generator"],
            key.numpy().astype(np.uint32),
            int(saved["pos"]),
            int(saved["has_gauss"]),
            float(saved["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint holds RNG states of %d CUDA device(s) but %d are visible; CUDA RNG states are not restored",
                len(cuda),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )


def _same_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, tensor in a.items():
        other = b[key]
        if tensor.shape != other.shape or tensor.dtype != other.dtype:
            return False
        if not torch.equal(tensor.detach().cpu(), other.detach().cpu()):
            return False
    return True


class _WeightsView:
    """Stands in for a model in `save_model`: its config with another set of weights."""

    def __init__(self, config: Any, state: Mapping[str, torch.Tensor]) -> None:
        self.config = config
        self._state = state

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self._state


def _as_list(schedulers: Any) -> list[Any]:
    if schedulers is None:
        return []
    if isinstance(schedulers, Sequence):
        return list(schedulers)
    return [schedulers]


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def _write_statistics(folder: Path, statistics: Mapping[str, DatasetStatistics | str | Path]) -> None:
    if not statistics:
        return
    out = folder / STATISTICS_DIR
    out.mkdir()
    for name, stats in statistics.items():
        if not _DATASET_NAME_RE.match(name):
            raise ValueError(f"dataset name {name!r} cannot be used as a file name (letters, digits, '.', '_', '-')")
        dest = out / f"{name}.json"
        if isinstance(stats, DatasetStatistics):
            stats.save(dest)
        elif isinstance(stats, (str, Path)):
            DatasetStatistics.load(stats)  # refuse to bundle a file that is not valid statistics
            shutil.copyfile(stats, dest)
        else:
            raise TypeError(f"statistics for {name!r} must be DatasetStatistics or a path, got {type(stats).__name__}")


def _write_tokenizer(folder: Path, tokenizer: Any) -> None:
    if tokenizer is None:
        return
    dest = folder / TOKENIZER_DIR
    if isinstance(tokenizer, (str, Path)):
        src = Path(tokenizer)
        if not src.is_dir():
            raise FileNotFoundError(f"tokenizer folder {src} does not exist")
        shutil.copytree(src, dest)
    elif hasattr(tokenizer, "save_pretrained"):
        dest.mkdir()
        tokenizer.save_pretrained(str(dest))
    elif hasattr(getattr(tokenizer, "tokenizer", None), "save_pretrained"):  # a VLAProcessor
        dest.mkdir()
        tokenizer.tokenizer.save_pretrained(str(dest))
        settings = {
            key: getattr(tokenizer, key)
            for key in ("image_size", "max_text_tokens", "max_cameras")
            if hasattr(tokenizer, key)
        }
        (dest / PROCESSOR_SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    else:
        raise TypeError(
            "tokenizer must be a folder path, an object with save_pretrained, or a processor "
            f"whose .tokenizer has save_pretrained; got {type(tokenizer).__name__}"
        )


def _prune(ckpt_dir: Path, keep_last_n: int, keep: Path) -> None:
    others = sorted(
        (p for p in ckpt_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None and p != keep),
        key=lambda p: checkpoint_step(p),
        reverse=True,
    )
    for old in others[max(keep_last_n - 1, 0) :]:
        hidden = ckpt_dir / f".del-{old.name}-{os.getpid()}"
        os.rename(old, hidden)  # readers never see a half-deleted checkpoint
        shutil.rmtree(hidden, ignore_errors=True)
        logger.info("removed old checkpoint %s", old)


def _previous_checkpoint(ckpt_dir: Path) -> str | None:
    """The folder `latest` names (else the newest one with a manifest): what a failed save leaves in use."""
    latest = ckpt_dir / LATEST_FILE
    if latest.is_file():
        text = latest.read_text().strip()
        if checkpoint_step(text) is not None and (ckpt_dir / text).is_dir():
            return text
    found = list_checkpoints(ckpt_dir)
    return found[-1].name if found else None


def _intact_note(previous: str | None) -> str:
    if previous is None:
        return "there is no earlier checkpoint, and nothing was left behind"
    return f"the previous checkpoint {previous} and `latest` are intact"


def _non_finite(label: str, tree: Any, found: list[str], limit: int = 5) -> int:
    """Count the floating tensors of `tree` holding NaN/Inf; name the first `limit` of them in `found`.
    Python floats are not checked: settings such as a clipping threshold may be infinite on purpose."""
    count = 0

    def walk(node: Any, where: str) -> None:
        nonlocal count
        if isinstance(node, torch.Tensor):
            if (
                (node.is_floating_point() or node.is_complex())
                and node.numel()
                and not bool(torch.isfinite(node.detach()).all())
            ):
                count += 1
                if len(found) < limit:
                    bad = int((~torch.isfinite(node.detach())).sum())
                    found.append(f"{label} {where or '(tensor)'} ({bad} of {node.numel()} values)")
        elif isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(tree, "")
    return count


def _check_finite(name: str, previous: str | None, parts: Sequence[tuple[str, Any]]) -> None:
    found: list[str] = []
    total = sum(_non_finite(label, tree, found) for label, tree in parts if tree is not None)
    if total:
        kept = (
            f"the previous checkpoint {previous} stays `latest`"
            if previous is not None
            else "no checkpoint was written"
        )
        raise NonFiniteCheckpointError(
            f"not saving checkpoint {name}: {total} tensor(s) hold NaN or Inf, first {', '.join(found)}; {kept}"
        )


def _disk_full_errno(err: BaseException, folder: Path) -> int | None:
    """ENOSPC / EDQUOT / EFBIG when `err` (or what it wraps) says the data did not fit, else None.

    safetensors reports I/O failures as its own error type whose text carries "(os error N)"; torch's
    writers say only "iostream error" / "file write failed", which counts when the disk is (nearly) full.
    """
    wanted = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in wanted:
            return node.errno
        text = str(node)
        match = re.search(r"os error (\d+)", text)
        if match and int(match.group(1)) in wanted:
            return int(match.group(1))
        for code in wanted:
            if os.strerror(code) in text:
                return code
        if "iostream error" in text or "file write failed" in text:
            try:
                if shutil.disk_usage(folder).free < (64 << 20):
                    return errno.ENOSPC
            except OSError:
                pass
        node = node.__cause__ or node.__context__
    return None


def _write_json(path: Path, value: Any, **kwargs: Any) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, **kwargs)
        handle.flush()
        os.fsync(handle.fileno())


def save_training_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    schedulers: Sequence[Any] | Any = (),
    averaging: Any = None,
    config: Mapping[str, Any],
    statistics: Mapping[str, DatasetStatistics | str | Path] | None = None,
    tokenizer: Any = None,
    data_state: dict | None = None,
    data_stream: Path | None = None,
    inference: InferenceRecord | None = None,
    inference_state_dict: Mapping[str, torch.Tensor] | None = None,
    training_state_dict: Mapping[str, torch.Tensor] | None = None,
    keep_last_n: int | None = None,
) -> Path:
    """Write a complete checkpoint folder `<ckpt_dir>/step_<step>` atomically and point `latest` at it.

    Args:
        model: the model being trained (a `PiZero`, or anything with `.config` and `state_dict()`).
        optimizer, schedulers, averaging: objects with `state_dict()`/`load_state_dict()`; `averaging`
            is the EMA/SWA helper. Their states may hold tensors, None, bool, int, float, str and
            lists / tuples / dicts of them (see `pg_vla.training.state_file`).
        config: the resolved run config, stored as `config.json` (must be JSON serializable; paths and
            numpy scalars are converted).
        statistics: dataset name -> `DatasetStatistics` or a path to a statistics JSON file.
        tokenizer: a folder to copy, an object with `save_pretrained`, or a `VLAProcessor`.
        data_state: the data-stream position as JSON-like values (dicts, lists, str, int, float, bool,
            None; no tensors), e.g. `{"batches_consumed": 120}`.
        data_stream: a folder of the loaders' stream positions, moved (not copied) into the checkpoint
            as `data_stream/`.
        inference: what inference must apply and invert (`inference.json`, read by `Policy`).
        inference_state_dict: the weights to publish in `model.safetensors` (e.g. the EMA weights); the
            raw training weights are then kept in the training state when they differ.
        training_state_dict: the training weights to keep for resuming when they are not the whole
            `model.state_dict()`, e.g. only the trainable tensors of a LoRA run whose frozen base comes
            again from the pretrained checkpoint; always stored, restored non-strictly (its keys must
            exist in the model). `inference_state_dict` is then required.
        keep_last_n: if set, remove older checkpoints so that only this one and the newest
            `keep_last_n - 1` others remain.

    Raises `NonFiniteCheckpointError` (before writing anything) when the published or raw weights,
    the optimizer or the averaging state hold NaN/Inf; `CheckpointDiskFullError` (an `OSError`) when
    the disk is full, naming the file. Either way the previous checkpoint and `latest` are untouched.

    Returns the checkpoint folder. Re-saving an existing step replaces that folder.
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last_n is not None and keep_last_n < 1:
        raise ValueError(f"keep_last_n must be >= 1, got {keep_last_n}")
    if not hasattr(model, "config"):
        raise TypeError("model must carry its config (.config) to write model.safetensors")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(ckpt_dir)
    name = checkpoint_name(step)
    previous = _previous_checkpoint(ckpt_dir)

    raw_state = model.state_dict()
    partial = training_state_dict is not None
    if partial:
        if inference_state_dict is None:
            raise ValueError("training_state_dict needs inference_state_dict (the weights to publish)")
        published, raw_state, separate_raw = inference_state_dict, training_state_dict, True
    elif inference_state_dict is not None:
        missing = sorted(set(raw_state) - set(inference_state_dict))
        unexpected = sorted(set(inference_state_dict) - set(raw_state))
        if missing or unexpected:
            raise ValueError(
                f"inference_state_dict does not match the model: missing {missing[:10]}, unexpected {unexpected[:10]}"
            )
        published, separate_raw = inference_state_dict, not _same_weights(raw_state, inference_state_dict)
    else:
        published, separate_raw = raw_state, False
    try:
        _, data_tensors = state_file.flatten(data_state, name="data_state")
    except TypeError as err:
        raise TypeError(f"data_state must be JSON-like: {err}") from err
    if data_tensors:
        raise TypeError(f"data_state must be JSON-like (no tensors), got tensors at {sorted(data_tensors)[:5]}")

    scheduler_list = _as_list(schedulers)
    state = {
        "step": step,
        "model": raw_state if separate_raw else None,
        "model_partial": partial,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedulers": [s.state_dict() for s in scheduler_list],
        "averaging": averaging.state_dict() if averaging is not None else None,
        "rng": _rng_state(),
        "data_state": data_state,
    }
    _check_finite(
        name,
        previous,
        [
            (MODEL_FILE, published),
            ("raw training weights", state["model"]),
            ("optimizer state", state["optimizer"]),
            ("averaging state", state["averaging"]),
        ],
    )
    try:
        skeleton, tensors = state_file.flatten(state, name="training state")
    except TypeError as err:
        raise TypeError(f"cannot save checkpoint {name}: {err}") from err
    del state

    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    writing = "(creating the folder)"
    old: Path | None = None
    published_final = False
    try:
        tmp.mkdir()
        writing = MODEL_FILE
        save_model(
            _WeightsView(model.config, published),
            tmp / MODEL_FILE,  # type: ignore[arg-type]
            metadata={"step": str(step)},
        )
        writing = CONFIG_FILE
        (tmp / CONFIG_FILE).write_text(json.dumps(dict(config), indent=1, default=_json_default))
        writing = f"{STATISTICS_DIR}/"
        _write_statistics(tmp, statistics or {})
        writing = f"{TOKENIZER_DIR}/"
        _write_tokenizer(tmp, tokenizer)
        if inference is not None:
            writing = INFERENCE_FILE
            write_inference_record(tmp, inference)
        if data_stream is not None:
            writing = f"{DATA_STREAM_DIR}/"
            shutil.move(str(data_stream), str(tmp / DATA_STREAM_DIR))
        writing = STATE_TENSORS_FILE
        save_file(tensors, str(tmp / STATE_TENSORS_FILE), metadata={"format": FORMAT})
        del tensors
        writing = STATE_JSON_FILE
        _write_json(tmp / STATE_JSON_FILE, {"format": FORMAT, "step": step, "state": skeleton}, allow_nan=False)
        writing = MANIFEST_FILE
        write_manifest(tmp, step)
        fsync_dir(tmp)

        writing = f"{name} (moving it into place)"
        if final.exists():  # re-saving a step: move the old folder aside, restored if the rest fails
            old = ckpt_dir / f".del-{name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        published_final = True
        fsync_dir(ckpt_dir)
        writing = LATEST_FILE
        _write_latest(ckpt_dir, name)
    except BaseException as err:
        code = _disk_full_errno(err, ckpt_dir) if isinstance(err, Exception) else None  # before freeing space
        shutil.rmtree(tmp, ignore_errors=True)
        (ckpt_dir / f".{LATEST_FILE}.tmp-{os.getpid()}").unlink(missing_ok=True)
        if published_final:  # `latest` still names the previous checkpoint: take this one back out
            hidden = ckpt_dir / f".del-{name}-{os.getpid()}-new"
            try:
                os.rename(final, hidden)
                shutil.rmtree(hidden, ignore_errors=True)
            except OSError:
                pass
        if old is not None and not final.exists():
            try:
                os.rename(old, final)
                old = None
            except OSError:
                pass
        if code is not None:
            what = {
                errno.ENOSPC: "the disk is full",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EFBIG: "a file-size limit was reached",
            }[code]
            raise CheckpointDiskFullError(
                code,
                f"saving checkpoint {name} in {ckpt_dir} failed while writing {writing}: {what} "
                f"({err}); the partial folder was removed and {_intact_note(previous)}",
            ) from err
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

    if keep_last_n is not None:
        _prune(ckpt_dir, keep_last_n, keep=final)
    logger.info("saved training checkpoint %s", final)
    return final


# ----------------------------------------------------------------------------------------------------------
# Verification and discovery
# ----------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _legacy_message(path: Path) -> str:
    return (
        f"checkpoint {path} has the older format {LEGACY_FORMAT!r}: its training state is a pickle "
        f"({LEGACY_STATE_FILE}), which pg-vla no longer reads because unpickling can run code. Its "
        f"{MODEL_FILE} still loads for inference; to train on, start a new run from it "
        f"(pretrained_model_path={path}) or resume with the pg-vla version that wrote it"
    )


def read_training_state(path: str | Path) -> dict[str, Any]:
    """Verify checkpoint `path` and decode its training state, without restoring anything.

    Returns `{"step", "model" (raw weights or None), "model_partial", "optimizer", "schedulers",
    "averaging", "rng", "data_state"}` with CPU tensors. Reads only JSON and safetensors.
    """
    path = Path(path)
    manifest = verify_checkpoint(path)
    if manifest["format"] == LEGACY_FORMAT:
        raise CheckpointError(_legacy_message(path))
    try:
        document = json.loads((path / STATE_JSON_FILE).read_text())
        if not isinstance(document, dict) or document.get("format") != FORMAT or "state" not in document:
            raise ValueError(
                f"not a pg-vla training state (format {document.get('format')!r})"
                if isinstance(document, dict)
                else "not a JSON object"
            )
    except (ValueError, OSError, RecursionError) as err:
        raise CheckpointError(f"checkpoint {path}: {STATE_JSON_FILE} is truncated or corrupted: {err}") from err
    try:
        tensors = load_file(str(path / STATE_TENSORS_FILE), device="cpu")
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: {STATE_TENSORS_FILE} is truncated or corrupted: {err}") from err
    try:
        state = state_file.unflatten(document["state"], tensors)
    except state_file.StateFormatError as err:
        raise CheckpointError(
            f"checkpoint {path}: {STATE_JSON_FILE} and {STATE_TENSORS_FILE} do not fit together: {err}"
        ) from err
    if not isinstance(state, dict) or set(state) != set(_STATE_KEYS) or not isinstance(state["step"], int):
        raise CheckpointError(f"checkpoint {path}: {STATE_JSON_FILE} does not hold a pg-vla training state")
    if state["model"] is not None and not (
        isinstance(state["model"], dict) and all(isinstance(t, torch.Tensor) for t in state["model"].values())
    ):
        raise CheckpointError(f"checkpoint {path}: the raw training weights in {STATE_TENSORS_FILE} are malformed")
    return state


def _restore_model(
    path: Path, model: torch.nn.Module, raw: Mapping[str, torch.Tensor] | None, partial: bool = False
) -> None:
    if raw is None:
        read_metadata(path / MODEL_FILE)
        try:
            raw = load_file(str(path / MODEL_FILE), device="cpu")
        except Exception as err:
            raise CheckpointError(f"checkpoint {path}: cannot read {MODEL_FILE}: {err}") from err
        source = MODEL_FILE
    else:
        source = f"{STATE_TENSORS_FILE} (raw training weights)"
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(raw)), sorted(set(raw) - set(expected))
    if partial:  # only the trainable tensors were kept; the rest comes from the pretrained weights
        missing = []
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: weights in {source} do not match the model: missing "
            f"{missing[:20]}, unexpected {unexpected[:20]}"
        )
    for key, tensor in raw.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {path}: {key} in {source} has shape {tuple(tensor.shape)}, the "
                f"model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(raw, strict=not partial)


def load_training_state(
    path: str | Path,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    schedulers: Sequence[Any] | Any = (),
    averaging: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Verify checkpoint `path` and restore training into the given objects.

    The raw training weights go into `model` (strict); optimizer, schedulers, averaging and (if
    `restore_rng`) the python/numpy/torch RNG states are restored. Returns
    `{"step": int, "data_state": ..., "config": dict}`.
    """
    path = Path(path)
    state = read_training_state(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE} is not valid JSON: {err}") from err

    _restore_model(path, model, state.get("model"), partial=bool(state.get("model_partial", False)))

    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit the optimizer: {err}") from err
    scheduler_list = _as_list(schedulers)
    if scheduler_list:
        saved = state.get("schedulers") or []
        if len(saved) != len(scheduler_list):
            raise CheckpointError(
                f"checkpoint {path} holds {len(saved)} scheduler state(s), {len(scheduler_list)} scheduler(s) given"
            )
        for scheduler, scheduler_state in zip(scheduler_list, saved):
            try:
                scheduler.load_state_dict(scheduler_state)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(f"checkpoint {path}: scheduler state does not fit: {err}") from err
    if averaging is not None:
        if state.get("averaging") is None:
            raise CheckpointError(f"checkpoint {path} holds no weight-averaging state")
        try:
            averaging.load_state_dict(state["averaging"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path}: weight-averaging state does not fit: {err}") from err
    if restore_rng:
        try:
            _restore_rng(state["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path}: RNG states are malformed: {err}") from err
    return {"step": int(state["step"]), "data_state": state.get("data_state"), "config": config}


def resolve_resume(
    resume_checkpoint_path: str | Path | None,
    ckpt_dir: str | Path,
    resume: Literal["auto"] | bool = "auto",
) -> Path | None:
    """The checkpoint to resume from, or None to start fresh.

    - an explicit `resume_checkpoint_path` must exist and verify (else `FileNotFoundError` /
      `CheckpointError`); it conflicts with `resume=False`.
    - `resume="auto"`: the latest intact checkpoint under `ckpt_dir`, or None if there is none.
    - `resume=True`: like "auto", but having no checkpoint is an error.
    - `resume=False`: None.
    """
    if resume not in ("auto", True, False):
        raise ValueError(f"resume must be 'auto', True or False, got {resume!r}")
    if resume_checkpoint_path is not None:
        if resume is False:
            raise ValueError("a resume checkpoint path was given but resume is False")
        path = Path(resume_checkpoint_path)
        if not path.exists():
            raise FileNotFoundError(f"resume checkpoint {path} does not exist")
        verify_checkpoint(path)
        logger.info("resuming from checkpoint %s", path)
        return path
    if resume is False:
        return None
    found = find_latest_checkpoint(ckpt_dir)
    if found is None and resume is True:
        raise FileNotFoundError(f"resume requested but {ckpt_dir} holds no intact checkpoint")
    if found is not None:
        logger.info("resuming from checkpoint %s", found)
    return found
