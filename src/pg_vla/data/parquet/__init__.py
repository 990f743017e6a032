"""Parquet episode datasets: one row per time step, read by row group without tensorflow.

ParquetConfig          what to read (files/globs/directories, column names, cameras, windows, ...)
make_parquet_loader    -> (DataLoader, {dataset name: DatasetStatistics}), the RLDS loader's batch layout
ParquetEpisodeWriter   writes episodes in the schema (`writer`)
convert_rlds_to_parquet  in `convert` (imports tensorflow; not imported here)
"""

from pg_vla.data.parquet.config import ParquetConfig, ParquetDataError
from pg_vla.data.parquet.loader import make_parquet_loader
from pg_vla.data.parquet.writer import ParquetEpisodeWriter

__all__ = ["ParquetConfig", "ParquetDataError", "ParquetEpisodeWriter", "make_parquet_loader"]
