#!/bin/sh
# Installs the build into a fresh prefix and builds tests/install/consumer.c against it as an
# outside project would, by pkg-config and by find_package (shared, and static where its
# dependencies are found); each program must print what the build tree's copy of the consumer
# prints, byte for byte. Also runs the installed sqz.
#   check_install.sh BUILD_DIR SOURCE_DIR LIBDIR C_COMPILER PKG_CONFIG REFERENCE_CONSUMER
set -eu
build=$1 src=$2 libdir=$3 cc=$4 pkg_config=$5 reference=$6
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cmake --install "$build" --prefix "$prefix" > "$tmp/install.log"
for f in include/squeezebert.h "$libdir/libsqueezebert.a" "$libdir/pkgconfig/squeezebert.pc" \
         "$libdir/cmake/squeezebert/squeezebertConfig.cmake" \
         "$libdir/cmake/squeezebert/squeezebertConfigVersion.cmake" bin/sqz; do
    [ -e "$prefix/$f" ] || { echo "not installed: $f"; exit 1; }
done
ls "$prefix/$libdir"/libsqueezebert.so.* > /dev/null

"$reference" "$tmp/model-ref" > "$tmp/want.txt"
[ -s "$tmp/want.txt" ] || { echo "the reference consumer printed nothing"; exit 1; }

check() { # NAME PROGRAM
    "$2" "$tmp/model-$1" > "$tmp/$1.txt" || { echo "$1: the consumer failed"; exit 1; }
    cmp "$tmp/want.txt" "$tmp/$1.txt" || { echo "$1: output differs from the build tree's"; exit 1; }
    echo "$1: same $(wc -l < "$tmp/want.txt") logits as the build tree"
}

# pkg-config, the shared library (found at run time through the rpath)
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
flags=$("$pkg_config" --cflags squeezebert)
libs=$("$pkg_config" --libs squeezebert)
found_libdir=$("$pkg_config" --variable=libdir squeezebert)
# shellcheck disable=SC2086 # the flags are words
"$cc" -std=c11 -Wall -Werror $flags "$src/tests/install/consumer.c" -o "$tmp/by-pkg-config" $libs \
    -lm "-Wl,-rpath,$found_libdir"
check pkg-config "$tmp/by-pkg-config"

# find_package, both libraries
cmake -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release > "$tmp/configure.log" ||
    { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/consumer" > "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
check find_package-shared "$tmp/consumer/consumer_shared"
if [ -x "$tmp/consumer/consumer_static" ]; then
    check find_package-static "$tmp/consumer/consumer_static"
else
    echo "find_package-static: not built (the static library's dependencies were not found)"
    exit 1
fi

"$prefix/bin/sqz" info --model "$tmp/model-ref" | grep -q SqueezeBert ||
    { echo "the installed sqz cannot read the model"; exit 1; }
echo "installed sqz runs"
