"""Write episodes as Parquet files in the loader's schema (pyarrow only).

    image_1 binary | image_2 binary (nullable) | state list<float32> | action list<float32> |
    is_first bool | is_last bool | is_terminal bool | prompt string | episode_id string

Rows are buffered and written `rows_per_group` at a time (row groups may cut episodes; the loader
reads across them). A new file `<prefix>-NNNNN.parquet` starts at the first episode boundary after
`rows_per_file` rows. Each file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("image_1", pa.binary()),
        ("image_2", pa.binary()),
        ("state", pa.list_(pa.float32())),
        ("action", pa.list_(pa.float32())),
        ("is_first", pa.bool_()),
        ("is_last", pa.bool_()),
        ("is_terminal", pa.bool_()),
        ("prompt", pa.string()),
        ("episode_id", pa.string()),
    ]
)


class ParquetEpisodeWriter:
    """`with ParquetEpisodeWriter(folder) as w: w.add_episode(...)`; `w.files` lists what was written."""

    def __init__(
        self,
        output_dir: str | Path,
        prefix: str = "episodes",
        rows_per_group: int = 1024,
        rows_per_file: int | None = None,
        compression: str = "snappy",
    ):
        if rows_per_group < 1 or (rows_per_file is not None and rows_per_file < 1):
            raise ValueError("rows_per_group and rows_per_file must be >= 1")
        self.output_dir, self.prefix = Path(output_dir), prefix
        self.rows_per_group, self.rows_per_file, self.compression = rows_per_group, rows_per_file, compression
        self.files: list[Path] = []
        self._rows: dict[str, list] = {name: [] for name in SCHEMA.names}
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._file_rows = 0
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def add_episode(
        self,
        image_1: Sequence[bytes],
        state: np.ndarray,
        action: np.ndarray,
        prompt: str | Sequence[str],
        episode_id: str | None = None,
        image_2: Sequence[bytes | None] | None = None,
        terminal: bool = True,
    ) -> None:
        """One episode: T encoded images, state (T, P), action (T, A), one prompt or T prompts."""
        length = len(image_1)
        state, action = np.asarray(state, np.float32), np.asarray(action, np.float32)
        prompts = [prompt] * length if isinstance(prompt, str) else list(prompt)
        if length == 0:
            raise ValueError("an episode needs at least one step")
        if (
            state.shape[0] != length
            or action.shape[0] != length
            or len(prompts) != length
            or (image_2 is not None and len(image_2) != length)
        ):
            raise ValueError(
                f"episode fields disagree on the length: images {length}, state {state.shape}, "
                f"action {action.shape}, prompts {len(prompts)}"
            )
        if self.rows_per_file is not None and self._file_rows >= self.rows_per_file:
            self._close_file()
        rows = self._rows
        rows["image_1"].extend(bytes(b) for b in image_1)
        rows["image_2"].extend(
            [None] * length if image_2 is None else [None if b is None else bytes(b) for b in image_2]
        )
        rows["state"].extend(state.tolist())
        rows["action"].extend(action.tolist())
        rows["is_first"].extend([True] + [False] * (length - 1))
        rows["is_last"].extend([False] * (length - 1) + [True])
        rows["is_terminal"].extend([False] * (length - 1) + [bool(terminal)])
        rows["prompt"].extend(prompts)
        rows["episode_id"].extend([episode_id] * length)
        self._file_rows += length
        while len(rows["is_first"]) >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, count: int) -> None:
        if count == 0:
            return
        if self._writer is None:
            path = self.output_dir / f"{self.prefix}-{len(self.files):05d}.parquet"
            self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            self._writer = pq.ParquetWriter(self._tmp, SCHEMA, compression=self.compression)
            self.files.append(path)
        table = pa.table({name: values[:count] for name, values in self._rows.items()}, schema=SCHEMA)
        self._writer.write_table(table, row_group_size=count)
        for values in self._rows.values():
            del values[:count]

    def _close_file(self) -> None:
        self._flush(len(self._rows["is_first"]))
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.files[-1])
            self._writer, self._tmp = None, None
        self._file_rows = 0

    def close(self) -> list[Path]:
        self._close_file()
        return self.files

    def __enter__(self) -> "ParquetEpisodeWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif self._writer is not None:  # do not leave a half-written file behind
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self.files.pop()
