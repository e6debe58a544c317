#!/usr/bin/env bash
# Build the Lithops runtime image for a backend, with the MiT weights and categories baked in,
# and deploy it:
#   bash runtime/build.sh BACKEND IMAGE [--no-deploy] [--memory MB] [--timeout S] [-c LITHOPS_CONFIG]
# BACKEND: k8s | code_engine | aws_lambda (as in the Lithops config). IMAGE: the name the backend
# pulls (registry/name:tag; for Lambda, the ECR repository name Lithops creates).
# Environment: MOMENTS_MODEL (v1), MOMENTS_WEIGHTS_SHA256 (pin the weights' checksum),
# PYTHON (the client interpreter whose Python and Lithops versions the image must match).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
backend=$1 image=$2
shift 2

# Per backend: the Dockerfile, and the memory/time limit the consumers need (a ResNet50 worker
# holds ~1 GB; Lambda gives 2 vCPUs from 3538 MB and stops a function at 900 s).
case "$backend" in
  k8s)         dockerfile=runtime/kubernetes/Dockerfile;  memory=2048; timeout=3600 ;;
  code_engine) dockerfile=runtime/code_engine/Dockerfile; memory=4096; timeout=3600 ;;
  aws_lambda)  dockerfile=runtime/aws_lambda/Dockerfile;  memory=3538; timeout=900 ;;
  *) echo "unknown backend '$backend': use k8s, code_engine or aws_lambda" >&2; exit 2 ;;
esac

deploy=1
config=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-deploy) deploy=0 ;;
    --memory) memory=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    -c|--config) config=(-c "$2"); shift ;;
    *) echo "unknown option '$1'" >&2; usage ;;
  esac
  shift
done

python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || { echo "no client interpreter at $python: run scripts/install.sh or set PYTHON" >&2; exit 2; }
command -v docker >/dev/null || { echo "docker is needed to build runtime images" >&2; exit 2; }
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
lithops_version=$("$python" -c 'import lithops; print(lithops.__version__)')
lithops_cli=$(dirname "$python")/lithops
base="moments-stream-base:py${python_version}-lithops${lithops_version}-${MOMENTS_MODEL:-v1}"

echo "base image $base (Python $python_version, Lithops $lithops_version, weights baked)" >&2
docker build -f runtime/Dockerfile -t "$base" \
  --build-arg PYTHON_VERSION="$python_version" \
  --build-arg LITHOPS_VERSION="$lithops_version" \
  --build-arg MOMENTS_MODEL="${MOMENTS_MODEL:-v1}" \
  --build-arg MOMENTS_WEIGHTS_SHA256="${MOMENTS_WEIGHTS_SHA256:-}" \
  .

# Lithops writes its handler zip into the current directory (the build context) and pushes the image.
"$lithops_cli" runtime build "${config[@]}" -b "$backend" -f "$dockerfile" "$image" --build-arg BASE_IMAGE="$base"

if [ "$deploy" = 1 ]; then
  "$lithops_cli" runtime deploy "${config[@]}" -b "$backend" --memory "$memory" --timeout "$timeout" "$image"
  echo "deployed $image on $backend: set ${backend}.runtime: $image, runtime_memory: $memory," \
       "runtime_timeout: $timeout in the Lithops config" >&2
fi
