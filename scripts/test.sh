#!/usr/bin/env bash
# Command 2 of the README: set up and run the whole test suite.
# Uses the PostgreSQL on 127.0.0.1:5432 when one runs, an embedded one otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# On machines that have a local cluster (CI), make sure it is up; harmless elsewhere.
if command -v pg_lsclusters >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql 2>/dev/null); do
        if ! pg_lsclusters "$version" main 2>/dev/null | grep -q online; then
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        fi
    done
fi
# The browser test (checkpoint_assets_tests/test_ui_browser.py) drives Debian's Chromium: a
# test tool's own browser download cannot work on these machines. Install it when it is
# missing and we may (root, apt-get); without it that test is skipped, never failed.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the browser test..."
    apt_log=$(mktemp)
    install_chromium() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
            >>"$apt_log" 2>&1
    }
    if ! install_chromium; then
        # The package lists may be missing or stale: refresh them once and try again.
        apt-get update -q >>"$apt_log" 2>&1 || true
        if ! install_chromium; then
            tail -n 5 "$apt_log" >&2
            echo "Could not install chromium: the browser test will be skipped." >&2
        fi
    fi
    rm -f "$apt_log"
fi
# Two test processes (whole files each): the slow tests mostly wait on dagster dev's daemon
# and on subprocesses, so two share the two cores well (about 7 instead of 14 minutes).
# CHECKPOINT_ASSETS_TEST_WORKERS=0 runs everything in one process.
exec .venv/bin/python -m pytest -n "${CHECKPOINT_ASSETS_TEST_WORKERS:-2}" --dist loadfile "$@"
