#!/usr/bin/env bash
# Sets up everything moments-stream needs in ./.venv (idempotent; safe to re-run).
# torch and torchvision are installed as a pinned pair: other pairs fail to import together
# on the reference machines. Override with MOMENTS_TORCH_SPEC for another platform.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MOMENTS_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.moments-installed
wanted="$TORCH_SPEC|$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$wanted" > "$stamp"
fi
echo "moments-stream installed in $(pwd)/.venv" >&2
