"""Frame transforms on tf.data: decode, resize, train-time augmentation (per camera role).

Images travel encoded (JPEG/PNG bytes) through the shuffle buffer and are decoded only here, after
shuffling, so the buffer holds ~10-30 KB per frame instead of 150 KB of pixels. An empty string
(a camera the dataset lacks) becomes a black frame with `image_mask` False. Frames that are not
S x S are resized per `data.image_resize` (`pg_vla.data.image_resize`: stretched, or resized keeping
the aspect ratio and padded black); augmentation then acts on the whole S x S frame. The pipeline
augments every frame of a camera's history with the same seed, so one sample's C frames of a camera
get the same crop and colour jitter (`augment` draws all its parameters from the seed alone).
"""

from __future__ import annotations

import tensorflow as tf

from pg_vla.data.image_resize import image_resize_mode
from pg_vla.data.rlds.config import AugmentConfig


def decode_and_resize(encoded: tf.Tensor, size: int, image_resize: str = "stretch") -> tuple[tf.Tensor, tf.Tensor]:
    """encoded () string -> (image (size, size, 3) uint8, present () bool); `image_resize` stretch or pad."""
    resize = {"stretch": _resize, "pad": _resize_with_pad}[image_resize_mode(image_resize)]
    present = tf.strings.length(encoded) > 0

    def decode() -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        if_resize = tf.logical_or(tf.shape(image)[0] != size, tf.shape(image)[1] != size)
        return tf.cond(if_resize, lambda: resize(image, size), lambda: image)

    image = tf.cond(present, decode, lambda: tf.zeros([size, size, 3], tf.uint8))
    image.set_shape([size, size, 3])
    return image, present


def _resize(image: tf.Tensor, size: int | tf.Tensor, width: int | tf.Tensor | None = None) -> tf.Tensor:
    """(H, W, 3) uint8 -> (size, width or size, 3) uint8: antialiased bilinear, rounded half to even."""
    target = [size, size if width is None else width]
    resized = tf.image.resize(tf.cast(image, tf.float32), target, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def pad_box_tf(height: tf.Tensor, width: tf.Tensor, size: int) -> tuple[tf.Tensor, ...]:
    """`pg_vla.data.image_resize.pad_box` on int32 scalars: (content height, width, top, left)."""
    tall = height >= width
    new_height = tf.where(tall, size, tf.maximum(1, height * size // width))
    new_width = tf.where(tall, tf.maximum(1, width * size // height), size)
    return new_height, new_width, (size - new_height) // 2, (size - new_width) // 2


def _resize_with_pad(image: tf.Tensor, size: int) -> tf.Tensor:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: the aspect ratio kept, black padding around the content."""
    shape = tf.shape(image)
    new_height, new_width, top, left = pad_box_tf(shape[0], shape[1], size)
    content = _resize(image, new_height, new_width)  # (h, w, 3)
    return tf.pad(content, [[top, size - new_height - top], [left, size - new_width - left], [0, 0]])


def augment(image: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """image (S, S, 3) uint8 -> augmented (S, S, 3) uint8; `seed` (2,) int makes it reproducible."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    x = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
    if cfg.random_resized_crop:
        x = _random_resized_crop(x, cfg, seeds[0])
    if cfg.brightness > 0:
        x = tf.image.stateless_random_brightness(x, cfg.brightness, seeds[1])
    if cfg.contrast != (1.0, 1.0):
        x = tf.image.stateless_random_contrast(x, cfg.contrast[0], cfg.contrast[1], seeds[2])
    if cfg.saturation != (1.0, 1.0):
        x = tf.image.stateless_random_saturation(x, cfg.saturation[0], cfg.saturation[1], seeds[3])
    if cfg.hue > 0:
        x = tf.image.stateless_random_hue(x, cfg.hue, seeds[4])
    return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8, saturate=True)


def _random_resized_crop(x: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """A crop of random area fraction and aspect ratio at a random place, resized back to the input size."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    area = tf.random.stateless_uniform([], seeds[0], cfg.crop_scale[0], cfg.crop_scale[1])
    log_ratio = tf.random.stateless_uniform(
        [], seeds[1], tf.math.log(cfg.crop_ratio[0]), tf.math.log(cfg.crop_ratio[1])
    )
    ratio = tf.exp(log_ratio)  # width / height
    height = tf.minimum(tf.sqrt(area / ratio), 1.0)
    width = tf.minimum(tf.sqrt(area * ratio), 1.0)
    offsets = tf.random.stateless_uniform([2], seeds[2]) * tf.stack([1.0 - height, 1.0 - width])
    box = tf.stack([offsets[0], offsets[1], offsets[0] + height, offsets[1] + width])[None]
    size = tf.shape(x)[:2]
    return tf.image.crop_and_resize(x[None], box, [0], size)[0]
