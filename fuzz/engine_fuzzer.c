/*
 * libFuzzer harness for the C chunk engine (csrc/engine.c), linked against the sources directly.
 *
 * Build (scripts/fuzz.sh does this):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DST_VERSION='"x"' -Icsrc \
 *       fuzz/engine_fuzzer.c csrc/engine.c csrc/provider_openssl.c csrc/provider_ipsecmb.c \
 *       -lcrypto -lpthread [-DST_HAVE_IPSECMB=1 -lIPSec_MB]
 *
 * The input picks a mode, a provider, the final flag, a thread count, the first chunk counter and
 * lengths; the rest is key material and payload. Oracles (any violation aborts, which libFuzzer
 * reports as a crash):
 *   - the return value equals status->code and is a known code; chunk_index is -1 or inside the span;
 *   - a failed decryption leaves all of dst zero (ST_E_ARG: dst untouched, it was never written);
 *   - random ciphertext never authenticates (only an empty non-final span may succeed);
 *   - encrypt -> decrypt (memory, and fd through a memfd) round-trips for any first_chunk / threads;
 *     one flipped byte fails with ST_E_AUTH at exactly that byte's chunk; a truncated file fails
 *     with ST_E_LENGTH at the chunk where data ran out; the engines agree for every thread count;
 *   - with per-chunk digests (a flag bit): digests_out is the SHA-256 of every stored chunk (checked
 *     against OpenSSL's EVP_Digest) and the same from both providers (ipsec-mb hashes with its
 *     multi-buffer job API); decrypting with them round-trips; a flipped ciphertext byte or a
 *     flipped digest byte fails with ST_E_DIGEST at that chunk before any AES work;
 *   - lengths claiming far more than exists (up to 2**64-1) are rejected without touching memory:
 *     those calls get pointers to a PROT_NONE page, so any access is a crash.
 * ASan/UBSan catch memory errors and undefined arithmetic along the way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sealtensors.h"

#define MAX_PLAIN_CHUNKS 40 /* up to 640 KiB of plaintext: enough chunks for the thread pool */

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "engine_fuzzer: oracle failed at %s:%d: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                                      \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static uint64_t take(reader *r, size_t bytes)
{
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++) {
        v <<= 8;
        if (r->n) {
            v |= *r->p++;
            r->n--;
        }
    }
    return v;
}

static void take_bytes(reader *r, uint8_t *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)take(r, 1);
}

static uint8_t *guard_page; /* PROT_NONE: the engine must never touch it */

static int provider_of(uint64_t v)
{
    static const int choices[] = {ST_PROVIDER_AUTO, ST_PROVIDER_IPSECMB, ST_PROVIDER_OPENSSL, 7,
                                  -1};
    return choices[v % 5];
}

static int threads_of(uint64_t v)
{
    static const int choices[] = {0, 1, 2, 3, 4, 8, 33, -1, 1 << 30};
    return choices[v % 9];
}

static uint64_t counter_of(uint64_t selector, uint64_t raw)
{
    switch (selector % 5) {
    case 0: return 0;
    case 1: return raw % 64;
    case 2: return ST_MAX_CHUNKS - 1 - raw % 64; /* near the C2SP limit */
    case 3: return ST_MAX_CHUNKS + raw % 4;      /* at / past it */
    default: return raw;                         /* anything, including 2**64-1 */
    }
}

static uint64_t span_chunks(size_t plain, int final)
{
    return plain / ST_CHUNK_SIZE + (final ? 1 : 0);
}

static int counter_ok(uint64_t first, uint64_t count)
{
    return first <= ST_MAX_CHUNKS && count <= ST_MAX_CHUNKS - first;
}

static int possible_plain(uint64_t ct, int final, uint64_t *plain)
{
    uint64_t full = ct / ST_ENCRYPTED_CHUNK_SIZE, rem = ct % ST_ENCRYPTED_CHUNK_SIZE;
    if (final) {
        if (rem < ST_TAG_SIZE)
            return 0;
        *plain = ct - (full + 1) * ST_TAG_SIZE;
        return 1;
    }
    if (rem)
        return 0;
    *plain = full * ST_CHUNK_SIZE;
    return 1;
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int all_byte(const uint8_t *p, size_t n, uint8_t b)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != b)
            return 0;
    return 1;
}

static void check_status(int rc, const st_status *st)
{
    CHECK(rc == st->code);
    CHECK((rc >= ST_OK && rc <= ST_E_PROVIDER) || rc == ST_E_DIGEST);
    if (rc == ST_OK || rc == ST_E_ARG)
        CHECK(st->chunk_index == -1);
}

static int usable(int provider)
{
    return st_resolve_provider(provider) >= 0;
}

/* Decrypt attacker-chosen bytes (memory or memfd) with attacker-chosen geometry. */
static void fuzz_random_decrypt(reader *r, int use_fd)
{
    uint8_t key[ST_KEY_SIZE], nonce[ST_NONCE_SIZE];
    int provider = provider_of(take(r, 1));
    uint64_t flags = take(r, 1);
    int final = flags & 1;
    int threads = threads_of(flags >> 1);
    uint64_t first = counter_of(take(r, 1), take(r, 8));
    int64_t dst_delta = (int8_t)take(r, 1);
    int64_t offset_sel = (int64_t)take(r, 8);
    take_bytes(r, key, sizeof key);
    take_bytes(r, nonce, sizeof nonce);
    size_t src_len = r->n;
    uint8_t *src = malloc(src_len ? src_len : 1);
    memcpy(src, r->p, src_len);

    uint64_t plain = 0;
    int possible = possible_plain(src_len, final, &plain);
    size_t dst_len = possible ? (size_t)((int64_t)plain + (dst_delta % 3 == 0 ? 0 : dst_delta)) : 0;
    if ((int64_t)dst_len < 0)
        dst_len = 0;
    uint8_t *dst = malloc(dst_len ? dst_len : 1);
    memset(dst, 0xA5, dst_len);

    st_status st;
    memset(&st, 0x5A, sizeof st);
    int rc;
    int64_t file_offset = 0;
    if (use_fd) {
        int fd = memfd_create("engine-fuzz", 0);
        CHECK(fd >= 0);
        /* the ciphertext sits at a small offset; a fuzzed offset may also point anywhere */
        size_t lead = (size_t)(offset_sel & 0xff);
        CHECK(pwrite(fd, src, src_len, (off_t)lead) == (ssize_t)src_len || src_len == 0);
        switch ((offset_sel >> 8) & 3) {
        case 0: file_offset = (int64_t)lead; break;
        case 1: file_offset = -(int64_t)((offset_sel >> 16) & 0xffff) - 1; break;
        case 2: file_offset = INT64_MAX - (int64_t)((offset_sel >> 16) & 0xffff); break;
        default: file_offset = (int64_t)lead + (int64_t)((offset_sel >> 16) & 0xffff); break;
        }
        rc = st_decrypt_span_fd(provider, key, nonce, first, fd, file_offset, src_len, dst, dst_len, NULL, 0,
                                final, threads, &st);
        close(fd);
    } else {
        rc = st_decrypt_span_mem(provider, key, nonce, first, src, src_len, dst, dst_len, NULL, 0, final,
                                 threads, &st);
    }
    check_status(rc, &st);
    uint64_t count = possible ? span_chunks((size_t)plain, final) : 0;
    if (rc == ST_OK)
        CHECK(count == 0 && dst_len == 0);
    else if (rc == ST_E_ARG)
        CHECK(all_byte(dst, dst_len, 0xA5));
    else
        CHECK(all_zero(dst, dst_len));
    if (rc == ST_E_AUTH) {
        CHECK(st.chunk_index >= 0 && (uint64_t)st.chunk_index >= first);
        CHECK((uint64_t)st.chunk_index - first < count);
    }
    if (!possible && threads >= 0)
        CHECK(rc == ST_E_LENGTH);
    if (possible && dst_len != plain && threads >= 0)
        CHECK(rc == ST_E_ARG);
    if (possible && dst_len == plain && !counter_ok(first, count) && threads >= 0)
        CHECK(rc == ST_E_ARG);
    if (use_fd && possible && dst_len == plain && count && counter_ok(first, count) &&
        file_offset < 0 && threads >= 0)
        CHECK(rc == ST_E_IO && st.sys_errno == EINVAL);
    free(src);
    free(dst);
}

/* Encrypt with fuzzed geometry, then decrypt it every way and check the failures it must give. */
static void fuzz_round_trip(reader *r)
{
    uint8_t key[ST_KEY_SIZE], nonce[ST_NONCE_SIZE];
    int provider = provider_of(take(r, 1));
    int provider2 = provider_of(take(r, 1));
    uint64_t flags = take(r, 1);
    int final = flags & 1;
    int threads = threads_of(flags >> 1);
    int threads2 = threads_of(take(r, 1));
    uint64_t first = counter_of(take(r, 1), take(r, 8));
    uint64_t len_sel = take(r, 3);
    uint64_t flip_at = take(r, 4);
    uint64_t cut = take(r, 3);
    take_bytes(r, key, sizeof key);
    take_bytes(r, nonce, sizeof nonce);

    size_t plain_len = (size_t)(len_sel % (MAX_PLAIN_CHUNKS * ST_CHUNK_SIZE + 1));
    if (!final)
        plain_len -= plain_len % ST_CHUNK_SIZE;
    uint8_t *plain = malloc(plain_len ? plain_len : 1);
    for (size_t i = 0; i < plain_len; i++)
        plain[i] = r->n ? r->p[i % r->n] : (uint8_t)i;
    uint64_t count = span_chunks(plain_len, final);
    size_t ct_len = plain_len + (size_t)count * ST_TAG_SIZE;
    uint8_t *ct = malloc(ct_len ? ct_len : 1);
    uint8_t *out = malloc(plain_len ? plain_len : 1);
    int digesting = (int)((flags >> 7) & 1);
    size_t dig_len = digesting ? (size_t)count * ST_DIGEST_SIZE : 0;
    uint8_t *dig = digesting ? malloc(dig_len ? dig_len : 1) : NULL;
    st_status st;

    threads = threads < 0 ? 0 : threads;
    threads2 = threads2 < 0 ? 1 : threads2;
    int ok_provider = usable(provider) && usable(provider2);
    int rc = st_encrypt_span_mem(provider, key, nonce, first, plain, plain_len, ct, ct_len, dig,
                                 dig_len, final, threads, &st);
    check_status(rc, &st);
    if (!counter_ok(first, count)) {
        CHECK(rc == ST_E_ARG || (rc == ST_OK && count == 0));
        goto done;
    }
    if (!usable(provider)) {
        CHECK(rc == ST_E_PROVIDER || (rc == ST_OK && count == 0));
        goto done;
    }
    CHECK(rc == ST_OK);
    if (!ok_provider)
        goto done;

    if (digesting) { /* the digests are SHA-256 of each stored chunk, whichever provider made them */
        for (uint64_t c = 0; c < count; c++) {
            size_t at = (size_t)c * ST_ENCRYPTED_CHUNK_SIZE;
            size_t len = ct_len - at < ST_ENCRYPTED_CHUNK_SIZE ? ct_len - at : ST_ENCRYPTED_CHUNK_SIZE;
            uint8_t want[ST_DIGEST_SIZE];
            unsigned int want_len = 0;
            CHECK(EVP_Digest(ct + at, len, want, &want_len, EVP_sha256(), NULL) == 1);
            CHECK(memcmp(want, dig + c * ST_DIGEST_SIZE, ST_DIGEST_SIZE) == 0);
        }
        uint8_t *ct2 = malloc(ct_len ? ct_len : 1), *dig2 = malloc(dig_len ? dig_len : 1);
        rc = st_encrypt_span_mem(provider2, key, nonce, first, plain, plain_len, ct2, ct_len, dig2,
                                 dig_len, final, threads2, &st);
        check_status(rc, &st);
        CHECK(rc == ST_OK);
        CHECK(ct_len == 0 || memcmp(ct, ct2, ct_len) == 0);
        CHECK(dig_len == 0 || memcmp(dig, dig2, dig_len) == 0);
        free(ct2);
        free(dig2);
    }

    /* memory, another provider and thread count */
    memset(out, 0xA5, plain_len);
    rc = st_decrypt_span_mem(provider2, key, nonce, first, ct, ct_len, out, plain_len, dig, dig_len,
                             final, threads2, &st);
    check_status(rc, &st);
    CHECK(rc == ST_OK);
    CHECK(plain_len == 0 || memcmp(out, plain, plain_len) == 0);

    /* through a file descriptor, possibly cut short */
    int fd = memfd_create("engine-fuzz-rt", 0);
    CHECK(fd >= 0);
    size_t keep = ct_len - (size_t)(cut % 4 == 0 ? 0 : cut % (ct_len + 1));
    CHECK(pwrite(fd, ct, keep, 7) == (ssize_t)keep || keep == 0);
    memset(out, 0xA5, plain_len);
    rc = st_decrypt_span_fd(provider2, key, nonce, first, fd, 7, ct_len, out, plain_len, dig, dig_len,
                            final, threads, &st);
    check_status(rc, &st);
    close(fd);
    if (keep == ct_len) {
        CHECK(rc == ST_OK);
        CHECK(plain_len == 0 || memcmp(out, plain, plain_len) == 0);
    } else {
        CHECK(rc == ST_E_LENGTH);
        CHECK(st.chunk_index == (int64_t)(first + keep / ST_ENCRYPTED_CHUNK_SIZE));
        CHECK(all_zero(out, plain_len));
    }

    /* one flipped byte: ST_E_AUTH at its chunk, destination wiped */
    if (ct_len) {
        size_t at = (size_t)(flip_at % ct_len);
        ct[at] ^= (uint8_t)(1u << (flip_at >> 29));
        memset(out, 0xA5, plain_len);
        rc = st_decrypt_span_mem(provider, key, nonce, first, ct, ct_len, out, plain_len, dig,
                                 dig_len, final, threads2, &st);
        check_status(rc, &st);
        CHECK(rc == (digesting ? ST_E_DIGEST : ST_E_AUTH));
        CHECK(st.chunk_index == (int64_t)(first + at / ST_ENCRYPTED_CHUNK_SIZE));
        CHECK(all_zero(out, plain_len));
        ct[at] ^= (uint8_t)(1u << (flip_at >> 29));
        if (digesting) { /* the stored bytes are intact, the expected digest is not */
            size_t bad = (size_t)(flip_at % dig_len);
            dig[bad] ^= 0x10;
            memset(out, 0xA5, plain_len);
            rc = st_decrypt_span_mem(provider2, key, nonce, first, ct, ct_len, out, plain_len, dig,
                                     dig_len, final, threads, &st);
            check_status(rc, &st);
            CHECK(rc == ST_E_DIGEST);
            CHECK(st.chunk_index == (int64_t)(first + bad / ST_DIGEST_SIZE));
            CHECK(all_zero(out, plain_len));
        }
    }
done:
    free(plain);
    free(ct);
    free(out);
    free(dig);
}

/* Lengths far beyond any buffer: rejected before any byte is touched (guard page pointers). */
static void fuzz_huge_claims(reader *r)
{
    uint8_t key[ST_KEY_SIZE] = {0}, nonce[ST_NONCE_SIZE] = {0};
    uint64_t flags = take(r, 1);
    int final = flags & 1;
    int which = (int)((flags >> 1) % 3);
    uint64_t first = counter_of(take(r, 1), take(r, 8));
    uint64_t src_len = take(r, 8);
    uint64_t dst_len = take(r, 8);
    st_status st;
    int rc;
    if (which == 2) {
        /* encryption: the destination size must match, the counter fit */
        uint64_t count = final ? src_len / ST_CHUNK_SIZE + 1 : src_len / ST_CHUNK_SIZE;
        uint64_t expected = src_len + count * ST_TAG_SIZE; /* may wrap: then it cannot match */
        int wraps = count > UINT64_MAX / ST_TAG_SIZE || expected < src_len;
        if (!wraps && dst_len == expected && counter_ok(first, count) &&
            (final || src_len % ST_CHUNK_SIZE == 0) && count > 0)
            dst_len ^= 1; /* would be a real (huge) encryption: make it a mismatch instead */
        rc = st_encrypt_span_mem(ST_PROVIDER_OPENSSL, key, nonce, first, guard_page, src_len,
                                 guard_page + 1, dst_len, NULL, 0, final, 1, &st);
        check_status(rc, &st);
        CHECK(rc == ST_E_ARG || (rc == ST_OK && src_len == 0 && !final && dst_len == 0));
        return;
    }
    uint64_t plain;
    int possible = possible_plain(src_len, final, &plain);
    if (possible && dst_len == plain && counter_ok(first, span_chunks(plain, final)) &&
        span_chunks(plain, final) > 0)
        dst_len = plain + 1; /* keep it a request the engine must refuse */
    /* impossible lengths are wiped (dst_len bytes): give no destination so nothing is written */
    uint8_t *dst = possible ? guard_page + 1 : NULL;
    if (which == 0)
        rc = st_decrypt_span_mem(ST_PROVIDER_OPENSSL, key, nonce, first, guard_page + 2, src_len,
                                 dst, dst_len, NULL, 0, final, 1, &st);
    else
        rc = st_decrypt_span_fd(ST_PROVIDER_OPENSSL, key, nonce, first, -1, 0, src_len, dst,
                                dst_len, NULL, 0, final, 1, &st);
    check_status(rc, &st);
    if (possible && dst_len == 0 && plain == 0 && span_chunks(0, final) == 0 && counter_ok(first, 0))
        CHECK(rc == ST_OK); /* an empty non-final span: nothing to do */
    else
        CHECK(rc == ST_E_ARG || (!possible && rc == ST_E_LENGTH && dst_len == 0));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    guard_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_page == MAP_FAILED)
        abort();
    CHECK(st_check_version(st_version()) == ST_OK);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    switch (take(&r, 1) % 4) {
    case 0: fuzz_random_decrypt(&r, 0); break;
    case 1: fuzz_random_decrypt(&r, 1); break;
    case 2: fuzz_round_trip(&r); break;
    default: fuzz_huge_claims(&r); break;
    }
    return 0;
}
