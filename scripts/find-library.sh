# shellcheck shell=bash
# Sourced by the preload scripts: sets SO to the absolute path of libscopealloc.so, from the
# first argument, else $SCOPEALLOC_SO, else by building it (cargo build -p scopealloc-ffi
# --release). Exits 2 with one line on stderr if it cannot. $1: the script's name for messages;
# $2: the path given by the user, if any.
find_library() {
    local name=$1 root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    SO=${2:-${SCOPEALLOC_SO:-}}
    if [ -z "$SO" ]; then
        ( cd "$root" && "${CARGO:-cargo}" build -q -p scopealloc-ffi --release ) || {
            echo "$name: cannot build libscopealloc.so" >&2
            exit 2
        }
        SO=${CARGO_TARGET_DIR:-$root/target}/release/libscopealloc.so
    fi
    case $SO in /*) ;; *) SO=$PWD/$SO ;; esac
    if [ ! -f "$SO" ]; then
        echo "$name: $SO not found" >&2
        exit 2
    fi
}
