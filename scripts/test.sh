#!/usr/bin/env bash
# The test command: set up the machine (idempotent), lint, type-check, then every test.
# Integration and scenario tests start their own Kafka, PostgreSQL and SMTP sink on
# private ports; a missing component fails the run, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

bash scripts/setup.sh
echo "== ruff" >&2
"$PYTHON" -m ruff check lifecycle services devstack tests bench
echo "== mypy --strict" >&2
# the tests too; their folders are not packages, so their module names come from their paths
"$PYTHON" -m mypy --explicit-package-bases lifecycle services devstack bench tests
echo "== journeys validate" >&2
"$PYTHON" -m lifecycle.cli journeys validate
echo "== pytest" >&2
"$PYTHON" -m pytest -q -p no:cacheprovider "$@"
echo "== lifecycle chaos --runs 3" >&2
"$PYTHON" -m lifecycle.cli chaos --runs 3 --seed 20261129
