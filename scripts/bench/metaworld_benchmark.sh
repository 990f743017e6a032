#!/usr/bin/env bash
# Meta-World closed-loop benchmark on CPU: demonstrations -> pi0 (small) training -> evaluation + floors.
#
# Usage: [SUITE=five|mt10] [DEMOS_PER_TASK=N] [EPISODES=N] [EVAL_OVERRIDES="act_steps=1 ..."] \
#        bash scripts/bench/metaworld_benchmark.sh [OUT_DIR] [extra training overrides...]
#   SUITE           five (default: config/{train,eval}/metaworld.yaml) or mt10 (the ten MT10 tasks:
#                   config/{train,eval}/metaworld_mt10.yaml)
#   DEMOS_PER_TASK  scripted demonstrations per task, seeds 0..N-1 (default: the training config's
#                   metaworld.episodes_per_task), plus 5 validation episodes per task (seeds 50000..)
#   EPISODES        evaluation episodes per task, seeds 100000.. (default 50)
#   EVAL_OVERRIDES  overrides of the checkpoint's evaluation only (e.g. act_steps=1 temporal_ensemble_k=0.01)
#   FLOORS          baselines evaluated on the same seeds (default "expert zero random replay"; "" for none)
#   CAMERA          the view rendered for demonstrations and every evaluation (default corner4; e.g.
#                   corner4_workspace, pg_vla.eval.metaworld.rendering.VIEWS)
#   SECONDARY_CAMERA  a second view of every step (e.g. topview; default none), trained as the "secondary"
#                   camera (data.camera_roles=[primary,secondary]) and rendered in every evaluation
# Steps (each a separate process): demonstrations (reused when OUT_DIR/demos.json exists, unless
# REGENERATE_DEMOS=1), training, evaluation of the last checkpoint, the floors, then the report
# (pg_vla.eval.metaworld.benchmark): OUT_DIR/benchmark.json and OUT_DIR/benchmark.md.
set -euo pipefail
OUT=${1:-runs/metaworld_benchmark}
shift || true
SUITE=${SUITE:-five}
case "$SUITE" in
    five) TRAIN_CONFIG=metaworld; EVAL_CONFIG=metaworld ;;
    mt10) TRAIN_CONFIG=metaworld_mt10; EVAL_CONFIG=metaworld_mt10 ;;
    *) echo "SUITE must be five or mt10, got $SUITE" >&2; exit 2 ;;
esac
EPISODES=${EPISODES:-50}
FLOORS=${FLOORS-expert zero random replay}
CAMERA=${CAMERA:-corner4}
SECONDARY_CAMERA=${SECONDARY_CAMERA:-}
DEMO_VIEWS=(--camera "$CAMERA")
TRAIN_VIEWS=()
EVAL_VIEWS=(env.camera="$CAMERA")
if [ -n "$SECONDARY_CAMERA" ]; then
    DEMO_VIEWS+=(--secondary_camera "$SECONDARY_CAMERA")
    TRAIN_VIEWS=("data.camera_roles=[primary,secondary]")
    EVAL_VIEWS+=(env.secondary_camera="$SECONDARY_CAMERA")
fi
read -r -a EVAL_EXTRA <<< "${EVAL_OVERRIDES:-}"
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl}

# the suite's task list and demonstration count, from the training config
read -r TASKS DEFAULT_DEMOS < <(uv run python - "$TRAIN_CONFIG" <<'PY'
import sys
from pathlib import Path
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=str(Path("config/train").resolve()), version_base=None):
    cfg = compose(sys.argv[1])
print(",".join(cfg.metaworld.tasks), cfg.metaworld.episodes_per_task)
PY
)
DEMOS_PER_TASK=${DEMOS_PER_TASK:-$DEFAULT_DEMOS}

stamp() { date +%s; }
if [ -s "$OUT/demos.json" ] && [ -z "${REGENERATE_DEMOS:-}" ]; then
    echo "reusing the demonstrations of $OUT/demos.json (REGENERATE_DEMOS=1 makes new ones)"
else
    uv run scripts/data/make_metaworld_demos.py --output_dir "$OUT/data" --tasks ${TASKS//,/ } \
        --episodes_per_task "$DEMOS_PER_TASK" --val_episodes_per_task 5 --workers 2 "${DEMO_VIEWS[@]}" --overwrite \
        | tail -1 | tee "$OUT/demos.json"
fi
t1=$(stamp)
rm -rf "$OUT/train"
uv run scripts/run.py --config-name="$TRAIN_CONFIG" data.data_path="$OUT/data" log_dir="$OUT/train" "${TRAIN_VIEWS[@]}" "$@"
t2=$(stamp)
uv run scripts/run.py --config-path=../config/eval --config-name="$EVAL_CONFIG" policy=checkpoint \
    checkpoint_path="$OUT/train" n_eval_episode="$EPISODES" "${EVAL_VIEWS[@]}" log_dir="$OUT/eval_checkpoint" "${EVAL_EXTRA[@]}"
for policy in $FLOORS; do
    uv run scripts/run.py --config-path=../config/eval --config-name="$EVAL_CONFIG" policy="$policy" \
        n_eval_episode="$EPISODES" "${EVAL_VIEWS[@]}" n_video=1 log_dir="$OUT/eval_$policy"
done
t3=$(stamp)
uv run python -m pg_vla.eval.metaworld.benchmark "$OUT" --train_seconds "$((t2 - t1))" --eval_seconds "$((t3 - t2))"
