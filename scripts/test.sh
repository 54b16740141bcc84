#!/usr/bin/env bash
# The project's one test command: bash scripts/test.sh [pytest arguments]
#
# On a fresh Debian machine (as root) it installs what the tests need, creates .venv,
# makes sure a PostgreSQL answers, runs ruff, the import contracts and mypy, then pytest.
# Redis and the registry are started by the tests themselves (testbed/services.py); only
# their binaries are needed here. The dashboard's browser tests save screenshots in
# test-artifacts/screenshots/.
#
# Environment:
#   REGSCAN_TEST_POSTGRES_URL  use this PostgreSQL instead of looking for one
#   REGSCAN_PG_PROBE_PORT      port of the local PostgreSQL to try first (default 5432)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[test.sh] %s\n' "$*" >&2; }

as_root() {
    [ "$(id -u)" -eq 0 ]
}

# -- system packages -----------------------------------------------------------------------
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    python3 - >/dev/null 2>&1 <<'EOF' || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
else
    missing+=(python3-venv python3-dev)
fi
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
# The catalogers' tests build real rpm databases and a real Go binary.
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
command -v db5.3_load >/dev/null 2>&1 || missing+=(db5.3-util)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Version ordering is checked against npm's semver and Go's x/mod/semver.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -d /usr/share/gocode/src/golang.org/x/mod/semver ] || missing+=(golang-golang-x-mod-dev)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
# The dashboard's tests drive Debian's headless Chromium through its WebDriver.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if ! command -v psql >/dev/null 2>&1 || ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    missing+=(postgresql)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if ! as_root; then
        log "missing system packages: ${missing[*]} (run as root, or install them)"
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# dpkg's ordering is checked on the real versions in apt's package lists.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    if ! as_root; then
        log "no apt package lists: run apt-get update as root"
        exit 1
    fi
    apt-get update -qq
fi

python3 - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"python3 is {sys.version.split()[0]}; regscan needs 3.11 or newer")
EOF

# -- virtualenv --------------------------------------------------------------------------
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    log "creating .venv"
    rm -rf .venv
    python3 -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install into this venv.
stamp=.venv/.regscan-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
    log "installing regscan and its test dependencies into .venv"
    .venv/bin/python -m pip install -q -e '.[test]'
    # The Prisma Cloud CLI (pc) pins an older prismacloud-api than the SDK 5.3.0 the tests
    # drive; it runs on 5.3.0, so it goes in without its pins (what it imports is in the
    # test extra).
    .venv/bin/python -m pip install -q --no-deps prismacloud-cli==0.8.11
    printf '%s\n' "$wanted" >"$stamp"
fi

# -- PostgreSQL ------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_as_owner() {
    # initdb and postgres refuse to run as root: run them as the postgres user then.
    if as_root; then
        (cd /tmp && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_dir=""
pg_bin=""
stop_private_postgres() {
    if [ -n "$pg_dir" ]; then
        pg_as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
        pg_dir=""
    fi
}

start_private_postgres() {
    pg_bin="$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1)"
    local port
    port="$(free_port)"
    pg_dir="$(mktemp -d /tmp/regscan-pg.XXXXXX)"
    trap stop_private_postgres EXIT
    if as_root; then
        chown postgres: "$pg_dir"
    fi
    log "starting a private PostgreSQL ($pg_bin) on 127.0.0.1:$port"
    pg_as_owner "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$pg_dir/initdb.log" 2>&1 || {
        cat "$pg_dir/initdb.log" >&2
        return 1
    }
    pg_as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "-k /tmp -p $port -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || {
        cat "$pg_dir/server.log" >&2
        return 1
    }
    pg_as_owner "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
    export REGSCAN_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/test"
}

if [ -n "${REGSCAN_TEST_POSTGRES_URL:-}" ]; then
    log "using PostgreSQL from REGSCAN_TEST_POSTGRES_URL"
else
    probe_port="${REGSCAN_PG_PROBE_PORT:-5432}"
    if PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$probe_port" -U postgres -d test -qtA \
        -c 'select 1' >/dev/null 2>&1; then
        export REGSCAN_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$probe_port/test"
        log "using the PostgreSQL on 127.0.0.1:$probe_port"
    else
        start_private_postgres
    fi
fi

# -- checks and tests ----------------------------------------------------------------------
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The import order of the README's "How it works" (contracts in pyproject.toml).
.venv/bin/lint-imports --no-cache
# The type hints of the product code.
.venv/bin/mypy

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    log "pytest collected no tests: that counts as a failure"
fi
exit "$status"
