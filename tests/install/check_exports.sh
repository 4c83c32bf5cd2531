#!/bin/sh
# The shared library exports exactly the functions the public headers mark SQZ_API.
#   check_exports.sh LIBRARY HEADER...     (exit 77, skipped, without nm)
set -eu
lib=$1
shift
command -v nm > /dev/null || exit 77
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -n 's/^SQZ_API [^(]*[ *]\(sqz_[a-z0-9_]*\)(.*/\1/p' "$@" | sort > "$tmp/declared"
nm -D --defined-only "$lib" | awk '{print $NF}' | sort > "$tmp/exported"
[ -s "$tmp/declared" ] || { echo "no SQZ_API declarations found in $*"; exit 1; }
if ! cmp -s "$tmp/declared" "$tmp/exported"; then
    echo "exported (>) and declared SQZ_API (<) differ:"
    diff "$tmp/declared" "$tmp/exported" || true
    exit 1
fi
echo "$(wc -l < "$tmp/exported") symbols exported, all of them SQZ_API functions of $*"
