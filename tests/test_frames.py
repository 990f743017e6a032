"""Frame transforms: decoding, resizing and train-time augmentation (tensorflow)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pg_vla.data.rlds.config import NO_AUGMENT, AugmentConfig


@pytest.fixture(scope="module")
def frames():
    from pg_vla.data.rlds import frames as module

    return module


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_decode_exact_size_and_resize(frames):
    import tensorflow as tf

    image = _image(32)
    decoded, present = frames.decode_and_resize(tf.constant(_png(image)), 32)
    assert bool(present) and np.array_equal(decoded.numpy(), image)  # PNG at the target size: untouched
    resized, _ = frames.decode_and_resize(tf.constant(_png(_image(48))), 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == tf.uint8
    flat = np.full((48, 48, 3), 77, np.uint8)  # a constant image stays constant through any resize
    assert np.all(frames.decode_and_resize(tf.constant(_png(flat)), 32)[0].numpy() == 77)
    black, present = frames.decode_and_resize(tf.constant(""), 32)
    assert not bool(present) and not black.numpy().any()


def test_augment_is_seeded_and_bounded(frames):
    import tensorflow as tf

    image = tf.constant(_image(32))
    seed = tf.constant([1, 2], tf.int64)
    assert np.array_equal(frames.augment(image, NO_AUGMENT, seed).numpy(), image.numpy())
    cfg = AugmentConfig()
    a = frames.augment(image, cfg, seed).numpy()
    assert np.array_equal(a, frames.augment(image, cfg, seed).numpy())  # same seed, same result
    assert not np.array_equal(a, frames.augment(image, cfg, tf.constant([3, 4], tf.int64)).numpy())
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    gray = tf.constant(np.full((32, 32, 3), 128, np.uint8))
    brightness = AugmentConfig(
        random_resized_crop=False, brightness=0.1, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0
    )
    shifts = [
        float(frames.augment(gray, brightness, tf.constant([s, 7], tf.int64)).numpy().mean()) - 128 for s in range(20)
    ]
    assert max(abs(s) for s in shifts) <= 0.1 * 255 + 1  # a brightness delta of at most 0.1
    assert len({round(s) for s in shifts}) > 3
