#!/bin/sh
# The Python package's tests, as ctest runs them (tests/CMakeLists.txt):
#   run.sh SOURCE_DIR WORK_DIR SQZ_BINARY PYTHON [ray]
# Makes a venv in WORK_DIR, installs numpy, pytest and scikit-build-core with pip, installs the
# package from SOURCE_DIR with `pip install` (the library built again by scikit-build-core, CUDA
# off to keep it short) and runs pytest. Exit 77 (skipped) when pip cannot install the tools
# (no package index reachable), so an offline build still passes the rest. With "ray": ray[data]
# too, and only the local-cluster test (test_ray.py); without it, every other test.
set -u
unset SQZ_LIBRARY # the installed package's own library is the one under test
src=$1 work=$2 sqz=$3 python=$4 mode=${5:-}
venv=$work/venv
mkdir -p "$work"
if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv"; then
    echo "skipped: $python cannot make a venv (python3-venv missing?)"
    exit 77
fi
tools="numpy pytest scikit-build-core"
tests="$src/python/tests --ignore=$src/python/tests/test_ray.py"
if [ "$mode" = ray ]; then
    tools="$tools ray[data]"
    tests="$src/python/tests/test_ray.py"
    export RAY_USAGE_STATS_ENABLED=0
fi
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check $tools; then
    echo "skipped: pip could not install $tools (no package index reachable?)"
    exit 77
fi
# --no-build-isolation: the scikit-build-core just installed, not a fresh download per run;
# a build folder kept in WORK_DIR makes a second run incremental
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall \
    --no-deps -C build-dir="$work/build" -C cmake.define.SQZ_WITH_CUDA=OFF \
    -C cmake.define.SQZ_WERROR=ON "$src" || exit 1
# from outside the source tree, so `import squeezebert` is the installed package
cd "$work" || exit 1
SQZ_CLI=$sqz SQZ_FIXTURES=$src/tests/fixtures exec "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests
