"""Typed configuration of the RLDS pipeline (no tensorflow: trainers and Hydra build it freely)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pg_vla.data.image_resize import image_resize_mode
from pg_vla.data.normalization import normalization_mode
from pg_vla.data.rlds.dataset_configs import CAMERA_ROLES, get_mix


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time image augmentation of one camera; ranges are multiplicative factors or deltas."""

    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)  # fraction of the image area kept
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio of the crop
    brightness: float = 0.1  # max delta, images in [0, 1]
    contrast: tuple[float, float] = (0.9, 1.1)
    saturation: tuple[float, float] = (0.9, 1.1)
    hue: float = 0.05  # max delta, fraction of the hue circle


NO_AUGMENT = AugmentConfig(
    random_resized_crop=False, brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0
)
WRIST_AUGMENT = AugmentConfig(random_resized_crop=False)  # cropping a wrist view hides the gripper


@dataclass
class RLDSConfig:
    """What to read and how. Thread counts and buffer sizes bound memory (see README)."""

    data_path: str
    mix: str = "bridge"  # a name in dataset_configs.MIXES
    split: str = "train"
    train: bool = True  # shuffle, augment and repeat forever; False: one ordered pass, no augmentation
    deterministic: bool = False  # training stream reproducible from the seed (slower parallel maps); eval always is
    camera_roles: tuple[str, ...] = ("primary",)
    image_size: int = 224
    image_resize: str = "stretch"  # or "pad": aspect ratio kept, black padding (pi0); see data/image_resize.py
    cond_steps: int = 1  # C: steps of proprio and image history (images come frame-major, see data/dataloader.py)
    horizon_steps: int = 4
    # also yield each frame's scene-state target `scene_state` (B, K), normalized like proprio (every dataset
    # of the mix needs a scene state: `DatasetConfig.scene_state_key`); set by the trainer from the model's
    # scene-state readout (model.scene_state_weight > 0), not a data.* key
    scene_state: bool = False
    skip_unlabeled: bool = True
    skip_non_finite: bool = False  # leave out (and count) episodes with NaN/inf action or proprio; False: refuse
    normalization: str = "bounds"  # or mean_std (pi0), quantile (pi0.5); gaussian = mean_std. See normalization.py
    normalize_gripper: bool = False  # the gripper action keeps 0..1 unless set
    batch_size: int = 16
    shuffle_buffer: int = 10_000  # frames (encoded)
    read_threads: int = 4  # parallel tfrecord readers / episode transforms
    transform_threads: int = 4  # parallel frame decoding and augmentation
    ram_budget_gb: float = 4.0  # tf.data autotune RAM budget
    seed: int = 0
    statistics_split: str = "train"  # validation data is normalized with the training statistics too
    statistics_dir: str | None = None  # where computed statistics are cached (default: next to the data)
    statistics_paths: dict[str, str] = field(default_factory=dict)  # dataset -> fixed statistics JSON
    augment: dict[str, AugmentConfig] = field(
        default_factory=lambda: {"primary": AugmentConfig(), "secondary": AugmentConfig(), "wrist": WRIST_AUGMENT}
    )

    def __post_init__(self) -> None:
        # Hydra / JSON hand lists and dicts: restore the typed values.
        self.camera_roles = tuple(self.camera_roles)
        self.augment = {
            role: a
            if isinstance(a, AugmentConfig)
            else AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(a).items()})
            for role, a in self.augment.items()
        }
        self.statistics_paths = dict(self.statistics_paths)
        unknown = set(self.camera_roles) - set(CAMERA_ROLES)
        if unknown or not self.camera_roles:
            raise ValueError(f"camera_roles must be a non-empty subset of {CAMERA_ROLES}, got {self.camera_roles}")
        get_mix(self.mix)  # validates the name
        normalization_mode(self.normalization)
        image_resize_mode(self.image_resize)
        for name, value in (
            ("cond_steps", self.cond_steps),
            ("horizon_steps", self.horizon_steps),
            ("batch_size", self.batch_size),
            ("image_size", self.image_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
