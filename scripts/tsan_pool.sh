#!/usr/bin/env bash
# Build csrc/tests/pool_stress.c with the engine under ThreadSanitizer and run it; fails on any
# report or wrong answer. Usage: scripts/tsan_pool.sh [rounds]   (default 6)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
version=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' src/sealtensors/_version.py)
ipsec=()
if [ -e /usr/include/intel-ipsec-mb.h ] && [ "${SEALTENSORS_IPSECMB:-auto}" != 0 ]; then
    ipsec=(-DST_HAVE_IPSECMB=1 -lIPSec_MB)
fi
${CC:-gcc} -std=c11 -O1 -g -fsanitize=thread -Wall -Wextra -Werror -DST_VERSION="\"$version\"" \
    -Icsrc csrc/tests/pool_stress.c csrc/engine.c csrc/provider_openssl.c csrc/provider_ipsecmb.c \
    -o "$out/pool_stress" -lcrypto -lpthread "${ipsec[@]}"
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" "$out/pool_stress" "${1:-6}"
echo "tsan_pool: clean"
