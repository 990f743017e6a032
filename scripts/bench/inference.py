"""Latency, throughput and peak memory of the pi0 model: KV-cached and uncached action sampling, train step.

The benchmark is the package pg_vla.bench; its usage, modes and options are in src/pg_vla/bench/cli.py
(or `--help`). Exactly one JSON document goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

from pg_vla.bench.cli import main

if __name__ == "__main__":
    main()
