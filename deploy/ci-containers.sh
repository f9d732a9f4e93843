#!/usr/bin/env bash
# Container tests for real: Docker's engine, tiersim's image, a cluster of
# containers under Compose and under Swarm, a scenario across them.
#
#   deploy/ci-containers.sh [prepare|compose|swarm|down|all]   (default: all)
#
#   prepare  install Docker's engine from the distribution when missing, start
#            dockerd when it is not running, find or build a base image, build
#            the wheelhouse on the host and tiersim's image from it, offline
#   compose  bring the cluster of deploy/docker/compose.yaml up, run its
#            orchestrator job, check the results, take it down
#   swarm    the same file as a Swarm stack (docker stack deploy)
#   down     remove what compose/swarm left, stop a dockerd this script started
#
# Base image: $BASE_IMAGE (default python:3.11-slim) when it is present or can
# be pulled; otherwise a minimal Debian made here (mmdebstrap, or debootstrap),
# from the mirror this machine's apt configuration names, with python3 from
# Debian's packages, imported with `docker import`. Nothing is cached between runs
# except what the engine itself keeps.
#
# Results are checked by tests/deploy/check_results.py: equal to the embedded
# run of the same scenario, wall-clock fields aside. Needs root (dockerd) and a
# Python with tiersim installed ($PYTHON, default python3).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
DOCKER_DIR="$HERE/docker"
PYTHON="${PYTHON:-python3}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
STACK="${TIERSIM_STACK:-tiersimci}"
PROJECT="${TIERSIM_COMPOSE_PROJECT:-tiersimci}"
STATE_DIR="${TIERSIM_CI_STATE:-/tmp/tiersim-ci-containers}"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, any engine version

log() { printf '[ci-containers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

tiersim_version() { "$PYTHON" -c 'import tiersim; print(tiersim.__version__)'; }
image_name() { echo "${TIERSIM_IMAGE:-tiersim:$(tiersim_version)}"; }

APT_UPDATED=0
apt_install() {
  log "installing $* from the distribution's packages"
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

ensure_engine() {
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "Docker's engine is not installed and installing it needs root"
    apt_install docker.io
  fi
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "dockerd is not running and starting it needs root"
  mkdir -p "$STATE_DIR"
  log "starting dockerd (log: $STATE_DIR/dockerd.log)"
  dockerd >"$STATE_DIR/dockerd.log" 2>&1 &
  echo $! >"$STATE_DIR/dockerd.pid"
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -20 "$STATE_DIR/dockerd.log" >&2 || true
  die "dockerd did not come up within 30 s"
}

# `docker compose` (v2) when the engine has it, else Debian's docker-compose
# 1.x, which needs compose.v1.yaml for the scenario (it ignores `configs`).
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$PROJECT" -f "$DOCKER_DIR/compose.yaml" "$@"
  else
    if ! command -v docker-compose >/dev/null 2>&1; then
      apt_install docker-compose
    fi
    docker-compose -p "$PROJECT" -f "$DOCKER_DIR/compose.yaml" -f "$DOCKER_DIR/compose.v1.yaml" "$@"
  fi
}

# The Debian mirror this machine's apt uses, for the release it runs: read at
# run time, so no mirror is ever written into the repository.
apt_mirror() {
  local codename="$1" f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    uri="$(awk -v RS= -v suite="$codename" '
      {
        types = ""; uris = ""; suites = ""
        n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^Types:/)  types = lines[i]
          if (lines[i] ~ /^URIs:/)   { split(lines[i], u, /[ \t]+/); uris = u[2] }
          if (lines[i] ~ /^Suites:/) suites = lines[i] " "
        }
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && index(suites, " " suite " ") && uris != "") {
          print uris; exit
        }
      }' "$f")"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -e /etc/apt/sources.list ]; then
    uri="$(awk -v suite="$codename" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || die "no Debian mirror for '$codename' in the apt configuration"
  echo "$uri"
}

build_base_image() {
  local tag="$1" codename mirror root
  # shellcheck disable=SC1091
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  [ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"
  mirror="$(apt_mirror "$codename")"
  mkdir -p "$STATE_DIR"
  # mmdebstrap downloads in parallel and writes a tarball (under a minute);
  # plain debootstrap, the fallback, takes a few minutes.
  if command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap; then
    log "building base image $tag: mmdebstrap $codename (minbase + python3)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$codename" "$STATE_DIR/rootfs.tar" "$mirror" >"$STATE_DIR/bootstrap.log" 2>&1 \
      || { tail -20 "$STATE_DIR/bootstrap.log" >&2; die "mmdebstrap failed"; }
  else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    root="$STATE_DIR/rootfs"
    rm -rf "$root"
    mkdir -p "$root"
    log "building base image $tag: debootstrap $codename (minbase + python3), a few minutes"
    debootstrap --variant=minbase --include=python3,python3-venv "$codename" "$root" "$mirror" \
      >"$STATE_DIR/bootstrap.log" 2>&1 \
      || { tail -20 "$STATE_DIR/bootstrap.log" >&2; die "debootstrap failed"; }
    # What an image does not need: package lists and caches, docs, locales.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -cf "$STATE_DIR/rootfs.tar" .
    rm -rf "$root"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$STATE_DIR/rootfs.tar" "$tag" >/dev/null
  rm -f "$STATE_DIR/rootfs.tar"
  log "base image $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

choose_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    return 0
  fi
  log "pulling $BASE_IMAGE"
  if timeout 90 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "$BASE_IMAGE"
    return 0
  fi
  local codename local_tag
  # shellcheck disable=SC1091
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-debian}")"
  local_tag="tiersim-base:$codename"
  log "no registry image; using a local base image ($local_tag)"
  if ! docker image inspect "$local_tag" >/dev/null 2>&1; then
    build_base_image "$local_tag"
  fi
  echo "$local_tag"
}

# The wheelhouse: tiersim's wheel and every dependency, for the Python
# version and architecture of the base image (not necessarily the host's).
build_wheelhouse() {
  local base="$1" pyver hostver arch wheels="$DOCKER_DIR/wheels"
  pyver="$(docker run --rm --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  hostver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  log "wheelhouse for Python $pyver (host $hostver) in deploy/docker/wheels"
  if [ "$pyver" = "$hostver" ]; then
    "$PYTHON" -m pip wheel -q -w "$wheels" "$REPO" 2>"$STATE_DIR/pip.log" \
      || { tail -20 "$STATE_DIR/pip.log" >&2; die "pip wheel failed"; }
  else
    arch="$(uname -m)"
    if ! "$PYTHON" -m pip wheel -q --no-deps -w "$wheels" "$REPO" 2>"$STATE_DIR/pip.log" \
      || ! "$PYTHON" -m pip download -q -d "$wheels" --only-binary=:all: --python-version "$pyver" \
        --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
        --platform "manylinux2014_$arch" "$wheels"/tiersim-*.whl 2>>"$STATE_DIR/pip.log"; then
      tail -20 "$STATE_DIR/pip.log" >&2
      die "building the wheelhouse failed"
    fi
  fi
  log "wheelhouse: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
}

cmd_prepare() {
  ensure_engine
  # tests/deploy lint the scripts; CI has what they need.
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck || log "shellcheck unavailable"
  local base image
  base="$(choose_base_image)"
  build_wheelhouse "$base"
  image="$(image_name)"
  log "building $image from $base, offline (pip --no-index)"
  docker build -q --build-arg "BASE_IMAGE=$base" --build-arg OFFLINE=1 -t "$image" "$DOCKER_DIR" \
    >"$STATE_DIR/build.log" 2>&1 || { tail -30 "$STATE_DIR/build.log" >&2; die "docker build failed"; }
  log "image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'), user $(docker image inspect -f '{{.Config.User}}' "$image")"
}

# The token the nodes demand (they listen beyond loopback): made fresh for
# each run, in a directory only root can enter; the file itself is readable
# by the containers' user, as Compose bind-mounts it unchanged.
make_token() {
  local dir="$STATE_DIR/secret"
  mkdir -p "$dir"
  chmod 700 "$dir"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/node-token"
  chmod 644 "$dir/node-token"
  export TIERSIM_TOKEN_FILE="$dir/node-token"
}

check_results() {
  local results="$1"
  "$PYTHON" "$REPO/tests/deploy/check_results.py" "$results" "$DOCKER_DIR/scenario.toml"
}

cmd_compose() {
  ensure_engine
  local image out cid rc
  image="$(image_name)"
  docker image inspect "$image" >/dev/null 2>&1 || die "no image $image: run prepare first"
  out="$STATE_DIR/compose"
  mkdir -p "$out"
  make_token
  export TIERSIM_IMAGE="$image"
  trap 'compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
  log "compose: cluster up, orchestrator job runs"
  compose up -d >"$out/up.log" 2>&1 || { cat "$out/up.log" >&2; die "compose up failed"; }
  cid="$(compose ps -q orchestrator)"
  [ -n "$cid" ] || die "compose started no orchestrator container"
  rc="$(timeout 600 docker wait "$cid")" || die "the orchestrator did not finish within 600 s"
  docker logs "$cid" >"$out/results.json" 2>"$out/orchestrator.log"
  compose ps >&2 || true
  if [ "$rc" != 0 ]; then
    tail -30 "$out/orchestrator.log" >&2
    compose logs --tail 20 >&2 || true
    die "the orchestrator exited with $rc"
  fi
  check_results "$out/results.json"
  # The image's HEALTHCHECK (tiersim health) must turn every node healthy.
  local c health
  for c in $(compose ps -q dram0 cram0 swap0); do
    for _ in $(seq 1 60); do
      health="$(docker inspect -f '{{.State.Health.Status}}' "$c")"
      [ "$health" = healthy ] && break
      sleep 1
    done
    [ "$health" = healthy ] || die "container $c is $health, not healthy"
  done
  log "compose: nodes healthy by the image's HEALTHCHECK"
  compose down -v --remove-orphans >/dev/null 2>&1
  trap - EXIT
  log "compose: cluster down"
}

cmd_swarm() {
  ensure_engine
  local image out cid="" state joined=0
  image="$(image_name)"
  docker image inspect "$image" >/dev/null 2>&1 || die "no image $image: run prepare first"
  out="$STATE_DIR/swarm"
  mkdir -p "$out"
  make_token
  if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "swarm: init (single node)"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    joined=1
    echo 1 >"$STATE_DIR/swarm-initialized"
  fi
  # shellcheck disable=SC2064  # expand now: the values are fixed
  trap "docker stack rm '$STACK' >/dev/null 2>&1 || true; [ '$joined' = 1 ] && docker swarm leave --force >/dev/null 2>&1 || true" EXIT
  log "swarm: stack deploy"
  TIERSIM_IMAGE="$image" docker stack deploy -c "$DOCKER_DIR/compose.yaml" "$STACK" >/dev/null
  # The orchestrator is a one-shot task (restart_policy none): wait until its
  # container has exited.
  for _ in $(seq 1 600); do
    cid="$(docker ps -aq --filter "label=com.docker.swarm.service.name=${STACK}_orchestrator" | head -1)"
    if [ -n "$cid" ]; then
      state="$(docker inspect -f '{{.State.Status}}' "$cid")"
      [ "$state" = exited ] && break
    fi
    sleep 1
  done
  [ -n "$cid" ] || { docker stack ps --no-trunc "$STACK" >&2 || true; die "swarm started no orchestrator task"; }
  [ "$(docker inspect -f '{{.State.Status}}' "$cid")" = exited ] || die "the orchestrator task did not finish"
  docker logs "$cid" >"$out/results.json" 2>"$out/orchestrator.log"
  local rc
  rc="$(docker inspect -f '{{.State.ExitCode}}' "$cid")"
  docker stack ps "$STACK" >&2 || true
  if [ "$rc" != 0 ]; then
    tail -30 "$out/orchestrator.log" >&2
    die "the orchestrator task exited with $rc"
  fi
  check_results "$out/results.json"
  docker stack rm "$STACK" >/dev/null
  # Wait until the stack's containers and network are gone before leaving.
  for _ in $(seq 1 60); do
    [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] && break
    sleep 1
  done
  if [ "$joined" = 1 ]; then
    docker swarm leave --force >/dev/null
    rm -f "$STATE_DIR/swarm-initialized"
  fi
  trap - EXIT
  log "swarm: stack removed"
}

cmd_down() {
  if docker info >/dev/null 2>&1; then
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    docker stack rm "$STACK" >/dev/null 2>&1 || true
    if [ -e "$STATE_DIR/swarm-initialized" ]; then
      docker swarm leave --force >/dev/null 2>&1 || true
      rm -f "$STATE_DIR/swarm-initialized"
    fi
  fi
  if [ -e "$STATE_DIR/dockerd.pid" ]; then
    local pid
    pid="$(cat "$STATE_DIR/dockerd.pid")"
    log "stopping the dockerd this script started (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    rm -f "$STATE_DIR/dockerd.pid"
  fi
}

case "${1:-all}" in
  prepare) cmd_prepare ;;
  compose) cmd_compose ;;
  swarm) cmd_swarm ;;
  down) cmd_down ;;
  all)
    start=$(date +%s)
    cmd_prepare
    cmd_compose
    cmd_swarm
    log "all stages passed in $(($(date +%s) - start)) s"
    ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
