#!/usr/bin/env bash
# Build sealtensors._native with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch directory
# (the in-tree extension is left alone) and run the C engine's tests and the chunked tests against
# it, with libasan preloaded into Python. Any sanitizer report aborts the run and fails the script.
#
# Usage: scripts/sanitize.sh [pytest args...]   (default: the engine, chunked, AEAD vector and review tests)
# Env: PYTHON (default: the repository's .venv/bin/python if present, else python3), HYPOTHESIS_PROFILE (default ci).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3 )}
cc=${CC:-gcc}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
echo "sanitize: building with $flags"
SEALTENSORS_EXTRA_CFLAGS="$flags" SEALTENSORS_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
    "$python" setup.py -q build_ext --build-lib "$scratch/lib" --build-temp "$scratch/tmp" \
    >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }

# A shadow copy of the package whose _native is the sanitized build; it comes first on sys.path.
mkdir -p "$scratch/pkg"
cp -r src/sealtensors "$scratch/pkg/"
rm -f "$scratch/pkg/sealtensors/"_native*.so
cp "$scratch/lib/sealtensors/"_native*.so "$scratch/pkg/sealtensors/"

libasan=$("$cc" -print-file-name=libasan.so)
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$scratch/pkg${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
export SEALTENSORS_REQUIRE_C=1
export PYCRYPTODOME_DISABLE_DEEPBIND=1  # RTLD_DEEPBIND cannot be loaded under ASan

"$python" - <<PY
import sealtensors._native as native, sealtensors.engine.cengine as c
assert native.__file__.startswith("$scratch"), native.__file__
print("sanitize: using", native.__file__, "providers", c.available_providers())
PY

if [ $# -eq 0 ]; then
    set -- tests/test_cengine.py tests/test_cengine_review.py tests/test_aead_vectors.py tests/test_chunk_digests.py tests/test_unauthenticated_plaintext.py $(ls tests/test_chunked*.py 2>/dev/null)
fi
log="$scratch/pytest.log"
status=0
(cd "$root" && "$python" -m pytest -q -p no:cacheprovider "$@") 2>&1 | tee "$log" || status=$?
if grep -E -q "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: UndefinedBehaviorSanitizer" "$log"; then
    echo "sanitize: sanitizer report found" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize: tests failed (exit $status)" >&2
    exit "$status"
fi
echo "sanitize: clean"
