#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 for machines that cannot pull from a registry
# (no Docker Hub): debootstrap from Debian's package mirror, then `docker import`.
#   bash runtime/local-base.sh NAME [--force]
# Then build on it: BASE_IMAGE=NAME bash runtime/build.sh BACKEND IMAGE --build-only
#
# The host's extra CA certificates (/usr/local/share/ca-certificates/*.crt) go into the image's
# trust store: where package downloads pass through a TLS-inspecting proxy, pip inside a build
# fails with CERTIFICATE_VERIFY_FAILED without them.
# The image is labelled with a digest of its inputs (this script, the suite, the mirror, the CA
# certificates); an existing image with the same digest is kept, so CI makes it once.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm).
# Needs root (debootstrap), debootstrap and docker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

[ $# -ge 1 ] || { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
name=$1 force=0
[ "${2:-}" = "--force" ] && force=1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-bookworm}
# python-is-python3: `python`, as the python:*-slim images and Lithops' templates call it.
packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates

[ "$(id -u)" = 0 ] || { echo "local-base.sh needs root (debootstrap): run it with sudo" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "no Docker engine answers: start dockerd first" >&2; exit 2; }

shopt -s nullglob
certificates=(/usr/local/share/ca-certificates/*.crt)
inputs=$( { cat "$0"; echo "$mirror $suite $packages"; cat "${certificates[@]}" /dev/null; } | sha256sum | cut -c1-16)
if [ "$force" = 0 ] && [ "$(docker image inspect -f '{{ index .Config.Labels "moments-stream.base-inputs" }}' \
    "$name" 2>/dev/null)" = "$inputs" ]; then
  echo "$name is up to date (inputs $inputs)" >&2
  exit 0
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/moments-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $suite from $mirror into $rootfs (about a minute)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
for certificate in "${certificates[@]}"; do
  cp "$certificate" "$rootfs/usr/local/share/ca-certificates/"
done
chroot "$rootfs" update-ca-certificates >/dev/null
# Debian's python3 is "externally managed" (PEP 668); images install into it, as python:*-slim allows.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
# An image is no place for apt's caches and package lists.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL moments-stream.base-inputs=$inputs" \
  --change 'CMD ["python3"]' \
  - "$name" >/dev/null
echo "made $name ($(docker image inspect -f '{{ .Size }}' "$name" | numfmt --to=iec) from Debian $suite)" >&2
