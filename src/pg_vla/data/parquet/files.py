"""Parquet files: discovery, column resolution, the episode index, and reading rows by row group.

Rows are read with pyarrow one row group at a time (or in slices of a row group larger than the
budget), never a whole file. The episode index reads only the `is_first` column (and, with
`skip_non_finite`, the state and action values, to find the episodes holding NaN/inf).

Shapes: n rows of a block, P state dim, A action dim.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pg_vla.data.parquet.config import REQUIRED_COLUMNS, ParquetConfig, ParquetDataError

READ_BUFFER_BYTES = 1 << 20  # pyarrow streams column chunks through a buffer of this size


def resolve_files(paths: tuple[str, ...]) -> list[Path]:
    """Files, globs and directories (all *.parquet below, sorted) -> the files, in order, without repeats."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not matches:
                raise FileNotFoundError(f"no *.parquet file under the directory {path}")
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(entry):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no file matches the pattern {entry!r}")
        else:
            raise FileNotFoundError(f"Parquet path {entry!r} does not exist")
        found.extend(matches)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise ParquetDataError(str(path), "all rows", "(file)", f"not a readable Parquet file: {err}") from err


@dataclass(frozen=True)
class ColumnPlan:
    """Where each logical column lives in one file: (top-level column, field path inside it)."""

    file: str
    locations: dict[str, tuple[str, tuple[str, ...]]]  # logical -> (top-level name, struct field path)
    names: dict[str, str]  # logical -> the configured column name (for messages)

    def has(self, logical: str) -> bool:
        return logical in self.locations

    def top_level(self, logicals: tuple[str, ...]) -> list[str]:
        return list(dict.fromkeys(self.locations[c][0] for c in logicals if c in self.locations))

    def extract(self, table: pa.Table, logical: str) -> pa.Array:
        top, fields = self.locations[logical]
        array = table.column(top).combine_chunks()
        for name in fields:
            array = pc.struct_field(array, name)
        return array


def plan_columns(path: Path, schema: pa.Schema, cfg: ParquetConfig) -> ColumnPlan:
    """Resolve the configured names against a file's schema; a missing required column is an error."""
    locations, names = {}, {}
    wanted = set(REQUIRED_COLUMNS) | {"image_2", "is_last", "episode_id"}
    for logical in sorted(wanted):
        name = cfg.column(logical)
        names[logical] = name
        location = _locate(schema, name)
        if location is None:
            if logical in REQUIRED_COLUMNS:
                mapped = f" (the logical column {logical!r})" if name != logical else ""
                raise ParquetDataError(
                    str(path), "all rows", name, f"required column is missing{mapped}; the file has {schema.names}"
                )
            continue
        locations[logical] = location
    return ColumnPlan(str(path), locations, names)


def _locate(schema: pa.Schema, name: str) -> tuple[str, tuple[str, ...]] | None:
    if name in schema.names:
        return name, ()
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest top-level prefix that is a struct column
        top = ".".join(parts[:cut])
        if top not in schema.names:
            continue
        kind, fields = schema.field(top).type, parts[cut:]
        for part in fields:
            if not pa.types.is_struct(kind) or kind.get_field_index(part) < 0:
                break
            kind = kind.field(part).type
        else:
            return top, tuple(fields)
    return None


# --------------------------------------------------------------------------------------------------
# the episode index


@dataclass(frozen=True)
class FileIndex:
    """Episode boundaries of one file: episode e covers rows starts[e] .. starts[e + 1] - 1."""

    path: str
    num_rows: int
    row_group_starts: tuple[int, ...]  # (G + 1,) first row of each row group, then num_rows
    starts: np.ndarray  # (E + 1,) int64
    non_finite: tuple[int, ...] = ()  # episodes with a NaN/inf state or action (skip_non_finite), left out

    @property
    def num_episodes(self) -> int:
        return len(self.starts) - 1

    def row_group_of(self, row: int) -> int:
        return int(np.searchsorted(self.row_group_starts, row, side="right")) - 1

    def episode_step(self, row: int) -> tuple[int, int]:
        """(episode index in this file, step within it) of a row."""
        episode = int(np.searchsorted(self.starts, row, side="right")) - 1
        return episode, row - int(self.starts[episode])

    def describe(self, episode: int) -> str:
        """'<file>, episode e (rows a..b)', for messages."""
        return f"{self.path}, episode {episode} (rows {int(self.starts[episode])}..{int(self.starts[episode + 1]) - 1})"


def index_file(path: Path, cfg: ParquetConfig) -> tuple[FileIndex, ColumnPlan]:
    """Read `is_first` (and `is_last` when present) by row group; check the episode structure."""
    parquet = open_parquet(path)
    plan = plan_columns(path, parquet.schema_arrow, cfg)
    metadata = parquet.metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    group_starts = (0, *np.cumsum(sizes, dtype=np.int64).tolist())
    flags = ["is_first"] + (["is_last"] if plan.has("is_last") else [])
    firsts, lasts = [], []
    for g in range(metadata.num_row_groups):
        table = parquet.read_row_group(g, columns=plan.top_level(tuple(flags)))
        firsts.append(_bools(plan, table, "is_first", group_starts[g]))
        if plan.has("is_last"):
            lasts.append(_bools(plan, table, "is_last", group_starts[g]))
    num_rows = int(group_starts[-1])
    if num_rows == 0:
        raise ParquetDataError(str(path), "all rows", plan.names["is_first"], "the file has no rows")
    is_first = np.concatenate(firsts)
    if not is_first[0]:
        first_true = np.flatnonzero(is_first)
        upto = int(first_true[0]) - 1 if len(first_true) else num_rows - 1
        raise ParquetDataError(
            str(path),
            0,
            plan.names["is_first"],
            f"rows 0..{upto} come before the first is_first=True row (an episode must start with is_first=True)",
        )
    starts = np.append(np.flatnonzero(is_first), num_rows).astype(np.int64)
    if lasts:
        is_last = np.concatenate(lasts)
        expected = np.zeros(num_rows, bool)
        expected[starts[1:] - 1] = True
        bad = np.flatnonzero(is_last != expected)
        if len(bad):
            row = int(bad[0])
            what = (
                "is_last=True but the next row does not start an episode"
                if is_last[row]
                else "is_last=False on an episode's last row (the next row has is_first=True or the file ends)"
            )
            raise ParquetDataError(str(path), row, plan.names["is_last"], what)
    index = FileIndex(str(path), num_rows, tuple(int(s) for s in group_starts), starts)
    if cfg.skip_non_finite:
        index = replace(index, non_finite=non_finite_episodes(parquet, index, plan, cfg))
    return index, plan


NAMED_SKIPS = 10  # skipped episodes named in warnings and in the statistics JSON


def skipped_episodes(indexes: list[FileIndex]) -> list[str]:
    """Every episode left out for NaN/inf values (`FileIndex.non_finite`), named by file and episode."""
    return [index.describe(e) for index in indexes for e in index.non_finite]


def non_finite_episodes(
    parquet: pq.ParquetFile, index: FileIndex, plan: ColumnPlan, cfg: ParquetConfig
) -> tuple[int, ...]:
    """The episodes of a file holding a NaN/inf state or action value (images are not read)."""
    dims = {"state": cfg.state_dim, "action": cfg.action_dim}
    bad: set[int] = set()
    for block in iter_row_blocks(
        parquet,
        index,
        plan,
        0,
        index.num_rows,
        dims,
        cfg.row_group_budget_bytes,
        with_images=False,
        allow_non_finite=True,
    ):
        rows = np.flatnonzero(~(np.isfinite(block.state).all(axis=1) & np.isfinite(block.action).all(axis=1)))
        bad.update(int(e) for e in np.searchsorted(index.starts, block.start + rows, side="right") - 1)
    return tuple(sorted(bad))


def _bools(plan: ColumnPlan, table: pa.Table, logical: str, offset: int) -> np.ndarray:
    array = plan.extract(table, logical)
    if array.null_count:
        row = offset + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ParquetDataError(plan.file, row, plan.names[logical], "null flag")
    if not pa.types.is_boolean(array.type):
        raise ParquetDataError(plan.file, offset, plan.names[logical], f"expected bool, got {array.type}")
    return array.to_numpy(zero_copy_only=False).astype(bool)


# --------------------------------------------------------------------------------------------------
# reading rows


@dataclass
class RowBlock:
    """Rows start .. start + n - 1 of one file, converted."""

    start: int
    state: np.ndarray  # (n, P) float32
    action: np.ndarray  # (n, A) float32
    prompt: list[str | None]
    images: dict[str, list[bytes | None]]  # logical image column -> n encoded images
    episode_id: list[str | None] | None

    def __len__(self) -> int:
        return len(self.prompt)


def iter_row_blocks(
    parquet: pq.ParquetFile,
    index: FileIndex,
    plan: ColumnPlan,
    start: int,
    stop: int,
    dims: dict[str, int | None],
    budget_bytes: int,
    with_images: bool = True,
    allow_non_finite: bool = False,
) -> Iterator[RowBlock]:
    """Blocks covering rows [start, stop) (whole row groups, cut to the range), read one at a time.

    A row group whose selected columns exceed `budget_bytes` decoded is read in slices. `dims`
    gives the expected state/action lengths; None entries are set from the first row read.
    NaN/inf is an error outside the episodes in `index.non_finite` (whose rows come back as they
    are, for the caller to leave out), anywhere with `allow_non_finite`.
    """
    logicals = ("state", "action", "prompt", "episode_id") + (("image_1", "image_2") if with_images else ())
    columns = plan.top_level(logicals)
    leaf = _leaf_columns(parquet, columns)
    first, last = index.row_group_of(start), index.row_group_of(stop - 1)
    for g in range(first, last + 1):
        group_start, group_rows = index.row_group_starts[g], index.row_group_starts[g + 1] - index.row_group_starts[g]
        size = sum(parquet.metadata.row_group(g).column(j).total_uncompressed_size for j in leaf)
        if size <= budget_bytes:
            pieces = [parquet.read_row_group(g, columns=columns)]
        else:
            rows = max(1, int(group_rows * budget_bytes / size))
            pieces = (
                pa.Table.from_batches([b])
                for b in parquet.iter_batches(batch_size=rows, row_groups=[g], columns=columns, use_threads=False)
            )
        offset = group_start
        for table in pieces:
            lo, hi = max(start, offset), min(stop, offset + table.num_rows)
            if lo < hi:
                yield _convert(plan, table.slice(lo - offset, hi - lo), lo, dims, with_images, index, allow_non_finite)
            offset += table.num_rows
            del table


def _leaf_columns(parquet: pq.ParquetFile, top_level: list[str]) -> list[int]:
    schema = parquet.metadata.schema
    wanted = set(top_level)
    out = []
    for j in range(len(schema)):
        path = schema.column(j).path
        if any(path == name or path.startswith(name + ".") for name in wanted):
            out.append(j)
    return out


def _convert(
    plan: ColumnPlan,
    table: pa.Table,
    start: int,
    dims: dict[str, int | None],
    with_images: bool,
    index: FileIndex,
    allow_non_finite: bool = False,
) -> RowBlock:
    names = ("image_1", "image_2") if with_images else ()
    images = {name: _binary(plan, table, name, start) for name in names if plan.has(name)}
    return RowBlock(
        start=start,
        state=_vectors(plan, table, "state", start, dims, index, allow_non_finite),
        action=_vectors(plan, table, "action", start, dims, index, allow_non_finite),
        prompt=_strings(plan, table, "prompt", start),
        images=images,
        episode_id=_strings(plan, table, "episode_id", start) if plan.has("episode_id") else None,
    )


def _vectors(
    plan: ColumnPlan,
    table: pa.Table,
    logical: str,
    start: int,
    dims: dict[str, int | None],
    index: FileIndex,
    allow_non_finite: bool = False,
) -> np.ndarray:
    """A list<float> column -> (n, D) float32, every row of length dims[logical] and every value finite
    (statistics and samples both read through here, so NaN/inf never reaches either). Rows of the
    episodes in `index.non_finite` (left out by every reader) are returned as they are."""
    name = plan.names[logical]
    array = plan.extract(table, logical)
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ParquetDataError(plan.file, start, name, f"expected a list of floats per row, got {kind}")
    if array.null_count:
        row = start + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ParquetDataError(plan.file, row, name, "null value")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if dims.get(logical) is None and len(lengths):
        dims[logical] = int(lengths[0])
    expected = dims[logical]
    bad = np.flatnonzero(lengths != expected)
    if len(bad):
        row = int(bad[0])
        raise ParquetDataError(
            plan.file, start + row, name, f"has {int(lengths[row])} values, expected {expected} (the {logical} length)"
        )
    values = array.flatten()
    if values.null_count:
        raise ParquetDataError(plan.file, start, name, "null inside the value lists")
    try:
        flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    except (pa.ArrowInvalid, TypeError, ValueError) as err:
        raise ParquetDataError(plan.file, start, name, f"values are not numbers ({values.type}): {err}") from err
    out = flat.reshape(len(lengths), expected)
    finite = np.isfinite(out)
    if not allow_non_finite and not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        episodes = np.searchsorted(index.starts, start + rows, side="right") - 1
        unexpected = rows[~np.isin(episodes, index.non_finite)]
        if len(unexpected):
            row = int(unexpected[0])
            dim = int(np.flatnonzero(~finite[row])[0])
            episode, step = index.episode_step(start + row)
            raise ParquetDataError(
                plan.file,
                start + row,
                name,
                f"non-finite value {out[row, dim]} in dimension {dim} (episode {episode} of the "
                f"file, step {step}; {int((~finite).sum())} such values in rows {start}.."
                f"{start + len(out) - 1}); skip_non_finite=true leaves such episodes out",
            )
    return out


def _binary(plan: ColumnPlan, table: pa.Table, logical: str, start: int) -> list[bytes | None]:
    array = plan.extract(table, logical)
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise ParquetDataError(
            plan.file, start, plan.names[logical], f"expected encoded image bytes (binary), got {array.type}"
        )
    return array.to_pylist()


def _strings(plan: ColumnPlan, table: pa.Table, logical: str, start: int) -> list[str | None]:
    array = plan.extract(table, logical)
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return [None if v is None else v.decode() for v in array.to_pylist()]
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise ParquetDataError(plan.file, start, plan.names[logical], f"expected text, got {array.type}")
    return array.to_pylist()
