"""The checkpoint-folder contract: file names, integrity manifest, discovery, and the inference record.

Training writes checkpoint folders (`pg_vla.training.checkpoint.save_training_checkpoint`); `Policy`,
serving, offline and simulator evaluation, export and fine-tuning read them. Everything both sides
must agree on lives here: the names of the files, `manifest.json` (size and sha256 of every file,
checked before anything is read), how the newest intact checkpoint of a run is found, and
`inference.json`, the record of what inference must do to invert exactly what training did.

    step_000100/
        model.safetensors     config.json     statistics/<dataset>.json     tokenizer/
        inference.json        training_state.safetensors     training_state.json
        data_stream/          manifest.json
    latest                    names the newest complete checkpoint folder
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pg_vla.model.paligemma.loading import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "pg-vla-training-checkpoint-2"
LEGACY_FORMAT = "pg-vla-training-checkpoint-1"  # training state in a pickle (training_state.pt): never read
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATISTICS_DIR = "statistics"
TOKENIZER_DIR = "tokenizer"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
DATA_STREAM_DIR = "data_stream"
LEGACY_STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
PROCESSOR_SETTINGS_FILE = "vla_processor.json"
INFERENCE_FILE = "inference.json"

_STEP_RE = re.compile(r"^step_(\d+)$")
_TMP_RE = re.compile(r"^\.(?:tmp|del)-.*-(\d+)$")
_REQUIRED_FILES = {
    FORMAT: (MODEL_FILE, STATE_JSON_FILE, STATE_TENSORS_FILE, CONFIG_FILE),
    LEGACY_FORMAT: (MODEL_FILE, LEGACY_STATE_FILE, CONFIG_FILE),
}


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):06d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint folder named `step_<n>`, else None."""
    match = _STEP_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """`manifest.json`: size and sha256 of every other file of the folder (written last, fsynced)."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_FILE:
            continue
        fsync_file(path)
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": FORMAT, "step": int(step), "files": files}
    with open(folder / MANIFEST_FILE, "w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in the manifest exists with the recorded size and sha256.

    Returns the manifest. Raises `CheckpointError` naming the checkpoint folder and the bad file.
    Folders of the older format (`LEGACY_FORMAT`) verify too, so they still load for inference;
    `load_training_state` refuses them. Nothing is unpickled here or anywhere else.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a folder")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") not in _REQUIRED_FILES or not isinstance(files, dict):
            raise ValueError(f"unknown format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} is truncated or corrupted: {err}") from err
    for required in _REQUIRED_FILES[manifest["format"]]:
        if required not in files:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} does not list {required}")
    for rel, entry in files.items():
        file = path / rel
        if not isinstance(entry, dict) or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} is corrupted: bad entry for {rel!r}")
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {rel} is missing")
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"checkpoint {path}: {rel} is truncated or corrupted: size {size} bytes, manifest says {entry['size']}"
            )
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {path}: {rel} is truncated or corrupted: sha256 does not match the manifest"
            )
    return manifest


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint folders (`step_<n>` with a manifest) under `ckpt_dir`, oldest first; hidden folders skipped."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [
        p for p in ckpt_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / MANIFEST_FILE).is_file()
    ]
    return sorted(found, key=lambda p: checkpoint_step(p))


def find_latest_checkpoint(ckpt_dir: str | Path, verify: bool = True) -> Path | None:
    """The checkpoint named in `<ckpt_dir>/latest` if it is intact, else the newest other intact one, else None.

    Used for inference as well as for resuming, so what it logs says neither (`resolve_resume` logs
    the resume)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None

    def usable(candidate: Path) -> bool:
        if not verify:
            return (candidate / MANIFEST_FILE).is_file()
        try:
            verify_checkpoint(candidate)
            return True
        except CheckpointError as err:
            logger.warning("skipping checkpoint: %s", err)
            return False

    named: Path | None = None
    latest_file = ckpt_dir / LATEST_FILE
    if latest_file.is_file():
        text = latest_file.read_text().strip()
        if text and checkpoint_step(text) is not None and "/" not in text:
            named = ckpt_dir / text
            if named.is_dir() and usable(named):
                return named
            logger.warning(
                "%s names %s, which is missing or damaged; falling back to the newest intact checkpoint",
                latest_file,
                named,
            )
        else:
            logger.warning(
                "%s does not name a checkpoint folder (%r); falling back to the newest intact checkpoint",
                latest_file,
                text,
            )
    for candidate in reversed(list_checkpoints(ckpt_dir)):
        if candidate == named:
            continue
        if usable(candidate):
            if named is not None or latest_file.is_file():
                logger.warning("using checkpoint %s instead, the newest intact one", candidate)
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------
# The inference record
# ----------------------------------------------------------------------------------------------------------

INFERENCE_FORMAT = "pg-vla-inference-1"


@dataclass(frozen=True)
class DatasetTransforms:
    """How one dataset's state and actions were transformed for training (its statistics are
    statistics/<dataset>.json)."""

    proprio_dim: int  # the data's state size (the model's may be larger: zero-padded)
    action_dim: int
    action_mask: tuple[bool, ...] | None  # action dims normalized (False: left as is, e.g. a 0..1 gripper); None: all
    proprio_mask: tuple[bool, ...] | None = None  # the same for the state (the loaders normalize every dim)
    gripper_convention: str | None = None  # e.g. "absolute: 1 open, 0 closed"; None: not known for the source

    def __post_init__(self) -> None:
        for name, dim in (("action_mask", self.action_dim), ("proprio_mask", self.proprio_dim)):
            mask = getattr(self, name)
            if mask is not None:
                object.__setattr__(self, name, tuple(bool(m) for m in mask))
                if len(mask) != dim:
                    raise ValueError(f"{name} has {len(mask)} entries for {dim} dims")


@dataclass(frozen=True)
class InferenceRecord:
    """What inference must do to invert exactly what training did (`inference.json`)."""

    source: str  # data source the run read (rlds, parquet, ...)
    camera_roles: tuple[str, ...]  # cameras of the model's image block, in order
    image_size: int
    image_resize: str  # stretch or pad (pg_vla.data.image_resize)
    normalization: str  # bounds, mean_std or quantile (pg_vla.data.normalization)
    datasets: Mapping[str, DatasetTransforms] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["datasets"] = {name: asdict(t) for name, t in self.datasets.items()}
        return {"format": INFERENCE_FORMAT, **out}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "InferenceRecord":
        try:
            if not isinstance(value, dict) or value.get("format") != INFERENCE_FORMAT:
                raise ValueError(f"not an inference record of format {INFERENCE_FORMAT}")
            fields = {k: v for k, v in value.items() if k != "format"}
            datasets = {str(name): DatasetTransforms(**t) for name, t in dict(fields.pop("datasets")).items()}
            record = cls(**fields, datasets=datasets)
            record = cls(**{**asdict(record), "camera_roles": tuple(record.camera_roles), "datasets": datasets})
            if not all(isinstance(r, str) for r in record.camera_roles) or not isinstance(record.image_size, int):
                raise ValueError("camera_roles must be strings and image_size an integer")
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{where} is malformed: {err}") from err
        return record


def write_inference_record(folder: Path, record: InferenceRecord) -> None:
    (Path(folder) / INFERENCE_FILE).write_text(json.dumps(record.to_json(), indent=1))


def read_inference_record(folder: str | Path) -> InferenceRecord | None:
    """The checkpoint's inference record, or None for checkpoints written before it existed."""
    path = Path(folder) / INFERENCE_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    return InferenceRecord.from_json(value, str(path))
