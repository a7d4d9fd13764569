# Shared by the setup scripts: messages and running as root. Set SCRIPT_NAME before sourcing.

say() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "needs root for: $* (run this script as root or with passwordless sudo)"
    else
        die "needs root for: $*"
    fi
}
