"""Write scripted Meta-World demonstrations as an RLDS dataset (<output_dir>/metaworld/1.0.0).

Usage:
    uv run scripts/data/make_metaworld_demos.py --output_dir DIR
        [--tasks reach-v3 push-v3 button-press-topdown-v3 window-open-v3 plate-slide-v3]
        [--episodes_per_task 50] [--val_episodes_per_task 5] [--workers 2] [--first_seed 0] [--max_steps 200]
        [--image_size 224] [--num_shards 4] [--overwrite]

Episode i of a task starts from seed first_seed + i in split "train" and from seed 50000 + i in
split "val" (evaluation uses seeds from 100000 on). Each episode runs Meta-World's scripted expert,
rendered by spawned worker processes (MuJoCo's EGL renderer cannot share a process with tensorflow,
which writes the dataset here); an episode ends at the first successful step and only successful
episodes are written. The last line printed is a JSON summary (path, episodes, steps, failures,
seconds). Train on it with `data.mix=metaworld data.data_path=DIR` (see
config/train/metaworld.yaml). Layout: `pg_vla.eval.metaworld.demos`.
"""

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

from pg_vla.eval.metaworld.demos import main

if __name__ == "__main__":
    main()
