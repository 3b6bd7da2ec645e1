#!/usr/bin/env bash
# Install everything the project needs on a fresh machine, with caches outside the repository:
#   - a Python virtualenv at $HUB_RESILIENCE_HOME/venv with this package and its test extra;
#   - configurable-http-proxy (npm) at $HUB_RESILIENCE_HOME/node, put on PATH by scripts/env.sh;
#   - promtool (Debian's `prometheus` package);
#   - the local Kubernetes control plane (tests/k8s/build.sh), unless SKIP_K8S_BUILD=1.
# Each step is skipped when its result is already there, so a second run takes seconds.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$repo/scripts/env.sh"
log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stamp="$HUB_RESILIENCE_HOME/venv/.installed-$(sha1sum "$repo/pyproject.toml" | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  log "creating Python environment in $HUB_RESILIENCE_HOME/venv"
  python3 -m venv "$HUB_RESILIENCE_HOME/venv"
  "$HUB_RESILIENCE_HOME/venv/bin/pip" install --quiet --upgrade pip
  "$HUB_RESILIENCE_HOME/venv/bin/pip" install --quiet -e "$repo[test]"
  touch "$stamp"
else
  # The package itself is installed editable; reinstall only its metadata (entry points).
  "$HUB_RESILIENCE_HOME/venv/bin/pip" install --quiet --no-deps -e "$repo" >/dev/null
fi

if [[ ! -x "$HUB_RESILIENCE_HOME/node/node_modules/.bin/configurable-http-proxy" ]]; then
  log "installing configurable-http-proxy from npm"
  mkdir -p "$HUB_RESILIENCE_HOME/node"
  npm install --silent --no-audit --no-fund --prefix "$HUB_RESILIENCE_HOME/node" \
    "configurable-http-proxy@^5" >/dev/null
fi

if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  # --no-install-recommends; policy-rc.d keeps Debian from starting a Prometheus server.
  printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
  $sudo_cmd chmod +x /usr/sbin/policy-rc.d
  $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

if [[ "${SKIP_K8S_BUILD:-0}" != "1" ]]; then
  "$repo/tests/k8s/build.sh" >/dev/null
fi
log "ready"
