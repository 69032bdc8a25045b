#!/usr/bin/env bash
# CI: install what some tests drive from Debian's packages: the PostgreSQL server (tests/postgres_server.py
# starts a throwaway server from its binaries) and Chromium (the dashboard's headless-browser test).
# Idempotent; never fails CI: where apt-get is missing or not allowed, it says so and those tests skip.
set -uo pipefail

PACKAGES=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || PACKAGES+=(postgresql)
command -v chromium >/dev/null || PACKAGES+=(chromium)
if [ ${#PACKAGES[@]} -eq 0 ]; then
    echo "services.sh: PostgreSQL and Chromium already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "services.sh: no apt-get here; the PostgreSQL and browser tests will skip"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "services.sh: not root and no passwordless sudo; the PostgreSQL and browser tests will skip"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; then
    echo "services.sh: installed ${PACKAGES[*]}"
else
    echo "services.sh: apt-get install ${PACKAGES[*]} failed; the tests that need them will skip"
fi
exit 0
