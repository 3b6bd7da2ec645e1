# Sourced by the project's scripts: where the caches live and what goes on PATH.
export HUB_RESILIENCE_HOME="${HUB_RESILIENCE_HOME:-$HOME/.cache/hub-resilience}"
mkdir -p "$HUB_RESILIENCE_HOME"
export PATH="$HUB_RESILIENCE_HOME/venv/bin:$HUB_RESILIENCE_HOME/node/node_modules/.bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1
