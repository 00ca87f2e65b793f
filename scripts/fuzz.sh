#!/usr/bin/env bash
# Build and run the fuzzers for a bounded time; fails on any finding.
#
#   scripts/fuzz.sh [seconds]        total budget, default 60 (CI): split between
#                                    the C engine (libFuzzer, ASan+UBSan) and the two Python targets
#
# A long run (e.g. overnight, 8 hours per target, several workers each):
#   FUZZ_WORKERS=8 scripts/fuzz.sh 86400
# or run a single target by hand (corpora persist under fuzz/corpus/, crashes land in fuzz/out/):
#   python fuzz/make_corpus.py
#   python fuzz/sealed_fuzzer.py load  fuzz/corpus/load  -max_total_time=28800 -timeout=10 -jobs=8 -workers=8
#   python fuzz/sealed_fuzzer.py index fuzz/corpus/index -max_total_time=28800 -timeout=10 -jobs=8 -workers=8
#   fuzz/out/engine_fuzzer fuzz/corpus/engine -max_total_time=28800 -timeout=10 -max_len=4096 -jobs=8 -workers=8
#
# Environment: PYTHON (default: the venv's python if present, else python3), CC for the libFuzzer
# build (default clang), FUZZ_WORKERS (parallel workers per target, default 1).
# Needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev) for the C target and
# atheris (pip install atheris) for the Python targets; without atheris the Python targets run under
# the harness's built-in random mutator, and without clang the C target is skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-60}
workers=${FUZZ_WORKERS:-1}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /work/venv/bin/python ]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
CC=${CC:-clang}
out=fuzz/out
mkdir -p "$out" fuzz/corpus/engine
c_time=$(( total * 2 / 5 )); py_time=$(( (total - c_time) / 2 ))
[ "$c_time" -ge 1 ] || c_time=1; [ "$py_time" -ge 1 ] || py_time=1
status=0
# FUZZ_SEED makes a bounded run repeatable (CI sets it, so a run that passed once keeps passing and a
# finding reproduces); without it libFuzzer picks a new seed each time, as long runs should.
seed_opt=()
[ -n "${FUZZ_SEED:-}" ] && seed_opt=(-seed="$FUZZ_SEED")

# --- the C engine under libFuzzer ----------------------------------------------------------------
if command -v "$CC" >/dev/null && echo 'int LLVMFuzzerTestOneInput(const char*d,unsigned long n){return 0;}' \
        | "$CC" -x c -fsanitize=fuzzer - -o "$out/.probe" 2>/dev/null; then
    version=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' src/sealtensors/_version.py)
    defs=(-DST_VERSION="\"$version\"")
    libs=(-lcrypto -lpthread)
    if [ -e /usr/include/intel-ipsec-mb.h ] && [ "${SEALTENSORS_IPSECMB:-auto}" != 0 ]; then
        defs+=(-DST_HAVE_IPSECMB=1); libs+=(-lIPSec_MB)
    fi
    objs=()
    # The AES providers are only called through; build them with sanitizers when the compiler
    # accepts them (clang 14 rejects __builtin_cpu_supports("vaes")), else uninstrumented with cc.
    for provider in provider_openssl provider_ipsecmb; do
        if ! "$CC" -c -g -O1 -std=c11 -fsanitize=address,undefined "${defs[@]}" -Icsrc \
                "csrc/$provider.c" -o "$out/$provider.o" 2>/dev/null; then
            echo "fuzz.sh: $CC cannot build csrc/$provider.c; building it uninstrumented with cc" >&2
            cc -c -g -O1 -std=c11 "${defs[@]}" -Icsrc "csrc/$provider.c" -o "$out/$provider.o"
        fi
        objs+=("$out/$provider.o")
    done
    "$CC" -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -Wall -Wextra "${defs[@]}" -Icsrc fuzz/engine_fuzzer.c csrc/engine.c "${objs[@]}" \
        -o "$out/engine_fuzzer" "${libs[@]}"
    # Inputs that once failed replay first, as a plain run over fuzz/regressions/engine.
    echo "== engine_fuzzer regressions"
    (cd "$out" && ./engine_fuzzer ../regressions/engine/*) || status=1
    echo "== engine_fuzzer (${c_time}s)"
    (cd "$out" && ./engine_fuzzer ../corpus/engine "${seed_opt[@]}" -max_total_time="$c_time" -timeout=10 \
        -max_len=4096 -rss_limit_mb=4096 -print_final_stats=1 \
        $( [ "$workers" -gt 1 ] && echo "-jobs=$workers -workers=$workers" )) || status=1
else
    echo "fuzz.sh: WARNING: $CC with libFuzzer not found; skipping the C engine target" >&2
fi

# --- the Python reader -----------------------------------------------------------------------------
[ -d fuzz/corpus/load ] || "$PYTHON" fuzz/make_corpus.py fuzz/corpus
if "$PYTHON" -c "import atheris" 2>/dev/null; then
    for target in load index; do
        echo "== sealed_fuzzer $target (${py_time}s)"
        (cd "$out" && "$PYTHON" ../sealed_fuzzer.py "$target" "../corpus/$target" "${seed_opt[@]}" \
            -max_total_time="$py_time" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
            $( [ "$workers" -gt 1 ] && echo "-jobs=$workers -workers=$workers" )) || status=1
    done
else
    echo "fuzz.sh: atheris not installed; using the built-in mutator" >&2
    for target in load index; do
        echo "== sealed_fuzzer $target, fallback mutator (${py_time}s)"
        (cd "$out" && "$PYTHON" ../sealed_fuzzer.py "$target" "../corpus/$target" --fallback \
            --seconds "$py_time") || status=1
    done
fi

if [ "$status" -ne 0 ]; then
    echo "fuzz.sh: FINDINGS (see crash-*/timeout-*/oom-* files in $out)" >&2
else
    echo "fuzz.sh: clean"
fi
exit "$status"
