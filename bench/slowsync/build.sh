#!/bin/sh
# Builds libslowsync.so from slowsync.c (next to this script) into $1 (default: a
# fresh temporary directory) and prints its path. bench/writes.py does the same itself.
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(mktemp -d)/libslowsync.so}
${CC:-cc} -shared -fPIC -O2 -o "$out" "$here/slowsync.c" -ldl
echo "$out"
