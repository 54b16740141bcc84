#!/usr/bin/env bash
# The project's run command: bash scripts/run.sh [regscan standalone arguments]
#
# On a fresh Debian machine (as root) it installs what regscan needs (Python, venv,
# redis-server), installs regscan into .venv, and runs `regscan standalone`: migrations
# on a SQLite file in the working directory, a redis-server of its own, the API on
# http://127.0.0.1:8080 and https://127.0.0.1:8443 (a self-signed certificate made on
# first start) and two workers. Ctrl-C stops everything.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: missing system packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    python3 -m venv .venv
fi
stamp=.venv/.regscan-run-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ] || ! .venv/bin/regscan --help >/dev/null 2>&1; then
    echo "run.sh: installing regscan into .venv" >&2
    .venv/bin/python -m pip install -q -e .
    printf '%s\n' "$wanted" >"$stamp"
fi

exec .venv/bin/regscan standalone "$@"
