"""A trained pi0 policy from a checkpoint folder: raw observation in, action chunk in robot units out.

Evaluation adapters, the policy server and the single-example inference command all go through
`Policy`, so they share one preprocessing and postprocessing path with training:

    images (uint8, any size)  -> resized to the model's image size as the run's `data.image_resize` says
                                 (stretch, or pad: aspect kept, black borders), scaled to [-1, 1]   (VLAProcessor)
    state  (robot units)      -> normalized with the run's statistics JSON and `data.normalization` mode,
                                 zero-padded to the model's proprio_dim
    prompt (text)             -> tokenized like the training batches
    flow-matching sample      -> normalized chunk (H, A_model) -> first A_dataset dims -> de-normalized (the
                                 inverse of the training normalization); the dimensions kept unnormalized
                                 (the gripper) clipped to their [min, max] in the statistics
    non-finite actions        -> NonFiniteActionsError, never returned (a robot must not receive NaN)

A checkpoint folder is what training writes (`pg_vla.checkpoint_folder`): model.safetensors (the
averaged EMA/SWA weights when training kept an average), config.json, statistics/<dataset>.json,
tokenizer/ and inference.json, the record of the transforms training applied (camera roles, image
size and resize mode, normalization mode, and per dataset the exact action mask the loader used),
which `Policy` applies and inverts. Checkpoints written before that record existed are read from
their run config instead (`data.normalization` / `data.image_resize` absent mean bounds / stretch).
`Policy.from_checkpoint` also accepts a run's checkpoint folder (or its log_dir) and then takes the
newest intact checkpoint; a folder with a manifest.json is checked against it before it is read
(`verify=False` skips that). Nothing here imports tensorflow.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pg_vla.checkpoint_folder import (
    CONFIG_FILE,
    INFERENCE_FILE,
    MODEL_FILE,
    STATISTICS_DIR,
    TOKENIZER_DIR,
    read_inference_record,
)
from pg_vla.data.normalization import DatasetStatistics, Normalizer
from pg_vla.data.sources import inference_record
from pg_vla.model.checkpoint import load_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.paligemma.processing import VLAProcessor
from pg_vla.model.vla.pizero import PiZero

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class Observation:
    """One robot observation in its own units.

    images: camera role -> uint8 RGB image (H, W, 3), or its history (cond_steps, H, W, 3) oldest first;
            roles are the run's `data.camera_roles` (e.g. "primary", "wrist"), every one of them required.
            A single (H, W, 3) frame stands for an episode start when the model has cond_steps > 1: it
            is repeated over the history and the older copies are masked, as training saw episode starts.
    state:  proprio in robot units, (P,) or (cond_steps, P) oldest first; P is the dataset's proprio size.
            A single (P,) state is repeated over the history when the model has cond_steps > 1.
    prompt: the language instruction.
    history_steps: how many of the newest history steps are real (1..cond_steps); the older ones are
            padding from before the episode start (its first frame repeated), masked from the model.
            None: every step of a given image history is real. `ObservationHistory` fills this in.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    prompt: str
    history_steps: int | None = None


class ObservationHistory:
    """The rolling per-episode history a model with cond_steps C > 1 reads: the last C frames of every
    camera and the last C states. Before C steps have passed, the episode's first observation fills the
    older steps (and `history_steps` masks them), exactly as the data loaders pad episode starts.

        history = ObservationHistory(policy.config.cond_steps)
        history.reset()                          # at every episode start
        actions = policy.infer(history.push(obs))["actions"]

    With C = 1 `push` returns the observation unchanged."""

    def __init__(self, cond_steps: int):
        if cond_steps < 1:
            raise ValueError(f"cond_steps must be >= 1, got {cond_steps}")
        self.cond_steps = int(cond_steps)
        self.frames: deque[tuple[dict[str, np.ndarray], np.ndarray]] = deque(maxlen=self.cond_steps)

    def reset(self) -> None:
        self.frames.clear()

    def __len__(self) -> int:
        return len(self.frames)

    def push(self, obs: Observation) -> Observation:
        """Adds one single-frame observation ((H, W, 3) images, (P,) state) -> the observation with its
        history: images (C, H, W, 3), state (C, P), history_steps. A state given with its own history
        (C, P) is passed on as it is (its newest row is kept for later steps)."""
        if self.cond_steps == 1:
            return obs
        images = {role: np.asarray(image) for role, image in obs.images.items()}
        for role, image in images.items():
            if image.ndim != 3:
                raise ValueError(f"image {role!r}: push one frame (H, W, 3) at a time, got shape {image.shape}")
            if self.frames and image.shape != self.frames[-1][0][role].shape:
                raise ValueError(
                    f"image {role!r} changed size within an episode: {self.frames[-1][0][role].shape} -> {image.shape}"
                )
        if self.frames and set(images) != set(self.frames[-1][0]):
            raise ValueError(f"cameras changed within an episode: {sorted(self.frames[-1][0])} -> {sorted(images)}")
        state = np.asarray(obs.state)
        self.frames.append((images, state if state.ndim == 1 else state[-1]))
        real = len(self.frames)
        steps = [self.frames[0]] * (self.cond_steps - real) + list(self.frames)  # (C,), oldest first
        return Observation(
            images={role: np.stack([frame[role] for frame, _ in steps]) for role in images},
            state=np.stack([s for _, s in steps]) if state.ndim == 1 else state,
            prompt=obs.prompt,
            history_steps=real,
        )


def resolve_checkpoint_folder(path: str | Path, verify: bool = True) -> Path:
    """A checkpoint folder, a run's `checkpoints/` folder or its log_dir -> the checkpoint folder to load,
    checked against its manifest.json (sizes and sha256) unless `verify` is False."""
    from pg_vla.model.pretrained import detect_layout

    layout, folder = detect_layout(path, verify)
    if layout != "pg-vla":
        raise CheckpointError(
            f"{path} is a {layout} folder, not a pg-vla checkpoint: a policy loads what training "
            "wrote (fine-tune from this folder with pretrained_model_path=...)"
        )
    return folder


class NonFiniteActionsError(RuntimeError):
    """The model produced NaN or infinite actions: the weights (or the input) are broken; nothing is returned."""


class Policy:
    """pi0 inference with the normalization and tokenization the model was trained with."""

    def __init__(
        self,
        model: PiZero,
        processor: VLAProcessor,
        statistics: DatasetStatistics,
        *,
        dataset_name: str,
        camera_roles: Sequence[str],
        action_mask: Sequence[bool] | None,
        normalization: str = "bounds",
        num_steps: int | None = None,
        name: str = "pg-vla",
    ):
        """action_mask: the action dims training normalized (False: left in robot units, e.g. a 0..1
        gripper; None: every dim), as the checkpoint's inference record says."""
        self.model = model.eval()
        self.processor = processor
        self.config = model.config
        self.statistics = statistics
        self.dataset_name = dataset_name
        self.camera_roles = tuple(camera_roles)
        self.num_steps = num_steps or self.config.num_inference_steps
        self.name = name
        self.state_dim = statistics.proprio.dim
        self.action_dim = statistics.action.dim
        if self.state_dim > self.config.proprio_dim or self.action_dim > self.config.action_dim:
            raise CheckpointError(
                f"statistics of {dataset_name} (proprio {self.state_dim}, action {self.action_dim}) "
                f"exceed the model's proprio_dim {self.config.proprio_dim} / action_dim "
                f"{self.config.action_dim}"
            )
        if len(self.camera_roles) != self.config.num_cameras:
            raise CheckpointError(
                f"camera roles {list(self.camera_roles)} do not match the model's num_cameras {self.config.num_cameras}"
            )
        self.proprio_normalizer = Normalizer(statistics.proprio, normalization)
        scene = statistics.scene_state if model.config.scene_state_dim else None
        self.scene_state_normalizer = Normalizer(scene, normalization) if scene is not None else None
        self.action_normalizer = Normalizer(
            statistics.action, normalization, None if action_mask is None else list(action_mask)
        )
        kept = ~self.action_normalizer.mask  # unnormalized dims: the model's output is in robot units already
        self._kept_dims = np.flatnonzero(kept)
        self._kept_range = (statistics.action.min[kept], statistics.action.max[kept])
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        dataset_name: str | None = None,
        num_steps: int | None = None,
        compile: bool = False,
        verify: bool = True,
    ) -> "Policy":
        """Load a checkpoint folder written by training (see the module docstring).

        dataset_name picks the statistics to de-normalize with when the run mixed several datasets.
        dtype: float32 (default) or bfloat16 weights; compile: torch.compile the denoising step;
        verify: check every file against the checkpoint's manifest.json first (False: skip the hashing).
        """
        from pg_vla.utils.devices import resolve_device

        device = resolve_device(device)  # a missing GPU is named as such, before the checkpoint is read
        folder = resolve_checkpoint_folder(path, verify)
        run = _read_json(folder / CONFIG_FILE)
        data = run.get("data", {})
        stats_dir = folder / STATISTICS_DIR
        available = sorted(p.stem for p in stats_dir.glob("*.json")) if stats_dir.is_dir() else []
        if not available:
            raise CheckpointError(f"{folder} has no normalization statistics ({STATISTICS_DIR}/<dataset>.json)")
        if dataset_name is None:
            if len(available) > 1:
                raise ValueError(
                    f"{folder} was trained on several datasets {available}: choose the statistics with dataset_name"
                )
            dataset_name = available[0]
        elif dataset_name not in available:
            raise ValueError(f"dataset_name {dataset_name!r} has no statistics in {folder}; choose from {available}")
        statistics = DatasetStatistics.load(stats_dir / f"{dataset_name}.json")
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        model = load_model(folder / MODEL_FILE, device=device, dtype=dtype)
        cfg = model.config
        tokenizer_dir = folder / TOKENIZER_DIR
        if not tokenizer_dir.is_dir():
            raise CheckpointError(f"{folder} has no {TOKENIZER_DIR}/ folder: the prompt cannot be tokenized")
        stored = read_inference_record(folder)
        record = stored or inference_record(data, {dataset_name: statistics}, cfg.vision.image_size)  # older ones
        transforms = record.datasets.get(dataset_name)
        if transforms is None:
            raise CheckpointError(f"{folder / INFERENCE_FILE} records no transforms of {dataset_name}")
        if (transforms.proprio_dim, transforms.action_dim) != (statistics.proprio.dim, statistics.action.dim):
            raise CheckpointError(
                f"{folder / INFERENCE_FILE} records {transforms.proprio_dim}-D state and "
                f"{transforms.action_dim}-D actions for {dataset_name}, its statistics "
                f"{statistics.proprio.dim} / {statistics.action.dim}"
            )
        if record.image_size != cfg.vision.image_size:
            raise CheckpointError(
                f"{folder / INFERENCE_FILE} records image size {record.image_size}, the model "
                f"reads {cfg.vision.image_size}"
            )
        processor = VLAProcessor.from_pretrained(
            tokenizer_dir,
            max_text_tokens=cfg.max_text_tokens,
            image_size=cfg.vision.image_size,
            max_cameras=cfg.num_views,
            image_resize=record.image_resize,
        )
        roles = list(record.camera_roles)
        if stored is None and not data.get("camera_roles"):  # older run configs without camera roles
            roles = ["primary"] * cfg.num_cameras
        policy = cls(
            model,
            processor,
            statistics,
            dataset_name=dataset_name,
            camera_roles=roles,
            action_mask=transforms.action_mask,
            normalization=record.normalization,
            num_steps=num_steps,
            name=f"{folder.parent.parent.name}/{folder.name}",
        )
        if compile:
            policy.compile()
        return policy

    def compile(self) -> None:
        """torch.compile what sampling runs: the prefix encoder and the denoising step (flow head) or the
        bin logits (discrete head). The first calls are slow."""
        names = ("bin_logits",) if getattr(self.model, "is_discrete", False) else ("encode_prefix", "denoise_step")
        for name in names:
            setattr(self.model, name, torch.compile(getattr(self.model, name)))

    # ---- description -------------------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        return self.config.horizon_steps

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """What `infer` reads: for each field its shape, dtype and kind (image / state / prompt); the state's
        history_shape is the other accepted form, (cond_steps, P). Images may also come with their history
        (cond_steps, H, W, 3) (see `Observation`)."""
        size = self.config.vision.image_size
        spec = {
            role: {"shape": [size, size, 3], "dtype": "uint8", "kind": "image", "note": "any H x W is resized"}
            for role in self.camera_roles
        }
        history = [self.config.cond_steps, self.state_dim]
        spec["state"] = {
            "shape": [self.state_dim],
            "dtype": "float32",
            "kind": "state",
            "history_shape": history,
            "note": f"or {history} with history (history_shape, oldest first)",
        }
        spec["prompt"] = {"shape": [], "dtype": "str", "kind": "prompt"}
        return spec

    # ---- inference ---------------------------------------------------------------------------------
    def prepare(self, observations: Sequence[Observation]) -> dict[str, torch.Tensor]:
        """Observations -> model inputs: images (B, C*N, 3, S, S) frame-major (oldest frame first, cameras
        in role order), image_mask (B, C*N), text_ids/text_mask (B, L), proprio (B, C, P)."""
        images, masks, states = [], [], []
        for obs in observations:
            frames, valid = self._image_history(obs)  # (C, N) arrays, (C,)
            # each view separately: cameras may differ in size; (C*N, 3, S, S) in [-1, 1]
            images.append(torch.cat([self.processor.preprocess_images(f)[0] for step in frames for f in step]))
            masks.append(np.repeat(valid, len(self.camera_roles)))
            states.append(self.normalize_state(obs.state))
        text = self.processor.tokenize([obs.prompt for obs in observations])
        return {
            "images": torch.stack(images).to(self.device, self.dtype),
            "image_mask": torch.from_numpy(np.stack(masks)).to(self.device),
            "text_ids": text["input_ids"].to(self.device),
            "text_mask": text["attention_mask"].to(self.device),
            "proprio": torch.from_numpy(np.stack(states)).to(self.device),
        }

    def _image_history(self, obs: Observation) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """-> the C frames of every camera, oldest first ([step][camera] uint8 (H, W, 3)), and which of
        the C steps are real (C,) bool (False: padding before the episode start)."""
        c = self.config.cond_steps
        missing = [role for role in self.camera_roles if role not in obs.images]
        if missing:
            raise ValueError(f"observation lacks camera image(s) {missing}; the policy reads {list(self.camera_roles)}")
        per_camera, given = [], set()
        for role in self.camera_roles:
            image = np.asarray(obs.images[role])
            if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3 or 0 in image.shape:
                raise ValueError(
                    f"image {role!r} must be uint8 (H, W, 3) or its history ({c}, H, W, 3), "
                    f"got {image.dtype} {image.shape}"
                )
            if image.ndim == 4 and image.shape[0] != c:
                raise ValueError(f"image {role!r} has a history of {image.shape[0]} frames, the model reads {c}")
            given.add(image.ndim)
            per_camera.append(image if image.ndim == 4 else np.repeat(image[None], c, axis=0))
        if len(given) > 1:
            raise ValueError("give every camera a single frame (H, W, 3) or every camera its history (C, H, W, 3)")
        default = c if given == {4} else 1  # a lone frame: an episode start, its copies masked
        real = default if obs.history_steps is None else obs.history_steps
        if not 1 <= real <= c:
            raise ValueError(f"history_steps must be in 1..{c} (the model's cond_steps), got {obs.history_steps}")
        frames = [[camera[step] for camera in per_camera] for step in range(c)]
        return frames, np.arange(c) >= c - real

    def normalize_state(self, state: Any) -> np.ndarray:
        """Robot-unit state (P,) or (C, P) -> normalized, zero-padded (C, proprio_dim) float32."""
        state = np.asarray(state, dtype=np.float64)
        c, p = self.config.cond_steps, self.state_dim
        if state.ndim == 1:
            if state.shape[0] != p:
                raise ValueError(f"state has {state.shape[0]} values, the policy expects {p} ({self.dataset_name})")
            state = np.repeat(state[None], c, axis=0)
        elif state.shape != (c, p):
            raise ValueError(f"state must be ({p},) or ({c}, {p}), got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or infinite values")
        out = np.zeros((c, self.config.proprio_dim), dtype=np.float32)
        out[:, :p] = self.proprio_normalizer.normalize(state)
        return out

    def noise(self, batch: int, seed: int | None) -> torch.Tensor:
        """The flow's starting point (B, H, A_model); a seed makes it reproducible across processes."""
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        shape = (batch, self.config.horizon_steps, self.config.action_dim)
        return torch.randn(shape, generator=generator).to(self.device)

    @torch.no_grad()
    def infer_batch(
        self, observations: Sequence[Observation], seed: int | None = None, noise: torch.Tensor | None = None
    ) -> dict[str, np.ndarray]:
        """-> actions (B, H, A) in robot units, normalized_actions (B, H, A) as the model predicted them."""
        if not observations:
            raise ValueError("no observations given")
        inputs = self.prepare(observations)
        noise = self.noise(len(observations), seed) if noise is None else noise.to(self.device)
        normalized = self.model.sample_actions(**inputs, noise=noise, num_steps=self.num_steps)
        normalized = normalized[..., : self.action_dim].float().cpu().numpy()  # (B, H, A_dataset)
        bad = ~np.isfinite(normalized)
        if bad.any():
            raise NonFiniteActionsError(
                f"the model produced {int(bad.sum())} non-finite action values of {bad.size} (NaN or inf) for "
                f"{len(observations)} observation(s): its weights or inputs are broken; no actions are returned"
            )
        actions = self.action_normalizer.unnormalize(normalized.astype(np.float64))
        low, high = self._kept_range  # e.g. a gripper in 0..1 stays in 0..1
        actions[..., self._kept_dims] = np.clip(actions[..., self._kept_dims], low, high)
        return {"actions": actions.astype(np.float32), "normalized_actions": normalized}

    @torch.no_grad()
    def scene_state(self, observations: Sequence[Observation]) -> np.ndarray:
        """The model's scene-state readout (B, K) in the data's units (e.g. object and goal xyz in metres):
        where the policy places the scene's objects. Models trained with the scene-state target only."""
        if self.scene_state_normalizer is None:
            raise RuntimeError(
                "this policy has no scene-state readout (trained without model.scene_state_weight, or its "
                "statistics hold no scene_state)"
            )
        inputs = self.prepare(observations)
        normalized = self.model.predict_scene_state(**inputs).cpu().numpy().astype(np.float64)
        return self.scene_state_normalizer.unnormalize(normalized)

    def infer(self, observation: Observation, seed: int | None = None) -> dict[str, np.ndarray]:
        """One observation -> actions (H, A) in robot units (and normalized_actions)."""
        out = self.infer_batch([observation], seed=seed)
        return {key: value[0] for key, value in out.items()}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete pg-vla checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
