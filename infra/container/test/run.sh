#!/bin/sh
# `make test-containers`: build the four images from infra/container/Dockerfile
# and check them, then the compose stack, for real under podman. Needs root and
# apt; about 5 minutes from an empty image store, 2 to 3 once the images exist.
# Leaves images only: every container, pod, network and volume it made is removed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
venv=${VENV:-$root/.venv}
if [ "$(id -u)" != 0 ]; then
    echo "make test-containers runs as root (it installs podman with apt, runs rootful podman)" >&2
    exit 1
fi

missing=""
for tool in podman buildah runc newuidmap fuse-overlayfs slirp4netns debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "installing podman and friends (missing:$missing)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        podman buildah runc uidmap fuse-overlayfs slirp4netns debootstrap
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"

# runc and ulimits that work inside this kind of machine (see the file).
export CONTAINERS_CONF="$here/containers.conf"
trap '"$venv/bin/python" "$here/engine.py" cleanup' EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap cleans up
# Bounded: 30 minutes in all, 15 for any one test (the first one builds the images).
timeout --kill-after=30 1800 "$venv/bin/pytest" --rootdir="$root" -c "$root/pyproject.toml" \
    -o timeout=900 -p no:cacheprovider -s "$here" "$@"
