#!/usr/bin/env bash
# Build the SimplerEnv simulator environment the Simpler client runs in (scripts/simpler_client.py).
#
#   scripts/setup_simpler.sh <SimplerEnv checkout> <ManiSkill2_real2sim checkout> [venv path]
#
# SimplerEnv pins numpy<2 and gymnasium<1, which cannot share the project's environment (numpy 2), so the
# simulator gets its own Python 3.11 venv (default: ~/.cache/pg_vla/simpler-venv) holding SAPIEN 2.2.2, the
# two checkouts (editable, without their dependency lists, which pull in tensorflow), openpi-client and
# the project's torch-free client code (the repository's src/ on the path through a .pth file).
#
# Without an NVIDIA GPU (no nvidia-smi) it also sets up CPU rendering: Mesa's lavapipe from Debian
# bookworm-backports (Mesa 25: Debian 12's own Mesa 22.3 lacks descriptorBindingPartiallyBound, which
# SAPIEN needs) and a small Vulkan layer (scripts/simpler/) that drops VK_KHR_external_semaphore_fd, which
# SAPIEN always requests and lavapipe does not offer. apt-get needs root (or sudo). The rendering
# variables are written to <venv>/pg_vla_simpler.env; the client loads that file by itself.
# uv runs with --no-config: the project's own uv settings (numpy>=2 override) must not reach this venv.
# PG_VLA_SIMPLER_CPU=1 forces CPU rendering, PG_VLA_SIMPLER_CPU=0 skips it.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 <SimplerEnv checkout> <ManiSkill2_real2sim checkout> [venv path]" >&2
    exit 2
fi
SIMPLER=$(realpath "$1")
MS2=$(realpath "$2")
VENV=$(realpath -m "${3:-$HOME/.cache/pg_vla/simpler-venv}")
REPO=$(realpath "$(dirname "$0")/..")

[[ -f "$SIMPLER/simpler_env/__init__.py" ]] || { echo "error: $SIMPLER is not a SimplerEnv checkout (no simpler_env/__init__.py)" >&2; exit 1; }
[[ -d "$MS2/mani_skill2_real2sim" ]] || { echo "error: $MS2 is not a ManiSkill2_real2sim checkout (no mani_skill2_real2sim/)" >&2; exit 1; }
command -v uv >/dev/null || { echo "error: uv is not on PATH (python3 -m pip install --user 'uv>=0.9')" >&2; exit 1; }

echo "== simulator venv: $VENV"
uv venv --no-config --python 3.11 --allow-existing "$VENV"
PY="$VENV/bin/python"
# SimplerEnv's and ManiSkill2_real2sim's runtime imports, with their pins (setuptools<70: SAPIEN imports pkg_resources).
uv pip install --no-config --python "$PY" "sapien==2.2.2" "numpy<2" "setuptools<70" "gymnasium>=0.28.1,<1.0" \
    scipy transforms3d opencv-python mediapy "imageio[ffmpeg]" trimesh rtree h5py pyyaml tqdm tabulate ruckig \
    openpi-client omegaconf
uv pip install --no-config --python "$PY" --no-deps -e "$MS2" -e "$SIMPLER"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$REPO/src" > "$SITE/pg_vla_simpler_client.pth"  # pg_vla.eval.simpler imports neither torch nor tensorflow

ENV_FILE="$VENV/pg_vla_simpler.env"
: > "$ENV_FILE"
CPU=${PG_VLA_SIMPLER_CPU:-}
if [[ -z "$CPU" ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then CPU=0; else CPU=1; fi
fi
if [[ "$CPU" == 1 ]]; then
    echo "== no GPU: CPU rendering (lavapipe + the semaphore layer)"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    if ! dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q bpo12; then
        . /etc/os-release
        [[ "${VERSION_CODENAME:-}" == bookworm ]] || { echo "error: CPU rendering is set up for Debian 12 (bookworm); install Mesa >= 25 lavapipe by hand on $PRETTY_NAME" >&2; exit 1; }
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libvulkan1 libvulkan-dev gcc
    ICD=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -n 1)
    LAYER_DIR="$VENV/vk_layer"
    mkdir -p "$LAYER_DIR"
    gcc -shared -fPIC -O2 -Wall -o "$LAYER_DIR/libvk_layer_drop_external_semaphore.so" \
        "$REPO/scripts/simpler/vk_layer_drop_external_semaphore.c"
    cp "$REPO/scripts/simpler/vk_layer_drop_external_semaphore.json" "$LAYER_DIR/"
    cat > "$ENV_FILE" <<VARS
VK_ICD_FILENAMES=$ICD
VK_LAYER_PATH=$LAYER_DIR
VK_INSTANCE_LAYERS=VK_LAYER_PGVLA_drop_external_semaphore
SAPIEN_DISABLE_RAY_TRACING=1
VARS
fi

echo "== check: make widowx_carrot_on_plate"
set -a; . "$ENV_FILE"; set +a
# SAPIEN only logs a mesh file it cannot find ("[SAPIEN] [error] File not found: ...") and builds the scene
# without it (here: no table), so the check also fails on that line, not only on the exit status.
CHECK_LOG="$VENV/pg_vla_simpler_check.log"
"$PY" -c "import pg_vla.eval.simpler, simpler_env; env = simpler_env.make('widowx_carrot_on_plate'); env.reset(); print('SimplerEnv starts')" \
    2>&1 | tee "$CHECK_LOG" \
    || { echo "error: the simulator does not start (see above); missing scene meshes mean an incomplete checkout (git lfs / a full git clone)" >&2; exit 1; }
if grep -q "File not found" "$CHECK_LOG"; then
    echo "error: SimplerEnv lacks mesh files (the 'File not found' lines above); an incomplete checkout (git lfs / a full git clone)" >&2
    exit 1
fi
echo "SimplerEnv works"
echo "done: $PY scripts/simpler_client.py --config config/eval/bridge.yaml (rendering variables in $ENV_FILE)"
