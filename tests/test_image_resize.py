"""`data.image_resize`: stretch (default) or pad (pi0's resize_with_pad), the same in the tf pipeline, the
Parquet loader and inference (`VLAProcessor`).

References are independent of the code under test: hand-computed content boxes, PIL's bilinear resize
(Image.BILINEAR, a triangle filter widened when shrinking) and TensorFlow's own `tf.image.resize`.
Tolerance: the tf pipeline and the numpy loader are bit-identical; torch (inference) and PIL compute
the same filter with other roundings, so content pixels may differ from them by 1 grey level
(2 / 255 after scaling to [-1, 1]). Padding is exact everywhere: 0 in uint8, -1 after scaling.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pg_vla.data.image_resize import pad_box
from pg_vla.data.parquet.config import ParquetConfig
from pg_vla.data.parquet.images import decode_and_resize as numpy_decode_and_resize
from pg_vla.data.rlds.config import RLDSConfig
from pg_vla.model.paligemma.processing import VLAProcessor

GREY_LEVEL = 2.0 / 255.0  # one uint8 level in model units
BRIDGE = "bridge_dataset"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _pil_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR), dtype=np.float64)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "height, width, size, box",
    [
        (40, 64, 32, (20, 32, 6, 0)),  # wide: 64 -> 32, 40 -> 20, 12 rows of padding split 6 / 6
        (64, 40, 32, (32, 20, 0, 6)),  # tall
        (35, 64, 32, (17, 32, 7, 0)),  # 35 * 32 // 64 = 17; 15 rows: 7 above, 8 below
        (480, 640, 224, (168, 224, 28, 0)),
        (256, 320, 224, (179, 224, 22, 0)),  # 45 rows: 22 above, 23 below
        (48, 48, 32, (32, 32, 0, 0)),  # square: no padding
        (12, 20, 32, (19, 32, 6, 0)),  # upsizing: 12 * 32 // 20 = 19
        (1, 500, 224, (1, 224, 111, 0)),  # at least one row of content
    ],
)
def test_pad_box_by_hand(height, width, size, box):
    assert tuple(pad_box(height, width, size)) == box


def test_unknown_mode_is_named_and_stretch_is_the_default(tiny_checkpoint_dir):
    message = "unknown image_resize 'crop'; accepted: stretch, pad"
    with pytest.raises(ValueError, match=message):
        RLDSConfig(data_path="x", image_resize="crop")
    with pytest.raises(ValueError, match=message):
        ParquetConfig(paths="x", image_resize="crop")
    with pytest.raises(ValueError, match=message):
        VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8, image_resize="crop")
    with pytest.raises(ValueError, match=message):
        numpy_decode_and_resize(_png(_image(4, 6)), 8, "crop")
    assert RLDSConfig(data_path="x").image_resize == ParquetConfig(paths="x").image_resize == "stretch"
    assert VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8).image_resize == "stretch"


@pytest.mark.parametrize("height, width", [(40, 64), (64, 40), (35, 64), (12, 20)])
def test_processor_pads_with_minus_one_and_matches_pil(tiny_checkpoint_dir, height, width):
    processor = VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8, image_size=32, image_resize="pad")
    image = _image(height, width)
    pixels = processor.preprocess_images(image)[0, 0].permute(1, 2, 0).double().numpy()  # (32, 32, 3)
    box = pad_box(height, width, 32)
    content = np.zeros((32, 32), bool)
    content[box.top : box.top + box.height, box.left : box.left + box.width] = True
    assert np.all(pixels[~content] == -1.0)  # exactly black
    reference = _pil_bilinear(image, box.height, box.width) / 255.0 * 2.0 - 1.0
    got = pixels[box.top : box.top + box.height, box.left : box.left + box.width]
    np.testing.assert_allclose(got, reference, rtol=0, atol=GREY_LEVEL + 1e-6)
    assert np.mean(np.abs(got - reference) > 1e-6) < 0.2  # most pixels agree exactly


@pytest.mark.parametrize(
    "height, width, size", [(40, 64, 32), (64, 40, 32), (35, 64, 32), (12, 20, 32), (100, 37, 24), (240, 320, 224)]
)
def test_tensorflow_numpy_and_inference_agree(tiny_checkpoint_dir, height, width, size):
    tf = pytest.importorskip("tensorflow")
    from pg_vla.data.rlds import frames

    image = _image(height, width, seed=height * width)
    encoded = _png(image)
    padded_tf, present = frames.decode_and_resize(tf.constant(encoded), size, "pad")
    padded_tf = padded_tf.numpy()
    padded_np, _ = numpy_decode_and_resize(encoded, size, "pad")
    assert bool(present) and padded_tf.shape == (size, size, 3)
    np.testing.assert_array_equal(padded_np, padded_tf)  # the two training loaders: bit-identical
    box = pad_box(height, width, size)
    window = (slice(box.top, box.top + box.height), slice(box.left, box.left + box.width))
    outside = np.ones((size, size), bool)
    outside[window] = False
    assert not padded_tf[outside].any()
    # the content against TensorFlow's resize called directly, and against PIL
    direct = tf.image.resize(tf.constant(image, tf.float32), [box.height, box.width], "bilinear", antialias=True)
    np.testing.assert_array_equal(padded_tf[window], np.clip(np.round(direct.numpy()), 0, 255).astype(np.uint8))
    np.testing.assert_allclose(padded_tf[window], _pil_bilinear(image, box.height, box.width), rtol=0, atol=1)
    # inference from the raw frame: the same padding, content within one grey level of training's
    processor = VLAProcessor.from_pretrained(
        tiny_checkpoint_dir, max_text_tokens=8, image_size=size, image_resize="pad"
    )
    pixels = processor.preprocess_images(image)[0, 0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(pixels, padded_tf / 255.0 * 2.0 - 1.0, rtol=0, atol=GREY_LEVEL + 1e-6)
    assert np.all(pixels[outside] == -1.0)
    # stretch (the default) is unchanged: the full square, no black border
    stretched, _ = frames.decode_and_resize(tf.constant(encoded), size)
    np.testing.assert_array_equal(stretched.numpy(), numpy_decode_and_resize(encoded, size)[0])
    assert stretched.numpy()[outside].any()


def test_pad_box_tf_matches_python():
    tf = pytest.importorskip("tensorflow")
    from pg_vla.data.rlds.frames import pad_box_tf

    for size in (32, 224):
        for height in range(1, 300, 7):
            for width in range(1, 300, 11):
                got = tuple(int(v) for v in pad_box_tf(tf.constant(height), tf.constant(width), size))
                assert got == tuple(pad_box(height, width, size)), (height, width, size)


@pytest.fixture(scope="module")
def wide_bridge(tmp_path_factory):
    """A synthetic bridge dataset with 20x32 frames, and its Parquet conversion."""
    pytest.importorskip("tensorflow")
    from pg_vla.data.parquet.convert import convert_rlds_to_parquet
    from pg_vla.data.rlds.synthetic import make_synthetic_bridge

    root = tmp_path_factory.mktemp("wide_bridge")
    make_synthetic_bridge(
        root / "rlds",
        episodes_per_split=3,
        splits=("train",),
        min_steps=3,
        max_steps=5,
        image_size=(20, 32),
        num_shards=1,
        seed=2,
    )
    convert_rlds_to_parquet(root / "rlds", BRIDGE, "train", root / "parquet", rows_per_group=8)
    return root


def test_both_loaders_pad_a_dataset_identically(wide_bridge, tmp_path):
    """data.image_resize=pad reaches the decoding of both loaders: the same batches, black above and below."""
    from pg_vla.data.parquet import make_parquet_loader
    from pg_vla.data.rlds import pipeline

    roles = ("primary", "secondary")
    common = dict(
        train=False, image_size=16, cond_steps=1, horizon_steps=2, batch_size=64, camera_roles=roles, image_resize="pad"
    )
    rlds = RLDSConfig(
        data_path=str(wide_bridge / "rlds"),
        mix="bridge",
        read_threads=1,
        transform_threads=1,
        statistics_dir=str(tmp_path / "rlds_stats"),
        **common,
    )
    ds, _ = pipeline.make_dataset(rlds)
    expected = [pipeline.to_numpy_batch(b) for b in ds]
    parquet = ParquetConfig(
        paths=(str(wide_bridge / "parquet"),),
        image_2_role="secondary",
        num_workers=0,
        statistics_dir=str(tmp_path / "parquet_stats"),
        **common,
    )
    loader, _ = make_parquet_loader(parquet)
    got = [{k: v.numpy() if hasattr(v, "numpy") else v for k, v in b.items()} for b in loader]
    assert len(got) == len(expected) == 1
    np.testing.assert_array_equal(got[0]["images"], expected[0]["images"])
    images = expected[0]["images"]  # (B, N, 16, 16, 3); pad_box(20, 32, 16) = (10, 16, 3, 0)
    assert tuple(pad_box(20, 32, 16)) == (10, 16, 3, 0)
    assert not images[:, :, :3].any() and not images[:, :, 13:].any()
    assert images[:, :, 3:13].reshape(len(images), len(roles), -1).any(axis=-1).all()  # content in every frame
