#!/usr/bin/env bash
# Meta-World closed-loop benchmark on CPU: demonstrations -> pi0 (small) training -> evaluation + baselines.
#
# Usage: bash scripts/bench/metaworld_benchmark.sh [OUT_DIR] [extra training overrides...]
#   OUT_DIR defaults to runs/metaworld_benchmark. Steps (each a separate process):
#   1. 50 scripted demonstrations per task (seeds 0..49) + 5 validation episodes (seeds 50000..)
#   2. training with config/train/metaworld.yaml (small random PaliGemma, 112x112 images, horizon 4)
#   3. evaluation of the last checkpoint: 50 episodes per task, seeds 100000..100049
#   4. the same seeds with the baselines: expert (ceiling), zero, random and replay (blind floor)
# Results: OUT_DIR/eval_<policy>/summary.json (per_task, mean), episodes.jsonl, success.png, videos/.
set -euo pipefail
OUT=${1:-runs/metaworld_benchmark}
shift || true
TASKS="[reach-v3,push-v3,button-press-topdown-v3,window-open-v3,plate-slide-v3]"
EPISODES=${EPISODES:-50}
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl}

stamp() { date +%s; }
t0=$(stamp)
if [ -s "$OUT/demos.json" ] && [ -z "${REGENERATE_DEMOS:-}" ]; then
    echo "reusing the demonstrations of $OUT/demos.json (REGENERATE_DEMOS=1 makes new ones)"
else
    uv run scripts/data/make_metaworld_demos.py --output_dir "$OUT/data" --episodes_per_task 50 \
        --val_episodes_per_task 5 --workers 2 --overwrite | tail -1 | tee "$OUT/demos.json"
fi
t1=$(stamp)
rm -rf "$OUT/train"
uv run scripts/run.py --config-name=metaworld data.data_path="$OUT/data" log_dir="$OUT/train" "$@"
t2=$(stamp)
uv run scripts/run.py --config-path=../config/eval --config-name=metaworld policy=checkpoint \
    checkpoint_path="$OUT/train" env.tasks="$TASKS" n_eval_episode="$EPISODES" log_dir="$OUT/eval_checkpoint"
t3=$(stamp)
for policy in expert zero random replay; do
    uv run scripts/run.py --config-path=../config/eval --config-name=metaworld policy=$policy \
        env.tasks="$TASKS" n_eval_episode="$EPISODES" n_video=1 log_dir="$OUT/eval_$policy"
done
t4=$(stamp)
python3 - "$OUT" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" "$((t4 - t3))" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {p.name[5:]: json.loads((p / "summary.json").read_text()) for p in sorted(out.glob("eval_*"))}
seconds = dict(zip(["demos", "train", "eval_checkpoint", "eval_baselines"], map(int, sys.argv[2:])))
seconds["demos"] = json.loads((out / "demos.json").read_text())["seconds"]  # the generator's own timing
result = {"seconds": seconds,
          "mean": {k: v["mean"] for k, v in rows.items()}, "per_task": {k: v["per_task"] for k, v in rows.items()}}
(out / "benchmark.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))
PY
