"""Test helper: flatten a TFDS features tree for comparisons (independent of the code under test)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


def feature_leaves(feature, prefix: str = "", with_description: bool = False) -> dict[str, tuple]:
    """path -> (feature class, shape, dtype, image encoding[, description]) of every leaf."""
    if isinstance(feature, tfds.features.FeaturesDict):
        out = {}
        for key, sub in feature.items():
            out.update(feature_leaves(sub, f"{prefix}{key}/", with_description))
        return out
    if isinstance(feature, tfds.features.Dataset):
        return feature_leaves(feature.feature, prefix, with_description)
    leaf = (
        type(feature).__name__,
        tuple(feature.shape),
        np.dtype(feature.np_dtype).name,
        getattr(feature, "_encoding_format", None),
    )
    return {prefix.rstrip("/"): leaf + ((feature.doc.desc,) if with_description else ())}
