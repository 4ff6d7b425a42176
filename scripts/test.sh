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
exec .venv/bin/python -m pytest "$@"
