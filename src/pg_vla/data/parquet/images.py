"""Image decoding and resizing without tensorflow, pixel-identical to the RLDS path.

The RLDS pipeline (`pg_vla.data.rlds.frames.decode_and_resize`) decodes with
`tf.io.decode_image(channels=3)` and, when the frame is not `size x size`, resizes with
`tf.image.resize(float32, method="bilinear", antialias=True)`, rounds half to even, clips to
0..255 and casts to uint8; with `image_resize="pad"` it resizes to the content box of
`pg_vla.data.image_resize.pad_box` and pads with black. All of it is reproduced here exactly:

- JPEG: TensorFlow's decoder (libjpeg-turbo) uses the fast integer inverse DCT, then "fancy"
  (triangle-filter) chroma upsampling and the integer YCbCr -> RGB conversion. Pillow's own decode
  uses the accurate DCT, so it can differ by a level or two. Here Pillow's libjpeg-turbo runs in its
  draft configuration (fast integer DCT, plain sample replication, YCbCr output), the chroma planes
  are taken back at their stored resolution and upsampled and converted with libjpeg's integer
  formulas (`_fancy_upsample`, `_ycc_to_rgb`). JPEGs outside that scheme (CMYK, Adobe RGB, luma not
  at full resolution) fall back to Pillow's ordinary RGB decode, which may differ by a few levels.
- other formats (PNG, ...): lossless, Pillow's decode converted to RGB.
- resizing re-implements TensorFlow's antialiased bilinear resize (the `ScaleAndTranslate`
  kernel with a triangle filter) in float32 numpy with the same weights and the same order of
  additions: first along rows, then along columns, each output a running sum over its input span.

Shapes: H, W input height and width, S output side; h, w a chroma plane's stored size.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pg_vla.data.image_resize import image_resize_mode, pad_box


class ImageDecodeError(ValueError):
    """Encoded bytes that are not a decodable image."""


def decode_rgb(encoded: bytes) -> np.ndarray:
    """JPEG/PNG/... bytes -> (H, W, 3) uint8, as `tf.io.decode_image(channels=3)` decodes them."""
    try:
        image = Image.open(io.BytesIO(encoded))
        if image.format == "JPEG":
            pixels = _decode_jpeg(image)
            if pixels is not None:
                return pixels
            image = Image.open(io.BytesIO(encoded))  # outside the emulated scheme: ordinary decode
        with image:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        head = bytes(encoded[:8])
        raise ImageDecodeError(f"cannot decode image ({len(encoded)} bytes, starting {head!r}): {err}") from err


_FAST_DCT_NO_FANCY = (1, 1)  # Pillow decoder config (scale, draft): fast integer DCT, sample replication


def _decode_jpeg(image: Image.Image) -> np.ndarray | None:
    """(H, W, 3) uint8 decoded like TensorFlow, or None for JPEG layouts handled by the fallback."""
    layers = getattr(image, "layer", None)  # [(component id, h factor, v factor, table), ...]
    if image.mode == "L" and layers and len(layers) == 1:
        image.decoderconfig = _FAST_DCT_NO_FANCY
        image.load()
        gray = np.asarray(image, dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB" or not layers or len(layers) != 3 or image.info.get("adobe_transform") == 0:
        return None
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    if (layers[0][1], layers[0][2]) != (h_max, v_max):
        return None
    factors = [(h_max // layer[1], v_max // layer[2]) for layer in layers[1:]]
    if any(h_max % layer[1] or v_max % layer[2] for layer in layers[1:]):
        return None
    image.draft("YCbCr", None)
    image.decoderconfig = _FAST_DCT_NO_FANCY
    image.load()
    ycc = np.asarray(image, dtype=np.uint8)  # (H, W, 3), chroma replicated from its stored planes
    height, width = ycc.shape[:2]
    luma = ycc[:, :, 0].astype(np.int32)
    chroma = []
    for channel, (fh, fv) in zip((1, 2), factors):
        plane = ycc[::fv, ::fh, channel].astype(np.int32)  # (h, w): the stored samples
        chroma.append(_fancy_upsample(plane, fh, fv)[:height, :width])
    return _ycc_to_rgb(luma, chroma[0], chroma[1])


def _fancy_upsample(plane: np.ndarray, fh: int, fv: int) -> np.ndarray:
    """libjpeg's chroma upsampling of a stored (h, w) int32 plane by (fh, fv) -> (fv h, fh w).

    2x2 (when w > 2), 2x1 (when w > 2) and 1x2 use the triangle filter (3/4 nearer sample, 1/4
    farther, edges replicated, alternating rounding bias); other factors replicate samples.
    """
    h, w = plane.shape
    if (fh, fv) == (1, 1):
        return plane
    if (fh, fv) == (2, 2) and w > 2:
        above = np.concatenate([plane[:1], plane[:-1]])  # (h, w) the row above, the first repeated
        below = np.concatenate([plane[1:], plane[-1:]])
        out = np.empty((2 * h, 2 * w), np.int32)
        for v, neighbour in ((0, above), (1, below)):
            colsum = 3 * plane + neighbour  # (h, w)
            left = np.concatenate([colsum[:, :1], colsum[:, :-1]], axis=1)
            right = np.concatenate([colsum[:, 1:], colsum[:, -1:]], axis=1)
            even = (3 * colsum + left + 8) >> 4
            odd = (3 * colsum + right + 7) >> 4
            even[:, 0] = (4 * colsum[:, 0] + 8) >> 4
            odd[:, -1] = (4 * colsum[:, -1] + 7) >> 4
            out[v::2, 0::2], out[v::2, 1::2] = even, odd
        return out
    if (fh, fv) == (2, 1) and w > 2:
        left = np.concatenate([plane[:, :1], plane[:, :-1]], axis=1)
        right = np.concatenate([plane[:, 1:], plane[:, -1:]], axis=1)
        out = np.empty((h, 2 * w), np.int32)
        out[:, 0::2] = (3 * plane + left + 1) >> 2
        out[:, 1::2] = (3 * plane + right + 2) >> 2
        out[:, 0], out[:, -1] = plane[:, 0], plane[:, -1]
        return out
    if (fh, fv) == (1, 2):
        above = np.concatenate([plane[:1], plane[:-1]])
        below = np.concatenate([plane[1:], plane[-1:]])
        out = np.empty((2 * h, w), np.int32)
        out[0::2] = (3 * plane + above + 1) >> 2
        out[1::2] = (3 * plane + below + 2) >> 2
        return out
    return np.repeat(np.repeat(plane, fv, axis=0), fh, axis=1)


def _fix(x: float) -> int:
    return int(x * (1 << 16) + 0.5)


def _ycc_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """libjpeg's integer YCbCr -> RGB (16-bit fixed point), int32 (H, W) planes -> (H, W, 3) uint8."""
    half = 1 << 15
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.40200) * cr + half) >> 16)
    g = y + ((-_fix(0.34414) * cb + half - _fix(0.71414) * cr) >> 16)
    b = y + ((_fix(1.77200) * cb + half) >> 16)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _spans(input_size: int, output_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangle-filter spans of TensorFlow's antialiased resize along one axis.

    Returns (starts (S,) int64, weights (S, K) float32): output pixel x is
    sum_k weights[x, k] * input[starts[x] + k]; entries past a span are zero.
    """
    f32 = np.float32
    scale = f32(f32(output_size) / f32(input_size))
    inv_scale = f32(1.0 / float(scale))
    kernel_scale = max(inv_scale, f32(1.0))  # widen the filter when shrinking (antialiasing)
    inv_kernel_scale = f32(f32(1.0) / kernel_scale)
    radius = f32(1.0)
    span_size = min(2 * int(np.ceil(radius * kernel_scale)) + 1, input_size)
    starts = np.zeros(output_size, np.int64)
    weights = np.zeros((output_size, span_size), np.float32)
    for x in range(output_size):
        sample = f32(f32(x) + f32(0.5)) * inv_scale
        if sample < 0 or sample > input_size:
            continue
        start = int(np.ceil(sample - radius * kernel_scale - f32(0.5)))
        end = int(np.floor(sample + radius * kernel_scale - f32(0.5)))
        start = min(max(start, 0), input_size - 1)
        end = min(max(end, 0), input_size - 1) + 1
        total = f32(0.0)
        values = []
        for source in range(start, end):
            position = abs(f32(f32(source) + f32(0.5) - sample) * inv_kernel_scale)
            weight = f32(1.0) - position if position < 1.0 else f32(0.0)
            total = f32(total + weight)
            values.append(weight)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            inverse = f32(f32(1.0) / total)
            weights[x, : len(values)] = [f32(v * inverse) for v in values]
        starts[x] = start
    return starts, weights


def _gather(image: np.ndarray, axis: int, output_size: int) -> np.ndarray:
    """Resample float32 `image` along `axis` (0 rows, 1 columns): running sums over each span."""
    starts, weights = _spans(image.shape[axis], output_size)
    last = image.shape[axis] - 1
    shape = list(image.shape)
    shape[axis] = output_size
    out = np.zeros(shape, np.float32)
    for k in range(weights.shape[1]):
        # Past the end of a span the weight is 0, and adding 0 * finite leaves the sum unchanged.
        index = np.minimum(starts + k, last)
        taken = np.take(image, index, axis=axis)
        w = weights[:, k][:, None, None] if axis == 0 else weights[:, k][None, :, None]
        out += w * taken
    return out


def resize_like_tensorflow(image: np.ndarray, size: int, width: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, width or size, 3) uint8, as `frames._resize` computes it."""
    x = image.astype(np.float32)
    x = _gather(x, 0, size)  # (S, W, 3): rows first, as TensorFlow's kernel does
    x = _gather(x, 1, size if width is None else width)  # (S, width or S, 3)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def resize_with_pad_like_tensorflow(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8: the content resized into `pad_box`, black around it."""
    box = pad_box(image.shape[0], image.shape[1], size)
    out = np.zeros((size, size, 3), np.uint8)
    content = resize_like_tensorflow(image, box.height, box.width)  # (h, w, 3)
    out[box.top : box.top + box.height, box.left : box.left + box.width] = content
    return out


def decode_and_resize(encoded: bytes | None, size: int, image_resize: str = "stretch") -> tuple[np.ndarray, bool]:
    """Encoded image (None or b"": absent camera) -> ((S, S, 3) uint8, present); `image_resize` stretch or pad."""
    resizers = {"stretch": resize_like_tensorflow, "pad": resize_with_pad_like_tensorflow}
    resize = resizers[image_resize_mode(image_resize)]
    if not encoded:
        return np.zeros((size, size, 3), np.uint8), False
    image = decode_rgb(encoded)
    if image.shape[0] != size or image.shape[1] != size:
        image = resize(image, size)
    return image, True
