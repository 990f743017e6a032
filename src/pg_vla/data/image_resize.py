"""How a camera frame becomes the model's square S x S input (`data.image_resize`), with no dependencies.

    stretch  resize to S x S, the aspect ratio not kept (a 256x320 frame is squeezed horizontally)
    pad      resize so the longer side is S, keeping the aspect ratio, then pad the shorter side
             symmetrically with black (0 in uint8, -1 after scaling to [-1, 1]); pi0's convention
             (openpi's `resize_with_pad`)

Padding geometry for an H x W frame, in integers: the longer side becomes S, the shorter
floor(short * S / long) (at least 1); the padding before the content is floor(gap / 2), the rest
goes after it. openpi computes the same sizes with float division, which can lose one pixel on the
longer side for some shapes (for 480x640, 256x320 and 180x320 frames both give the same).

The training loaders (`pg_vla.data.rlds.frames`, `pg_vla.data.parquet.images`) and inference
(`pg_vla.model.paligemma.processing.VLAProcessor`) all place the content with `pad_box`; the tf
pipeline evaluates the same integer formula with tf ops on dynamic shapes.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

ImageResize = Literal["stretch", "pad"]
IMAGE_RESIZES = ("stretch", "pad")


def image_resize_mode(mode: str) -> str:
    """`mode` if it is a known `data.image_resize` value, else a ValueError naming the accepted ones."""
    if mode not in IMAGE_RESIZES:
        raise ValueError(f"unknown image_resize {mode!r}; accepted: {', '.join(IMAGE_RESIZES)}")
    return mode


class PadBox(NamedTuple):
    """Where the resized content sits in the S x S frame: rows top..top+height, columns left..left+width."""

    height: int
    width: int
    top: int
    left: int


def pad_box(height: int, width: int, size: int) -> PadBox:
    """The content box of an H x W frame resized with padding into S x S (see the module docstring)."""
    if min(height, width, size) < 1:
        raise ValueError(f"image and target sizes must be positive, got {height}x{width} -> {size}")
    if height >= width:
        new_height, new_width = size, max(1, width * size // height)
    else:
        new_height, new_width = max(1, height * size // width), size
    return PadBox(new_height, new_width, (size - new_height) // 2, (size - new_width) // 2)
