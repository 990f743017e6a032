"""Import order guard between tensorflow and bitsandbytes.

Both load LLVM; when tensorflow is imported first, importing bitsandbytes afterwards aborts the whole
process ("LLVM ERROR: inconsistency in registered CommandLine options"), while the other order works.
pg-vla keeps tensorflow out of training processes (the RLDS pipeline runs in spawned workers), and
every use of bitsandbytes in the project goes through `import_bitsandbytes`, which turns the abort
into an error that says what happened.
"""

from __future__ import annotations

import sys
from types import ModuleType


class ImportOrderError(RuntimeError):
    pass


def import_bitsandbytes() -> ModuleType:
    if "bitsandbytes" not in sys.modules and "tensorflow" in sys.modules:
        raise ImportOrderError(
            "tensorflow is already imported in this process, and importing bitsandbytes after it aborts the "
            "process. Import bitsandbytes (or pg_vla's 8-bit / 4-bit features) before tensorflow, or keep "
            "tensorflow in a separate process (pg_vla.data.dataloader does this for the RLDS pipeline)."
        )
    import bitsandbytes

    return bitsandbytes
