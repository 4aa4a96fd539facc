#!/usr/bin/env bash
# Install Debian's `prometheus` package (gives /usr/bin/prometheus and /usr/bin/promtool) for the
# deploy tests in tests/deploy/. Idempotent: a no-op when promtool is already on PATH.
#
# The package's maintainer scripts would normally start a system-wide Prometheus on :9090. The
# tests start their own throwaway Prometheus on a free port, so this script makes sure no system
# service is started (a temporary policy-rc.d during the install) and, should one be running or
# enabled anyway (e.g. on a host with systemd), stops and disables it.
#
# Usage: scripts/install_prometheus.sh            (as root, or with sudo available)
set -euo pipefail

log() { echo "[install_prometheus] $*"; }

stop_system_service() {
    # systemd hosts
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    # sysvinit-style hosts / containers without systemd
    if [[ -x /etc/init.d/prometheus ]]; then
        "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
    # Last resort: the daemon the package started runs as user 'prometheus' from its pidfile.
    local pidfile=/run/prometheus/prometheus.pid
    if [[ -f "$pidfile" ]]; then
        local pid
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            log "stopping system prometheus (pid $pid)"
            "${SUDO[@]}" kill "$pid" || true
        fi
    fi
}

SUDO=()
have_root=1
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        have_root=0
    fi
fi

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    log "already installed: $(promtool --version 2>&1 | head -n1)"
    if [[ "$have_root" -eq 1 ]]; then
        stop_system_service
    fi
    exit 0
fi

if [[ "$have_root" -eq 0 ]]; then
    log "promtool missing and not root (no passwordless sudo): install Debian's 'prometheus'" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Keep invoke-rc.d from starting the service during the install (Docker images usually ship such
# a policy already; only add -- and later remove -- ours when there is none).
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# added by earlytom-vllm scripts/install_prometheus.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    added_policy=1
fi
cleanup() {
    if [[ "$added_policy" -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

log "apt-get update"
"${SUDO[@]}" apt-get update -q >/dev/null
log "apt-get install prometheus"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends prometheus >/dev/null

stop_system_service

if ! command -v promtool >/dev/null 2>&1; then
    log "promtool still missing after the install" >&2
    exit 1
fi
log "installed: $(promtool --version 2>&1 | head -n1)"
