#!/usr/bin/env bash
# CI (as root): make a Docker engine and an offline base image available for
# tests/test_docker.py. Best effort: any step that fails leaves a reason in the log and
# exits 0, and the Docker test then skips with that reason instead of failing CI.
#
#   docker/ci-engine.sh start    install docker.io/docker-compose/debootstrap if missing,
#                                start dockerd --storage-driver=vfs if none runs, build the
#                                offline base image (docker/offline-base)
#   docker/ci-engine.sh stop     stop the dockerd this script started (and its containers)
set -uo pipefail
cd "$(dirname "$0")/.."

LOG="${BENCH_CI_ENGINE_LOG:-/tmp/asynchronize-django-ci-engine.log}"
PIDFILE=/tmp/asynchronize-django-dockerd.pid

say() { echo "ci-engine: $*" | tee -a "$LOG" >&2; }
give_up() { say "SKIP: $*"; exit 0; }

start() {
    : > "$LOG"
    local t0=$SECONDS
    [ "$(id -u)" -eq 0 ] || give_up "not root: cannot install or start a Docker engine"
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null \
        || { ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; }; then
        command -v apt-get >/dev/null || give_up "no apt-get to install docker.io"
        say "installing docker.io docker-compose debootstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >>"$LOG" 2>&1 || give_up "apt-get update failed"
        apt-get install -y -qq docker.io docker-compose debootstrap >>"$LOG" 2>&1 \
            || give_up "apt-get install docker.io docker-compose debootstrap failed"
    fi
    if ! docker info >/dev/null 2>&1; then
        say "starting dockerd --storage-driver=vfs"
        nohup dockerd --storage-driver=vfs >>"$LOG.dockerd" 2>&1 &
        echo $! > "$PIDFILE"
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || give_up "dockerd did not start (see $LOG.dockerd)"
    fi
    if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
        docker/offline-base >>"$LOG" 2>&1 || give_up "docker/offline-base failed: $(tail -n 1 "$LOG")"
    fi
    say "engine ready in $((SECONDS - t0)) s"
}

stop() {
    [ -f "$PIDFILE" ] || exit 0
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        docker ps -q | xargs -r docker rm -f >/dev/null 2>&1
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$PIDFILE"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
