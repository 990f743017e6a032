"""The one rule for flow-noise seeds, shared by the policy server's requests and scripts/infer.py's --seed.

A seed is an integer in [0, 2**63) (a non-negative int64, what `torch.Generator.manual_seed` is given):
a Python int, a numpy integer scalar or a 0-d integer array (what msgpack-numpy delivers for
`np.zeros((), np.int64)`). bool, floats, strings and arrays with dimensions are not seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEED_LIMIT = 2**63  # seeds are non-negative int64 values
SEED_RULE = "an integer in [0, 2**63)"  # for error messages: "<what> must be " + SEED_RULE


def check_seed(value: Any) -> int:
    """A seed value -> int; raises ValueError (naming SEED_RULE) for anything else."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = value[()]  # 0-d integer array -> numpy integer scalar
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) < SEED_LIMIT:
        return int(value)
    raise ValueError(f"a seed must be {SEED_RULE}")
