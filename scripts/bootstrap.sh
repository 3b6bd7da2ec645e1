#!/usr/bin/env bash
# Install everything the project needs on a fresh machine, with caches outside the repository:
#   - a Python virtualenv at $HUB_RESILIENCE_HOME/venv with this package and its test extra
#     (the newest releases, on the machine's Python);
#   - the released-stack virtualenv at $HUB_RESILIENCE_HOME/venv-z2jh-4.4.0, built as
#     zero-to-jupyterhub 4.4.0's hub image is (Python 3.12 and its frozen requirements.txt),
#     then the package installed into it as our docs tell operators to, unless
#     HUB_RESILIENCE_LANES=newest (scripts/test's lanes; the demo does not need it);
#   - configurable-http-proxy (npm) at $HUB_RESILIENCE_HOME/node, put on PATH by scripts/env.sh;
#   - promtool (Debian's `prometheus` package) and Chromium (Debian's `chromium`, for the
#     browser tests, which Playwright from the test extra drives);
#   - the local Kubernetes control plane (tests/k8s/build.sh), unless SKIP_K8S_BUILD=1, built
#     while the steps above install.
# Each step is skipped when its result is already there, so a second run takes seconds.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$repo/scripts/env.sh"
log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The Kubernetes build (minutes of compiling, when not cached) runs while the steps below
# download and install, and is waited for at the end; its log is printed then.
k8s_build_pid=""
if [[ "${SKIP_K8S_BUILD:-0}" != "1" ]]; then
  mkdir -p "$HUB_RESILIENCE_HOME"
  k8s_build_log="$HUB_RESILIENCE_HOME/k8s-build.log"
  "$repo/tests/k8s/build.sh" >/dev/null 2>"$k8s_build_log" &
  k8s_build_pid=$!
  # A bootstrap that fails before the end does not leave the build running.
  trap '[[ -z "$k8s_build_pid" ]] || kill "$k8s_build_pid" 2>/dev/null || true' EXIT
fi

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

# The released-stack lane: the hub image of zero-to-jupyterhub 4.4.0, the chart operators
# install. The image is Python 3.12 with the frozen packages of the chart's
# images/hub/requirements.txt (kept in <chart>/4.4.0/, see its README); operators then run
# `pip install -c /tmp/requirements.txt hub-resilience`, which installs beside those pins
# without changing one. tests/test_released_stack.py checks that nothing was changed.
python312() {
  # Prints the path of a Python 3.12: pyenv's newest 3.12.x (as these machines have it),
  # else a python3.12 on PATH; fails with what to do when there is none.
  local version candidate=""
  if command -v pyenv >/dev/null; then
    version="$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n1 || true)"
    if [[ -n "$version" ]]; then
      candidate="$(PYENV_VERSION="$version" pyenv which python3.12)"
    fi
  fi
  if [[ -z "$candidate" ]] && command -v python3.12 >/dev/null; then
    candidate="$(command -v python3.12)"
  fi
  if [[ -n "$candidate" ]] &&
    "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    printf '%s\n' "$candidate"
    return
  fi
  log "no Python 3.12 found (zero-to-jupyterhub 4.4.0's hub image runs Python 3.12, which the"
  log "released-stack lane needs): install it with 'pyenv install 3.12' ('pyenv versions' lists"
  log "what pyenv has) or put a python3.12 with its venv module on PATH; or run only the newest"
  log "lane with HUB_RESILIENCE_LANES=newest"
  return 1
}

lanes="${HUB_RESILIENCE_LANES:-both}"
if [[ "$lanes" != "newest" ]]; then
  released_venv="$HUB_RESILIENCE_HOME/venv-z2jh-4.4.0"
  # The chart folder, found as the tests find it (HUB_RESILIENCE_Z2JH_DIR, a shared/z2jh in a
  # folder above the checkout, /work/shared/z2jh): tests/z2jh.py, run by the main venv.
  chart="$(cd "$repo" && "$HUB_RESILIENCE_HOME/venv/bin/python" -c \
    'from tests.z2jh import z2jh_dir; print(z2jh_dir())')"
  frozen="$chart/4.4.0/requirements.txt"
  if [[ ! -f "$frozen" ]]; then
    log "$frozen is missing: the released-stack lane installs the hub image's frozen packages"
    log "from it (see the chart folder's README); HUB_RESILIENCE_Z2JH_DIR points elsewhere"
    exit 1
  fi
  released_stamp="$released_venv/.installed-$(cat "$repo/pyproject.toml" "$frozen" | sha1sum | cut -c1-12)"
  if [[ ! -f "$released_stamp" ]]; then
    py312="$(python312)"
    log "creating the released-stack environment in $released_venv ($("$py312" --version), $py312)"
    # Built afresh, as an image is: a previous one had other pins or another pyproject.toml.
    rm -rf "$released_venv"
    "$py312" -m venv "$released_venv"
    "$released_venv/bin/python" -m pip install --quiet --upgrade pip
    log "installing the hub image's frozen packages: pip install -r $frozen"
    "$released_venv/bin/python" -m pip install --quiet -r "$frozen"
    log "installing hub-resilience and its test extra under the image's pins: pip install -c $frozen -e $repo[test]"
    "$released_venv/bin/python" -m pip install --quiet -c "$frozen" -e "$repo[test]"
    touch "$released_stamp"
  else
    "$released_venv/bin/python" -m pip install --quiet --no-deps -e "$repo" >/dev/null
  fi
fi

if [[ ! -x "$HUB_RESILIENCE_HOME/node/node_modules/.bin/configurable-http-proxy" ]]; then
  log "installing configurable-http-proxy from npm"
  mkdir -p "$HUB_RESILIENCE_HOME/node"
  npm install --silent --no-audit --no-fund --prefix "$HUB_RESILIENCE_HOME/node" \
    "configurable-http-proxy@^5" >/dev/null
fi

# Debian's package lists, read once for the packages below.
export DEBIAN_FRONTEND=noninteractive
sudo_cmd=""; [[ $(id -u) -eq 0 ]] || sudo_cmd="sudo"
apt_updated=0
apt_update_once() {
  if [[ $apt_updated -eq 0 ]]; then
    $sudo_cmd apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian package prometheus)"
  apt_update_once
  # --no-install-recommends; policy-rc.d keeps Debian from starting a Prometheus server.
  printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
  $sudo_cmd chmod +x /usr/sbin/policy-rc.d
  $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

# The browser tests drive Debian's Chromium (Playwright's own browser builds are downloads,
# which these machines cannot make); HUB_RESILIENCE_CHROMIUM names another one.
if [[ -z "${HUB_RESILIENCE_CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
  log "installing Chromium (Debian package chromium) for the browser tests"
  started=$SECONDS
  apt_update_once
  $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null
  log "Chromium installed in $((SECONDS - started))s"
fi

if [[ -n "$k8s_build_pid" ]]; then
  k8s_status=0
  wait "$k8s_build_pid" || k8s_status=$?
  k8s_build_pid=""
  cat "$k8s_build_log" >&2
  if [[ $k8s_status -ne 0 ]]; then
    log "the Kubernetes build (tests/k8s/build.sh) failed with status $k8s_status; its log is above and in $k8s_build_log"
    exit "$k8s_status"
  fi
fi
log "ready"
