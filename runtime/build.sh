#!/usr/bin/env bash
# Build the Lithops runtime image for a backend, with the MiT model baked in, and deploy it:
#   bash runtime/build.sh BACKEND IMAGE [--build-only] [--gpu] [--no-deploy] [--memory MB] [--timeout S] [-c LITHOPS_CONFIG]
# BACKEND: k8s | code_engine | aws_lambda (as in the Lithops config). IMAGE: the name the backend
# pulls (registry/name:tag; for Lambda, the ECR repository name Lithops creates).
# --build-only: build the base and runtime images locally (no cloud account, no push, no deploy).
# --gpu: the CUDA image (runtime/gpu/Dockerfile: torch with CUDA) instead of the CPU one (no torch).
# Environment: BASE_IMAGE (the Python base, default python:X.Y-slim; runtime/local-base.sh makes one
# without a registry), TORCH_SPEC (pip arguments for torch), MOMENTS_MODEL (v1), MOMENTS_WEIGHTS
# (where the weights come from; default the release), MOMENTS_WEIGHTS_SHA256 (pin the weights'
# checksum), PYTHON (the client interpreter whose Python and Lithops versions the image must match).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
backend=$1 image=$2
shift 2

# Per backend: the Dockerfile, the handler zip Lithops' own build would put in the context (its
# name and entry point as in the backend's build_runtime), and the memory/time limit consumers need
# (a ResNet50 worker holds ~1 GB; Lambda gives 2 vCPUs from 3538 MB and stops a function at 900 s).
case "$backend" in
  k8s)         dockerfile=runtime/kubernetes/Dockerfile;  handler=lithops_k8s.zip;        entry=lithopsentry.py
               memory=2048; timeout=3600 ;;
  code_engine) dockerfile=runtime/code_engine/Dockerfile; handler=lithops_codeengine.zip; entry=lithopsentry.py
               memory=4096; timeout=3600 ;;
  aws_lambda)  dockerfile=runtime/aws_lambda/Dockerfile;  handler=lithops_lambda.zip;     entry=entry_point.py
               memory=3538; timeout=900 ;;
  *) echo "unknown backend '$backend': use k8s, code_engine or aws_lambda" >&2; exit 2 ;;
esac

deploy=1 build_only=0 gpu=0
config=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1; deploy=0 ;;
    --gpu) gpu=1 ;;
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
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (start dockerd, or check DOCKER_HOST)" >&2; exit 2; }
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
lithops_version=$("$python" -c 'import lithops; print(lithops.__version__)')
model=${MOMENTS_MODEL:-v1}
weights=${MOMENTS_WEIGHTS:-}
base_image=${BASE_IMAGE:-python:${python_version}-slim}

if [ "$gpu" = 1 ]; then
  base_dockerfile=runtime/gpu/Dockerfile target=gpu bake_flags=() kind=gpu
else
  base_dockerfile=runtime/Dockerfile target=cpu bake_flags=(--without-weights) kind=cpu
fi
torch_args=()
[ -n "${TORCH_SPEC:-}" ] && torch_args=(--build-arg TORCH_SPEC="$TORCH_SPEC")

# Converted here when this machine has torch (the image build then needs none), for this machine's
# OpenVINO, which the image then pins; else inside the image build (TORCH_SPEC).
rm -rf runtime/prebaked/baked
openvino_args=()
if "$python" -c 'import torch, openvino' >/dev/null 2>&1; then
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/moments-bake.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  echo "baking the $model model from ${weights:-the release} on this machine" >&2
  MOMENTS_MODEL=$model MOMENTS_WEIGHTS=$weights "$python" -m consumer.cli fetch-model --bake "${bake_flags[@]}" \
    --cache-dir "$scratch" >&2
  mv "$scratch/baked" runtime/prebaked/baked
  openvino_args=(--build-arg OPENVINO_VERSION="$("$python" -c 'import openvino; print(openvino.__version__.split("-")[0])')")
fi

source_tag=$(printf '%s' "${weights:-release}" | sha256sum | cut -c1-8)
base="moments-stream-base:py${python_version}-lithops${lithops_version}-${model}-${source_tag}-${kind}"
echo "base image $base from $base_dockerfile on $base_image (Python $python_version, Lithops $lithops_version)" >&2
docker build -f "$base_dockerfile" --target "$target" -t "$base" \
  --build-arg BASE_IMAGE="$base_image" \
  --build-arg LITHOPS_VERSION="$lithops_version" \
  --build-arg MOMENTS_MODEL="$model" \
  --build-arg MOMENTS_WEIGHTS="$weights" \
  --build-arg MOMENTS_WEIGHTS_SHA256="${MOMENTS_WEIGHTS_SHA256:-}" \
  "${torch_args[@]}" "${openvino_args[@]}" \
  .
rm -rf runtime/prebaked/baked

if [ "$build_only" = 1 ]; then
  # The handler zip exactly as Lithops' own build_runtime makes it, without the backend's SDK or a
  # cloud account (importing the backend module would need both).
  trap 'rm -f "$handler"; rm -rf "${scratch:-}"' EXIT
  "$python" - "$backend" "$handler" "$entry" <<'EOF'
import os, sys
import lithops
from lithops.utils import create_handler_zip
backend, handler, entry = sys.argv[1:]
entry_point = os.path.join(os.path.dirname(lithops.__file__), "serverless", "backends", backend, "entry_point.py")
create_handler_zip(handler, entry_point, entry)
EOF
  docker build -f "$dockerfile" -t "$image" --build-arg BASE_IMAGE="$base" .
  echo "built $image for $backend on $base (not pushed)" >&2
  exit 0
fi

lithops_cli=$(dirname "$python")/lithops
# Lithops writes its handler zip into the current directory (the build context) and pushes the image.
"$lithops_cli" runtime build "${config[@]}" -b "$backend" -f "$dockerfile" "$image" --build-arg BASE_IMAGE="$base"

if [ "$deploy" = 1 ]; then
  "$lithops_cli" runtime deploy "${config[@]}" -b "$backend" --memory "$memory" --timeout "$timeout" "$image"
  echo "deployed $image on $backend: set ${backend}.runtime: $image, runtime_memory: $memory," \
       "runtime_timeout: $timeout in the Lithops config" >&2
fi
