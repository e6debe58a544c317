#!/usr/bin/env bash
# The README's main command: install (idempotent), then classify every video in a folder on
# the embedded default (Lithops localhost + a Redis the project starts itself).
#   bash scripts/run.sh DIR [moments-stream run options...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/run.sh DIR [options]   (see .venv/bin/moments-stream run --help)" >&2
  exit 2
fi
dir=$(cd "$1" && pwd)
shift
bash scripts/install.sh
exec .venv/bin/moments-stream run "$dir" "$@"
