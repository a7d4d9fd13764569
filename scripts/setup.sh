#!/usr/bin/env bash
# Prepare a fresh Debian machine for development, tests and CI. Idempotent, needs no input.
#
#   - PostgreSQL server binaries (Debian's `postgresql` package) if no initdb is found
#   - checks that Java 17+ and Maven are there (Kafka runs from Maven Central jars)
#   - Chromium (Debian's `chromium` package) if /usr/bin/chromium is missing: the browser tests
#     drive it with Playwright (never `playwright install`, which downloads its own browser)
#   - pip install -e '.[dev]'
#   - fetches the Kafka jars into the cache (~43 MB, once)
#
# PYTHON selects the interpreter (default: python3).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

SCRIPT_NAME=setup
# shellcheck source=scripts/lib.sh
. scripts/lib.sh


have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# --- PostgreSQL ------------------------------------------------------------------------
if have_initdb; then
    say "PostgreSQL server binaries found"
else
    say "installing PostgreSQL (apt-get install postgresql)"
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends postgresql
    have_initdb || die "postgresql installed but initdb still not found"
    # The Debian package starts its own cluster on port 5432; the stack runs a private
    # one and needs none, but leaving it running is harmless, so it is not touched.
fi

# --- Java and Maven --------------------------------------------------------------------
missing=()
command -v java >/dev/null 2>&1 || missing+=(java)
command -v mvn >/dev/null 2>&1 || missing+=(mvn)
if [ "${#missing[@]}" -gt 0 ]; then
    die "${missing[*]} not found. Kafka needs Java 17+ and Maven: apt-get install -y openjdk-17-jre-headless maven"
fi
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
if [ -n "$java_major" ] && [ "$java_major" -lt 17 ]; then
    die "Java $java_major found, Kafka 4 needs 17+: apt-get install -y openjdk-17-jre-headless"
fi
say "java ${java_major:-?} and maven found"

# --- Chromium --------------------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    say "chromium found"
else
    say "installing Chromium (apt-get install chromium)"
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends chromium
    [ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is still missing"
fi

# --- Python package --------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.11+ is needed"
say "pip install -e '.[dev]'"
"$PYTHON" -m pip install -q -e '.[dev]'

# --- Kafka jars ------------------------------------------------------------------------
"$PYTHON" -m devstack.kafka fetch

# --- Operations tools: Prometheus and promtool, kustomize, hadolint ----------------------
command -v go >/dev/null 2>&1 || die "go not found: kustomize is built from the Go module proxy (apt-get install -y golang)"
PYTHON="$PYTHON" bash scripts/install-ops-tools.sh

say "done"
