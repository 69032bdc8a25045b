#!/usr/bin/env bash
# CI: install Debian's PostgreSQL server so the PostgreSQL tests run (tests/postgres_server.py starts a
# throwaway server from these binaries for the session). Idempotent; never fails CI: where apt-get is
# missing or not allowed, it says so and the PostgreSQL tests skip with that reason.
set -uo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    echo "postgres.sh: PostgreSQL server binaries already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "postgres.sh: no apt-get here; the PostgreSQL tests will skip"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "postgres.sh: not root and no passwordless sudo; the PostgreSQL tests will skip"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null; then
    echo "postgres.sh: installed $(ls -d /usr/lib/postgresql/*/bin | head -1)"
else
    echo "postgres.sh: apt-get install postgresql failed; the PostgreSQL tests will skip"
fi
exit 0
