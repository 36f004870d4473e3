#!/usr/bin/env bash
# Build the Docker image and run compose.yaml for real (tests/test_docker.py): /health,
# an image on the tiny model, a worker container killed mid-job, teardown. 7.5 minutes from
# nothing here, most of it the first build installing torch (README "Docker").
#
# Prepares what this machine lacks, and says so:
#   - Docker: as root on Debian, installs docker.io, docker-compose and debootstrap, and
#     starts dockerd (vfs storage) when none answers, stopping it again at the end.
#   - A base image when python:3.11-slim cannot be pulled (no registry): a Debian bookworm
#     root made by debootstrap, imported as sd-cpu-base:bookworm (kept for the next run).
#   - Redis when redis:7 cannot be pulled: Debian's redis-server on that base.
#   - torch when download.pytorch.org cannot be reached: the CPU wheel this machine's pip
#     finds (`pip download`, no dependencies) goes to docker/wheels/, and the build takes
#     torch from it with PyPI as the index (the build still fails if CUDA gets in).
#   - The host's extra CA certificates (/usr/local/share/ca-certificates/*.crt), copied to
#     docker/ca-certificates/, for a network that inspects TLS.
# The images stay for the next run's layer cache (about 11 GB with vfs here; `docker image
# prune` frees the untagged ones, and the cache with them). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "docker-test $(date +%T): $*" >&2; }
as_root() { [ "$(id -u)" = 0 ] || { say "$1 (run as root, or do it yourself)"; exit 1; }; }
# Registry pulls and downloads that cannot reach their host fail fast; the timeout is for
# the ones that hang instead.
try() { timeout 120 "$@" >/dev/null 2>&1; }

scripts/setup.sh test

# --- Docker -------------------------------------------------------------------------------
if ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null ||
   { ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; }; then
  as_root "needs docker, docker-compose and debootstrap: apt-get install docker.io docker-compose debootstrap"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq docker.io docker-compose debootstrap) >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  as_root "no Docker daemon answers: start one (dockerd --storage-driver=vfs)"
  log=$(mktemp /tmp/dockerd.XXXXXX.log)
  say "starting dockerd --storage-driver=vfs (log: $log)"
  dockerd --storage-driver=vfs >"$log" 2>&1 &
  dockerd_pid=$!
  trap 'say "stopping the dockerd it started"; kill "$dockerd_pid"; wait "$dockerd_pid" || true' EXIT
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi

# --- Base image and Redis -------------------------------------------------------------------
if ! docker image inspect python:3.11-slim >/dev/null 2>&1 && ! try docker pull python:3.11-slim; then
  export SD_DOCKER_BASE=sd-cpu-base:bookworm
  if ! docker image inspect "$SD_DOCKER_BASE" >/dev/null 2>&1; then
    as_root "python:3.11-slim cannot be pulled and building a base needs debootstrap as root"
    root=$(mktemp -d /tmp/bookworm-root.XXXXXX)
    chmod 755 "$root"  # mktemp's 0700 would become the image's /, closed to non-root users
    say "python:3.11-slim cannot be pulled: debootstrap bookworm into $root"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    tar -C "$root" -c . | docker import - "$SD_DOCKER_BASE" >/dev/null
    rm -rf "$root"
  fi
  say "base image: $SD_DOCKER_BASE (Debian bookworm, imported)"
fi
if ! docker image inspect redis:7 >/dev/null 2>&1 && ! try docker pull redis:7; then
  export SD_DOCKER_REDIS_IMAGE=sd-cpu-test-redis
  say "redis:7 cannot be pulled: building $SD_DOCKER_REDIS_IMAGE (Debian's redis-server)"
  docker build -q --build-arg "BASE=${SD_DOCKER_BASE:-debian:bookworm-slim}" \
    -t "$SD_DOCKER_REDIS_IMAGE" -f tests/docker/redis.Dockerfile tests/docker >/dev/null
fi

# --- torch and certificates -----------------------------------------------------------------
if ! try .venv/bin/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=20)"; then
  torch_pin=$(sed -n 's/^\(torch==[^ #]*\).*/\1/p' requirements.txt)
  version=${torch_pin#torch==}
  if ! ls docker/wheels/torch-"$version"+cpu-*.whl >/dev/null 2>&1; then
    .venv/bin/pip download -q --no-deps -d docker/wheels "$torch_pin" 2>/dev/null || true
  fi
  wheel=$(ls docker/wheels/torch-"$version"+cpu-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    say "download.pytorch.org cannot be reached and pip here finds no CPU wheel of $torch_pin"
    rm -f docker/wheels/torch-"$version"-*.whl  # PyPI's CUDA build, if that is what came
    exit 1
  fi
  export SD_DOCKER_TORCH_INDEX_URL=https://pypi.org/simple
  say "download.pytorch.org cannot be reached: torch from $wheel, the rest from PyPI"
fi
for cert in /usr/local/share/ca-certificates/*.crt; do
  if [ -f "$cert" ]; then cp "$cert" docker/ca-certificates/; say "trusting $cert in the image"; fi
done

export RUN_DOCKER_TESTS=1
# -s: the build's time and size and, after the tests, the containers' logs.
.venv/bin/python -m pytest -q -s -n 0 -m docker tests/test_docker.py "$@"
