#!/usr/bin/env bash
# Command 1 of the README: set up, write a sample SqliteSaver database with a real
# LangGraph graph, start an embedded PostgreSQL (no server to install), run the migration
# as Dagster asset runs, and print the verification result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/checkpoint-assets quickstart "$@"
