"""Text and image preprocessing for the VLA model, in PaliGemma's conventions.

Text. The text block of a sample is ``<bos>`` + prompt + ``"\\n"``, the prefix format of PaliGemma
(``transformers.PaliGemmaProcessor`` produces the same ids after its image tokens). The image tokens
are not part of it: the model places the image embeddings in front of the text block itself.

Images. SigLIP expects RGB images of ``image_size x image_size`` scaled to [-1, 1]
(``x / 255 * 2 - 1``, i.e. rescale 1/255, mean 0.5, std 0.5). Only ``uint8`` images are accepted
(see :meth:`VLAProcessor.preprocess_images` for the accepted layouts); by default
(``image_resize="stretch"``) other sizes are resized to the square (aspect ratio not kept, as in
PaliGemma) with antialiased bicubic interpolation in torch, rounded back to 0..255 like an 8-bit
resize. That is close to, but not bit-identical with, the PIL bicubic resize of the transformers image
processor (within about 1 grey level when downsizing; single pixels at sharp edges can differ more when
upsizing). Images already at ``image_size`` are not resampled.

``image_resize="pad"`` (pi0's convention, the run config's ``data.image_resize``) keeps the aspect
ratio instead: the image is resized into the content box of :func:`pg_vla.data.image_resize.pad_box`
(the longer side becomes ``image_size``) with antialiased bilinear interpolation, rounded back to
0..255, and the rest is black, i.e. exactly -1 after scaling. Bilinear is the filter of the training
loaders' resize (``tf.image.resize(bilinear, antialias)``) and of openpi's ``resize_with_pad``; the
torch result agrees with them to within 1 grey level.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pg_vla.data.image_resize import image_resize_mode, pad_box

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5
ImageInput = np.ndarray | torch.Tensor


class VLAProcessor:
    """Turns prompts into padded PaliGemma text blocks and uint8 camera images into SigLIP pixels.

    Args:
        tokenizer: a Gemma/PaliGemma tokenizer (``<bos>``, ``<eos>`` and ``<pad>`` must be defined).
        image_size: side S of the square SigLIP input.
        max_text_tokens: length T of the padded text block, ``<bos>`` and the final newline included (>= 2).
        max_cameras: if given, inputs with more images per sample than this are rejected (for pi0 the model's
            ``num_views``: every camera at every history frame).
        image_resize: ``"stretch"`` (to the square, aspect ratio not kept) or ``"pad"`` (aspect ratio kept,
            black padding; pi0).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_size: int,
        max_text_tokens: int,
        max_cameras: int | None = None,
        image_resize: str = "stretch",
    ) -> None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"tokenizer has no {name.removesuffix('_id')} defined")
        self.tokenizer = tokenizer
        self.bos_token_id: int = tokenizer.bos_token_id
        self.eos_token_id: int = tokenizer.eos_token_id
        self.pad_token_id: int = tokenizer.pad_token_id
        self.newline_ids: list[int] = self._encode("\n")
        min_tokens = 1 + len(self.newline_ids)
        if max_text_tokens < min_tokens:
            raise ValueError(f"max_text_tokens must be >= {min_tokens} (<bos> + newline), got {max_text_tokens}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if max_cameras is not None and max_cameras <= 0:
            raise ValueError(f"max_cameras must be positive, got {max_cameras}")
        self.image_size = int(image_size)
        self.max_text_tokens = int(max_text_tokens)
        self.max_cameras = max_cameras
        self.image_resize = image_resize_mode(image_resize)

    # ------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        max_text_tokens: int,
        image_size: int | None = None,
        max_cameras: int | None = None,
        image_resize: str = "stretch",
    ) -> VLAProcessor:
        """Load the tokenizer of a local PaliGemma folder with ``AutoTokenizer``.

        ``image_size`` defaults to the folder's image processor size (``preprocessor_config.json`` or
        ``processor_config.json``), else ``config.json``'s ``vision_config.image_size``.

        Raises:
            FileNotFoundError: the folder does not exist or holds no tokenizer.json / tokenizer.model.
            ValueError: no image size given and none found in the folder.
        """
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"PaliGemma folder {str(path)!r} does not exist")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"PaliGemma folder {str(path)!r} holds no tokenizer files (expected one of {TOKENIZER_FILES})"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if image_size is None:
            image_size = read_image_size(path)
        return cls(
            tokenizer,
            image_size=image_size,
            max_text_tokens=max_text_tokens,
            max_cameras=max_cameras,
            image_resize=image_resize,
        )

    # ------------------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, prompt: str) -> list[int]:
        """Unpadded, untruncated ids of ``<bos>`` + prompt + ``"\\n"``.

        The prompt and newline are encoded together, as ``PaliGemmaProcessor`` does; ``<bos>`` is always
        prepended explicitly, whatever the tokenizer's ``add_bos_token`` setting.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be str, got {type(prompt).__name__}")
        return [self.bos_token_id, *self._encode(prompt + "\n")]

    def _fit_prompt(self, prompt: str) -> list[int]:
        """``prompt_ids`` cut to ``max_text_tokens``, keeping ``<bos>`` and the final newline.

        A too-long prompt keeps its first ``max_text_tokens - 1 - len(newline_ids)`` tokens (of the prompt
        encoded alone), followed by the newline token(s).
        """
        ids = self.prompt_ids(prompt)
        if len(ids) <= self.max_text_tokens:
            return ids
        keep = self.max_text_tokens - 1 - len(self.newline_ids)
        return [self.bos_token_id, *self._encode(prompt)[:keep], *self.newline_ids]

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded text blocks of a batch of prompts.

        Returns:
            ``input_ids``: LongTensor (B, T), ``<bos>`` + prompt + ``"\\n"`` right-padded with the pad id
            (truncated as in :meth:`_fit_prompt`); ``attention_mask``: BoolTensor (B, T), True on real tokens.
            T = ``max_text_tokens``.
        """
        if isinstance(prompts, str):
            raise TypeError("tokenize expects a list of prompts, got a single str")
        input_ids = torch.full((len(prompts), self.max_text_tokens), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(prompts), self.max_text_tokens), dtype=torch.bool)  # (B, T)
        for row, prompt in enumerate(prompts):
            ids = self._fit_prompt(prompt)
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def generation_prompt_ids(self, prompt: str) -> torch.Tensor:
        """LongTensor (1, L): unpadded, untruncated ``<bos>`` + prompt + ``"\\n"`` for text generation."""
        return torch.tensor([self.prompt_ids(prompt)], dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of generated ids (1-D, or (1, L)); stops at the first ``<eos>``, skips special tokens."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim == 2 and ids.shape[0] == 1:
                ids = ids[0]
            if ids.ndim != 1:
                raise ValueError(f"decode expects 1-D ids or shape (1, L), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------------------
    # Images
    # ------------------------------------------------------------------------------------------------------

    def preprocess_images(self, images: ImageInput) -> torch.Tensor:
        """uint8 RGB images -> FloatTensor (B, N_cam, 3, S, S) in [-1, 1].

        Accepted inputs (``np.ndarray`` or ``torch.Tensor``, dtype uint8, values 0..255):

        - ``(H, W, 3)``: one image (B = N_cam = 1);
        - ``(B, H, W, 3)``: one camera per sample;
        - ``(B, N_cam, H, W, 3)``: channel-last cameras;
        - ``(B, N_cam, 3, H, W)``: channel-first cameras (rank 5 only).

        A rank-5 input with 3 in both dim 2 and the last dim is rejected as ambiguous. Float images are
        rejected too (also those in [0, 1]: convert them to uint8 first), so that 0..1 and 0..255 floats
        cannot be mixed up. The result is on the input's device (CPU for numpy).

        Raises:
            TypeError: not a numpy array or torch tensor.
            ValueError: wrong dtype, rank, channel count, empty dimension, or more than ``max_cameras``.
        """
        pixels = self._to_channel_first(images)  # (B, N, 3, H, W) uint8
        batch, cameras, _, height, width = pixels.shape
        if self.max_cameras is not None and cameras > self.max_cameras:
            raise ValueError(f"got {cameras} cameras per sample, more than max_cameras={self.max_cameras}")
        flat = pixels.reshape(batch * cameras, 3, height, width).float()  # (B*N, 3, H, W) in 0..255
        flat = self._resize(flat)  # (B*N, 3, S, S)
        flat = (flat * (1.0 / 255.0) - IMAGE_MEAN) / IMAGE_STD
        return flat.reshape(batch, cameras, 3, self.image_size, self.image_size)

    def _to_channel_first(self, images: ImageInput) -> torch.Tensor:
        """Validate ``images`` and return a uint8 tensor (B, N_cam, 3, H, W)."""
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise ValueError(_dtype_message(str(images.dtype)))
            tensor = torch.from_numpy(np.ascontiguousarray(images))
        elif isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise ValueError(_dtype_message(str(images.dtype)))
            tensor = images
        else:
            raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")

        shape = tuple(tensor.shape)
        if tensor.ndim == 5 and shape[2] == 3 and shape[-1] == 3:
            raise ValueError(f"ambiguous image layout {shape}: both dim 2 and the last dim have size 3")
        if tensor.ndim == 5 and shape[2] == 3:
            channel_first = tensor  # (B, N, 3, H, W)
        elif tensor.ndim in (3, 4, 5):
            if shape[-1] != 3:
                raise ValueError(
                    f"images must have 3 (RGB) channels in the last dim (channel-first layout is accepted "
                    f"only as rank-5 (B, N_cam, 3, H, W)); got shape {shape} with {shape[-1]} channels"
                )
            if tensor.ndim == 3:
                channel_last = tensor[None, None]  # (H, W, 3) -> (1, 1, H, W, 3)
            elif tensor.ndim == 4:
                channel_last = tensor[:, None]  # (B, H, W, 3) -> (B, 1, H, W, 3)
            else:
                channel_last = tensor  # (B, N, H, W, 3)
            channel_first = channel_last.permute(0, 1, 4, 2, 3)  # (B, N, 3, H, W)
        else:
            raise ValueError(
                f"images must have rank 3 (H, W, 3), 4 (B, H, W, 3) or 5 (B, N_cam, H, W, 3) / "
                f"(B, N_cam, 3, H, W); got rank {tensor.ndim} with shape {shape}"
            )
        if 0 in channel_first.shape:
            raise ValueError(f"images have an empty dimension: shape {shape}")
        return channel_first

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) float 0..255 -> (M, 3, S, S), rounded and clamped to 0..255.

        stretch: antialiased bicubic to S x S; pad: antialiased bilinear into the content box, zeros around it.
        """
        size = self.image_size
        if pixels.shape[-2:] == (size, size):
            return pixels
        if self.image_resize == "stretch":
            resized = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            return resized.round().clamp(0.0, 255.0)
        box = pad_box(pixels.shape[-2], pixels.shape[-1], size)
        content = F.interpolate(
            pixels, size=(box.height, box.width), mode="bilinear", antialias=True, align_corners=False
        )  # (M, 3, h, w)
        padding = (box.left, size - box.width - box.left, box.top, size - box.height - box.top)
        return F.pad(content.round().clamp(0.0, 255.0), padding, value=0.0)  # (M, 3, S, S)

    # ------------------------------------------------------------------------------------------------------
    # Both
    # ------------------------------------------------------------------------------------------------------

    def __call__(self, prompts: Sequence[str], images: ImageInput) -> dict[str, torch.Tensor]:
        """``tokenize(prompts)`` and ``preprocess_images(images)`` in one dict.

        Returns:
            ``input_ids`` (B, T) long, ``attention_mask`` (B, T) bool, ``pixel_values`` (B, N_cam, 3, S, S)
            float32. The batch sizes of prompts and images must agree.
        """
        text = self.tokenize(prompts)
        pixel_values = self.preprocess_images(images)
        if pixel_values.shape[0] != text["input_ids"].shape[0]:
            raise ValueError(f"got {len(prompts)} prompts but {pixel_values.shape[0]} image samples")
        return {**text, "pixel_values": pixel_values}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, max_text_tokens={self.max_text_tokens}, "
            f"max_cameras={self.max_cameras}, image_resize={self.image_resize!r}, vocab={len(self.tokenizer)})"
        )


def _dtype_message(dtype: str) -> str:
    """Error text for a non-uint8 image dtype."""
    return (
        f"images must have dtype uint8 (values 0..255), got {dtype}; convert float images in [0, 1] with "
        f"(x * 255).round() to uint8 first"
    )


def read_image_size(folder: str | Path) -> int:
    """Square image size of a PaliGemma folder (image processor config first, then ``config.json``).

    Raises:
        ValueError: no size found, or a non-square size.
    """
    path = Path(folder)
    preprocessor = _read_json(path / "preprocessor_config.json")
    processor = _read_json(path / "processor_config.json")
    config = _read_json(path / "config.json")
    candidates = (  # (where, value or None)
        ("preprocessor_config.json: size", preprocessor.get("size")),
        ("processor_config.json: image_processor.size", (processor.get("image_processor") or {}).get("size")),
        ("config.json: vision_config.image_size", (config.get("vision_config") or {}).get("image_size")),
    )
    for where, value in candidates:
        if value is not None:
            return _square_size(value, f"{path}/{where}")
    raise ValueError(
        f"no image size found in {str(path)!r} (looked at preprocessor_config.json, processor_config.json, "
        "config.json); pass image_size explicitly"
    )


def _read_json(path: Path) -> dict[str, Any]:
    """Parsed JSON object at ``path``, or an empty dict if the file does not exist."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _square_size(value: Any, source: str) -> int:
    """Side of a square size given as int, [H, W] or {"height", "width"} / {"shortest_edge"}."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            height, width = value["height"], value["width"]
        elif "shortest_edge" in value:
            height = width = value["shortest_edge"]
        else:
            raise ValueError(f"unrecognised image size {value!r} in {source}")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        height, width = value
    else:
        raise ValueError(f"unrecognised image size {value!r} in {source}")
    if height != width:
        raise ValueError(f"non-square image size {height}x{width} in {source}")
    return int(height)
