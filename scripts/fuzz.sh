#!/usr/bin/env bash
# Build and run the fuzzers for a bounded time; fails on any finding.
#
#   scripts/fuzz.sh [seconds]        total budget, default 60 (CI): split between
#                                    the C engine (libFuzzer, ASan+UBSan) and the three Python
#                                    targets (load, index, parsers: the five key parsers)
#
# A long run (e.g. overnight, 8 hours per target, several workers each):
#   FUZZ_WORKERS=8 scripts/fuzz.sh 86400
# or run a single target by hand (corpora persist under fuzz/corpus/, crashes land in fuzz/out/):
#   python fuzz/make_corpus.py
#   python fuzz/sealed_fuzzer.py load  fuzz/corpus/load  -max_total_time=28800 -timeout=10 -jobs=8 -workers=8
#   python fuzz/sealed_fuzzer.py index fuzz/corpus/index -max_total_time=28800 -timeout=10 -jobs=8 -workers=8
#   fuzz/out/engine_fuzzer fuzz/corpus/engine -max_total_time=28800 -timeout=10 -max_len=4096 -jobs=8 -workers=8
#
# Exit status: 0 clean; 1 a finding (crash-*/leak-*/timeout-*/oom-* saved in fuzz/out); 2 a target
# failed to start or stopped without a finding (no fuzzing happened: a broken build, interpreter or
# worker command line), which is reported apart so that it is never mistaken for a finding.
#
# Environment: PYTHON (default: the repository's .venv/bin/python if present, else python3), CC for
# the libFuzzer build (default clang), FUZZ_WORKERS (parallel workers per target, default 1),
# FUZZ_SEED (a fixed seed for repeatable bounded runs).
# Needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev) for the C target and
# atheris (pip install atheris) for the Python targets; without atheris the Python targets run under
# the harness's built-in random mutator (single process, FUZZ_WORKERS does not apply), and without
# clang the C target is skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
total=${1:-60}
workers=${FUZZ_WORKERS:-1}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
CC=${CC:-clang}
out=fuzz/out
mkdir -p "$out" fuzz/corpus/engine
c_time=$(( total * 2 / 5 )); py_time=$(( (total - c_time) / 3 ))
[ "$c_time" -ge 1 ] || c_time=1; [ "$py_time" -ge 1 ] || py_time=1
findings=0
broken=()
# FUZZ_SEED makes a bounded run repeatable (CI sets it, so a run that passed once keeps passing and a
# finding reproduces); without it libFuzzer picks a new seed each time, as long runs should.
seed_opt=()
[ -n "${FUZZ_SEED:-}" ] && seed_opt=(-seed="$FUZZ_SEED")
parallel_opt=()
[ "$workers" -gt 1 ] && parallel_opt=(-jobs="$workers" -workers="$workers")

artifacts() { # the artifact files in $out, one per line
    find "$root/$out" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
        -o -name 'oom-*' -o -name 'slow-fallback-*' \) | sort
}

# run_target NAME WORKDIR COMMAND...: runs one fuzzing target in WORKDIR (emptied first), then
# classifies the outcome: a new artifact is a finding; a failure without one, or a worker log that
# never reached libFuzzer's "INFO: Seed:" line (its command could not start), is a broken target.
run_target() {
    local name=$1 dir=$2 rc=0
    shift 2
    rm -rf "$dir"; mkdir -p "$dir"
    local before; before=$(artifacts)
    (cd "$dir" && "$@") || rc=$?
    # the fallback mutator saves its findings in its working directory: gather them into $out
    find "$dir" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'slow-fallback-*' \) \
        -exec mv -t "$root/$out" {} +
    local new; new=$(comm -13 <(echo "$before") <(artifacts) | sed '/^$/d')
    if [ -n "$new" ]; then
        echo "fuzz.sh: FINDING in $name (exit $rc):" >&2
        echo "$new" | sed 's/^/    /' >&2
        findings=1
        return
    fi
    local dead=""
    for log in "$dir"/fuzz-*.log; do
        [ -e "$log" ] || continue
        grep -q "INFO: Seed:" "$log" || dead="$dead $(basename "$log")"
    done
    if [ "$rc" -ne 0 ] || [ -n "$dead" ]; then
        echo "fuzz.sh: TARGET FAILED TO START OR RUN: $name (exit $rc, no finding saved)" >&2
        [ -n "$dead" ] && echo "    workers that never started fuzzing:$dead" >&2
        for log in "$dir"/fuzz-*.log; do
            [ -e "$log" ] && { echo "    --- $(basename "$log"), last lines:"; tail -n 5 "$log"; } >&2
        done
        broken+=("$name")
    fi
}

# --- the C engine under libFuzzer ----------------------------------------------------------------
if command -v "$CC" >/dev/null && echo 'int LLVMFuzzerTestOneInput(const char*d,unsigned long n){return 0;}' \
        | "$CC" -x c -fsanitize=fuzzer - -o "$out/.probe" 2>/dev/null; then
    version=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' src/sealtensors/_version.py)
    defs=(-DST_VERSION="\"$version\"")
    libs=(-lcrypto -lpthread)
    if [ -e /usr/include/intel-ipsec-mb.h ] && [ "${SEALTENSORS_IPSECMB:-auto}" != 0 ]; then
        defs+=(-DST_HAVE_IPSECMB=1); libs+=(-lIPSec_MB)
    fi
    # The AES providers are compiled in the same command, with the sanitizers and coverage (the
    # libraries they call are not instrumented). provider_openssl.c reads CPUID itself because
    # clang 14 rejects __builtin_cpu_supports("vaes"); a provider that does not build is a failed
    # target, no longer a silent fallback to an uninstrumented object.
    rm -f "$out/engine_fuzzer"
    if ! "$CC" -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -Wall -Wextra "${defs[@]}" -Icsrc fuzz/engine_fuzzer.c csrc/engine.c \
            csrc/provider_openssl.c csrc/provider_ipsecmb.c -o "$out/engine_fuzzer" "${libs[@]}"; then
        echo "fuzz.sh: TARGET FAILED TO START: engine_fuzzer does not build" >&2
        broken+=("engine_fuzzer (build)")
    fi
fi
if [ -x "$out/engine_fuzzer" ]; then
    # Inputs that once failed replay first, as a plain run over fuzz/regressions/engine.
    echo "== engine_fuzzer regressions"
    run_target "engine_fuzzer regressions" "$out/work-engine-regressions" \
        "$root/$out/engine_fuzzer" -artifact_prefix="$root/$out/" "$root"/fuzz/regressions/engine/*
    echo "== engine_fuzzer (${c_time}s)"
    run_target engine_fuzzer "$out/work-engine" "$root/$out/engine_fuzzer" "$root/fuzz/corpus/engine" \
        "${seed_opt[@]}" -max_total_time="$c_time" -timeout=10 -max_len=4096 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$root/$out/" "${parallel_opt[@]}"
elif ! command -v "$CC" >/dev/null; then
    echo "fuzz.sh: WARNING: $CC with libFuzzer not found; skipping the C engine target" >&2
fi

# --- the Python reader -----------------------------------------------------------------------------
python_ok=1
if [ ! -d fuzz/corpus/parsers ] && ! "$PYTHON" fuzz/make_corpus.py fuzz/corpus; then
    echo "fuzz.sh: TARGET FAILED TO START: fuzz/make_corpus.py failed under $PYTHON" >&2
    broken+=("sealed_fuzzer (corpus)")
    python_ok=0
fi
if [ "$python_ok" -eq 0 ]; then
    :
elif "$PYTHON" -c "import atheris" 2>/dev/null; then
    for target in load index parsers; do
        echo "== sealed_fuzzer $target (${py_time}s)"
        run_target "sealed_fuzzer $target" "$out/work-$target" "$PYTHON" "$root/fuzz/sealed_fuzzer.py" \
            "$target" "$root/fuzz/corpus/$target" "${seed_opt[@]}" -max_total_time="$py_time" \
            -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$root/$out/" \
            "${parallel_opt[@]}"
    done
else
    echo "fuzz.sh: atheris not installed; using the built-in mutator (one process per target)" >&2
    for target in load index parsers; do
        echo "== sealed_fuzzer $target, fallback mutator (${py_time}s)"
        run_target "sealed_fuzzer $target (fallback)" "$out/work-$target" "$PYTHON" "$root/fuzz/sealed_fuzzer.py" \
            "$target" "$root/fuzz/corpus/$target" --fallback --seconds "$py_time"
    done
fi

if [ "$findings" -ne 0 ]; then
    echo "fuzz.sh: FINDINGS (see crash-*/leak-*/timeout-*/oom-* files in $out)" >&2
    exit 1
fi
if [ "${#broken[@]}" -ne 0 ]; then
    echo "fuzz.sh: no finding, but these targets did not fuzz: ${broken[*]}" >&2
    exit 2
fi
echo "fuzz.sh: clean"
