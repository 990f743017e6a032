"""The single entry point for training and evaluation runs, configured with Hydra.

Usage:
    uv run scripts/run.py --config-name=quickstart                       # CPU, nothing to download
    uv run scripts/run.py --config-name=bridge data.data_path=DIR pretrained_model_path=PALIGEMMA_DIR log_dir=DIR
    uv run torchrun --nproc_per_node=8 scripts/run.py --config-name=bridge data.mix=oxe_simple
    uv run scripts/run.py --config-name=bridge --cfg job                 # print the composed config only

The config's `_target_` names the function that runs the job; it receives the whole config.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import os

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../config/train", config_name="quickstart", version_base=None)
def main(cfg: DictConfig) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(OmegaConf.to_yaml(cfg, resolve=False), flush=True)
    result = get_method(cfg._target_)(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {result}", flush=True)


if __name__ == "__main__":
    main()
