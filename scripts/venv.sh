# Sourced by demo.sh and test.sh: make (once) and fill the project's virtual
# environment, so nothing is installed into the system's Python (Debian's and
# Ubuntu's refuse that: "externally managed") and nothing installed by hand is
# relied on. Sets $PY to the environment's interpreter and puts its bin/ first
# on PATH.
#
#   BTSOOT_VENV   where the environment lives (default: .venv in the checkout)
#   PYTHON        the interpreter to make it from (default: python3)
#   $1            what to install: "." for btsoot, ".[test]" for btsoot and the test tools

apt_install() {
    # Debian packages, where they are missing and we may install them.
    local need=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        else
            echo "note: missing Debian packages (install them as root): ${need[*]}" >&2
        fi
    fi
}

venv_setup() {
    local what=$1 base=${PYTHON:-python3}
    VENV=${BTSOOT_VENV:-$PWD/.venv}
    if ! "$base" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        local ver
        ver=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        apt_install "python${ver}-venv"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$base" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$PY" -m pip install -q --disable-pip-version-check -e "$what"
    export PATH="$VENV/bin:$PATH"
}
