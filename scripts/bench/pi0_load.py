"""Peak memory and time of loading a full-size pi0 folder in bf16 (PiZero.from_pretrained); one JSON line.

    uv run scripts/bench/pi0_load.py --folder /tmp/pi0_full --build     # once
    uv run scripts/bench/pi0_load.py --folder /tmp/pi0_full [--runs 3]

--build writes a random full-size pi0 folder there (transformers' PI0 layout, bf16: PaliGemma-3B
with pi0's 257,152-row vocabulary, the 0.3B action expert, 32-dim state/action, chunk 50; about 7 GB),
tensor by tensor, without building the model in memory. Each measurement runs in a fresh process and
reports its peak RSS (ru_maxrss) after every weight has been read once (the tensors are memory-mapped
from the file until then), beside the bytes of the tensors the model holds and of the file. Run --build
and the measurement as two commands: a child process inherits the peak RSS of the process it was forked from.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from pg_vla.model.pi0_format import export_tensors, transformers_config
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.model.vla.pizero import PiZero

    config = PiZeroConfig.preset(
        "pi0", vlm={"vocab_size": 257152}, proprio_dim=32, action_dim=32, horizon_steps=50, max_text_tokens=48
    )
    with torch.device("meta"):
        model = PiZero(config)
    generator = torch.Generator().manual_seed(0)
    state = {
        name: (torch.randn(p.shape, generator=generator) * 0.02).to(torch.bfloat16)
        for name, p in model.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    transformers_config(config).save_pretrained(str(folder))
    save_file(export_tensors(state, config), str(folder / "model.safetensors"), metadata={"format": "pt"})


def measure(folder: Path) -> dict:
    import torch

    from pg_vla.model.vla.pizero import PiZero

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tic = time.perf_counter()
    model = PiZero.from_pretrained(folder, dtype=torch.bfloat16)
    seconds = time.perf_counter() - tic
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The tensors are memory-mapped from the file until read: read every weight once, as a first forward would.
    tic = time.perf_counter()
    checksum = sum(float(p.sum()) for p in model.parameters())
    touch_seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "load_s": seconds,
        "read_all_s": touch_seconds,
        "peak_rss_bytes": peak,
        "rss_after_load_bytes": after_load,
        "rss_before_load_bytes": base,
        "model_weight_bytes": weights,
        "finite": bool(checksum == checksum),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.child:
        print(json.dumps(measure(folder)))
        return
    if args.build:
        build(folder)
        print(json.dumps({"built": str(folder)}))
        return
    runs = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, __file__, "--folder", str(folder), "--child"], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    weights = runs[0]["model_weight_bytes"]
    file_bytes = (folder / "model.safetensors").stat().st_size
    peak = statistics.median(r["peak_rss_bytes"] for r in runs)
    print(
        json.dumps(
            {
                "folder": str(folder),
                "runs": len(runs),
                "load_s_median": statistics.median(r["load_s"] for r in runs),
                "read_all_s_median": statistics.median(r["read_all_s"] for r in runs),
                "rss_after_load_gib_median": statistics.median(r["rss_after_load_bytes"] for r in runs) / 2**30,
                "peak_rss_gib_median": peak / 2**30,
                "model_weight_gib": weights / 2**30,
                "file_gib": file_bytes / 2**30,
                "peak_rss_over_weights": peak / weights,
                "rss_before_load_gib": runs[0]["rss_before_load_bytes"] / 2**30,
            }
        )
    )


if __name__ == "__main__":
    main()
