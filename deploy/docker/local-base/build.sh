#!/usr/bin/env bash
# Build a local Python base image for deploy/docker/Dockerfile* without an image
# registry: debootstrap a minimal Debian, import it, add Python, this machine's
# CA bundle and pip configuration. Prints the image tag on stdout.
#
#   deploy/docker/local-base/build.sh [--release bookworm] [--mirror URL]
#       [--ca-bundle FILE] [--pip-conf FILE] [--docker CLIENT]
#
# The tag, local/python:3.11-<release>-<hash>, carries a hash of the CA bundle,
# the pip configuration and this recipe: an unchanged machine reuses the image,
# a changed one builds a new one. Needs root (debootstrap) and a Docker engine.
set -euo pipefail

release=bookworm
mirror=http://deb.debian.org/debian
ca_bundle=/etc/ssl/certs/ca-certificates.crt
pip_conf=
docker=${DOCKER:-docker}
while [[ $# -gt 0 ]]; do
  case $1 in
    --release) release=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --ca-bundle) ca_bundle=$2; shift 2 ;;
    --pip-conf) pip_conf=$2; shift 2 ;;
    --docker) docker=$2; shift 2 ;;
    *) echo "usage: $0 [--release R] [--mirror URL] [--ca-bundle FILE] [--pip-conf FILE] [--docker CLIENT]" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$ca_bundle" "$context/ca-certificates.crt"
if [[ -n $pip_conf ]]; then
  cp "$pip_conf" "$context/pip.conf"
else
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$context/pip.conf"
fi
cp "$here/Dockerfile" "$context/Dockerfile"

hash=$(cat "$context/ca-certificates.crt" "$context/pip.conf" "$context/Dockerfile" "$0" \
  | sha256sum | cut -c1-12)
debian=local/debian:$release-slim
tag=local/python:3.11-$release-$hash

if "$docker" image inspect "$tag" > /dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
if ! "$docker" image inspect "$debian" > /dev/null 2>&1; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$context" "$rootfs"' EXIT
  echo "debootstrap $release from $mirror" >&2
  debootstrap --variant=minbase "$release" "$rootfs" "$mirror" > "$context/debootstrap.log" 2>&1 \
    || { tail -20 "$context/debootstrap.log" >&2; exit 1; }
  # Slim as Debian's own -slim images: no package caches, docs, man pages or
  # locales, and dpkg told to leave them out of later installs too.
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
  tar -C "$rootfs" -c . | "$docker" import - "$debian" > /dev/null
fi
echo "building $tag" >&2
DOCKER_BUILDKIT=1 "$docker" build --quiet --build-arg "DEBIAN_IMAGE=$debian" -t "$tag" "$context" >&2
echo "$tag"
