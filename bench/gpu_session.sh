#!/usr/bin/env bash
# The GPU checks of issue 19 in one command on a lent device machine (the `device` tool:
# Python 3.12 with the image's own torch, timm, pluggy, pyarrow, ...; no network there).
#
# Here, once per session (network to the package registry; the wheels are not committed):
#     bash bench/gpu_session.sh --wheels
#   builds reid-core and every plugin as wheels and downloads what the device image lacks
#   (open_clip_torch and its ftfy / wcwidth) into .whl/, which .git/info/exclude ignores.
#   Run it again after changing the code: there, the installed wheels are what `import
#   core` finds (the scripts and pipelines come from the working tree).
# There, as one call (device tool: run, carry [".whl"], timeout_s 600):
#     bash bench/gpu_session.sh [extra gpu_check arguments]
#   installs the wheels into /tmp/site (nothing of the image is replaced), runs
#   bench/gpu_check.py (its own 8-minute budget: --budget-s), writes $OUT/gpu_check.txt and
#   $OUT/gpu_check.json, then, with the time left, the eager/inductor comparison of the
#   ResNet-50 twins on CUDA ($OUT/compile_vs_eager.txt).
# GPU_SESSION_DEADLINE_S (default 540): seconds after which nothing new is started.
set -euo pipefail
cd "$(dirname "$0")/.."

OPEN_CLIP="open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5"  # the versions the tests run with

if [[ "${1:-}" == "--wheels" ]]; then
    mkdir -p .whl .git/info
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -f .whl/*.whl
    python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl . plugins/*/
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl $OPEN_CLIP
    ls -l .whl
    exit 0
fi

start=$(date +%s)
deadline=${GPU_SESSION_DEADLINE_S:-540}
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
if ! ls .whl/*.whl > /dev/null 2>&1; then
    echo "no wheels in .whl/: run 'bash bench/gpu_session.sh --wheels' here first and carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$OUT/environment.txt"
import importlib.metadata as md, platform, torch
print(platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print({n: md.version(n) for n in ("reid-core", "timm", "open_clip_torch", "pluggy", "numpy")})
print("reid packages:", sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("reid")))
PY

set +e
python3 bench/gpu_check.py --json "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.txt"
check=${PIPESTATUS[0]}
left=$(( deadline - ($(date +%s) - start) ))
if (( left > 90 )); then
    timeout "$left" python3 bench/compile_vs_eager.py --device cuda --twins bot_synthetic agw_synthetic \
        2>&1 | grep -v Warning | tee "$OUT/compile_vs_eager.txt"
else
    echo "compile_vs_eager skipped: ${left} s left of ${deadline} s" | tee "$OUT/compile_vs_eager.txt"
fi
exit "$check"
