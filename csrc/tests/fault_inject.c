/*
 * Fault injection for the span engine's setup and error paths: allocations, thread creation, mutex
 * initialisation and OpenSSL calls fail on chosen calls (the engine's own references are redirected
 * with -Wl,--wrap, so libcrypto's internal allocations are untouched). After every call:
 *   - ST_OK means the output is exactly right (the job finished on fewer workers if it had to);
 *   - any failure leaves the whole destination zero, reports the lowest failing chunk, and leaves
 *     the calling thread's OpenSSL error queue empty;
 *   - a decrypt (every chunk goes through a private bounce buffer) never writes a chunk that failed
 *     authentication into the destination, not even until the final wipe;
 *   - nothing leaks (built with ASan/LeakSanitizer by tests/test_cengine_review.py).
 * Every run first shuts the engine's helper pool down, so that each run creates its helpers (and
 * their buffers) again under the plan.
 *
 *   fault_inject [ipsecmb|openssl]   exits 0 when every check held, 1 otherwise (default: both)
 */
#define _GNU_SOURCE
#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../sealtensors.h"

enum { F_MALLOC, F_CALLOC, F_MEMALIGN, F_PTHREAD_CREATE, F_MUTEX_INIT, F_CTX_NEW, F_CIPHER_INIT,
       F_COUNT };
static const char *const fname[F_COUNT] = {"malloc", "calloc", "posix_memalign", "pthread_create",
                                           "pthread_mutex_init", "EVP_CIPHER_CTX_new",
                                           "EVP_CipherInit_ex"};

/* The plan: fail call number `nth` of function `which` (counted from 0 since the plan was set), or
 * every call from `nth` on when `from` is set. which = -1: nothing fails. */
static atomic_int plan_which = -1;
static atomic_long plan_nth;
static atomic_int plan_from;
static atomic_long calls[F_COUNT];

static int should_fail(int f)
{
    if (atomic_load(&plan_which) != f)
        return 0;
    long k = atomic_fetch_add(&calls[f], 1);
    long nth = atomic_load(&plan_nth);
    return atomic_load(&plan_from) ? k >= nth : k == nth;
}

static void set_plan(int which, long nth, int from)
{
    for (int f = 0; f < F_COUNT; f++)
        atomic_store(&calls[f], 0);
    atomic_store(&plan_nth, nth);
    atomic_store(&plan_from, from);
    atomic_store(&plan_which, which);
}

void *__real_malloc(size_t);
void *__wrap_malloc(size_t n) { return should_fail(F_MALLOC) ? NULL : __real_malloc(n); }
void *__real_calloc(size_t, size_t);
void *__wrap_calloc(size_t n, size_t m) { return should_fail(F_CALLOC) ? NULL : __real_calloc(n, m); }
int __real_posix_memalign(void **, size_t, size_t);
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    return should_fail(F_MEMALIGN) ? 12 /* ENOMEM */ : __real_posix_memalign(p, a, n);
}
int __real_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    return should_fail(F_PTHREAD_CREATE) ? 11 /* EAGAIN */ : __real_pthread_create(t, a, fn, arg);
}
int __real_pthread_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *);
int __wrap_pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
{
    return should_fail(F_MUTEX_INIT) ? 12 : __real_pthread_mutex_init(m, a);
}
EVP_CIPHER_CTX *__real_EVP_CIPHER_CTX_new(void);
EVP_CIPHER_CTX *__wrap_EVP_CIPHER_CTX_new(void)
{
    return should_fail(F_CTX_NEW) ? NULL : __real_EVP_CIPHER_CTX_new();
}
int __real_EVP_CipherInit_ex(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *,
                             const unsigned char *, int);
int __wrap_EVP_CipherInit_ex(EVP_CIPHER_CTX *c, const EVP_CIPHER *t, ENGINE *e,
                             const unsigned char *k, const unsigned char *iv, int enc)
{
    if (should_fail(F_CIPHER_INIT)) {
        ERR_raise(ERR_LIB_EVP, ERR_R_INTERNAL_ERROR); /* as a real failure would leave one */
        return 0;
    }
    return __real_EVP_CipherInit_ex(c, t, e, k, iv, enc);
}

/* The engine wipes a failed destination with explicit_bzero: look at the tampered chunk's bytes
 * just before that, to see whether its unauthenticated plaintext was ever written there. */
#define SNAP_LEN 16384
static uint8_t *snap_dst;
static size_t snap_off;
static uint8_t snapshot[SNAP_LEN];
static int snapped;
void __real_explicit_bzero(void *, size_t);
void __wrap_explicit_bzero(void *p, size_t n)
{
    if (snap_dst && p == snap_dst && n >= snap_off + SNAP_LEN) {
        memcpy(snapshot, snap_dst + snap_off, SNAP_LEN);
        snapped = 1;
    }
    __real_explicit_bzero(p, n);
}

#define CHUNKS 300
#define PLAIN ((size_t)CHUNKS * ST_CHUNK_SIZE + 1234)
#define CIPHER (PLAIN + (CHUNKS + 1) * ST_TAG_SIZE)
#define FIRST 5
#define BAD_LOW 77

static uint8_t key[ST_KEY_SIZE], nonce[ST_NONCE_SIZE];
static uint8_t *plaintext, *ciphertext, *tampered, *out;
static uint8_t aead_ct[5000 + ST_TAG_SIZE];
static int fd;
static int failures, checks;

static void fail(const char *op, int provider, int threads, int which, long nth, int from,
                 const char *what, const st_status *s)
{
    failures++;
    fprintf(stderr, "FAIL %s (%s, threads %d, %s %s %ld): %s; code %d chunk %lld perr %lu\n", op,
            st_provider_name(provider), threads, which >= 0 ? fname[which] : "none",
            from ? "from" : "call", nth, what, s->code, (long long)s->chunk_index,
            s->provider_error);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int all_aa(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0xaa)
            return 0;
    return 1;
}

typedef enum { OP_DEC_MEM, OP_DEC_FD, OP_ENC, OP_TAMPERED, OP_AEAD_SEAL, OP_AEAD_OPEN, OP_COUNT } op_t;
static const char *const opname[OP_COUNT] = {"decrypt mem", "decrypt fd", "encrypt",
                                             "tampered decrypt", "aead seal", "aead open"};

static void run(op_t op, int provider, int threads, int which, long nth, int from)
{
    st_status s;
    int rc;
    const uint8_t *want;
    size_t out_len;
    memset(out, 0xaa, CIPHER);
    ERR_clear_error();
    st_pool_shutdown(); /* every run starts its helper threads anew, under the plan */
    set_plan(which, nth, from);
    switch (op) {
    case OP_DEC_MEM:
        rc = st_decrypt_span_mem(provider, key, nonce, FIRST, ciphertext, CIPHER, out, PLAIN, NULL, 0, 1,
                                 threads, &s);
        want = plaintext, out_len = PLAIN;
        break;
    case OP_DEC_FD:
        rc = st_decrypt_span_fd(provider, key, nonce, FIRST, fd, 0, CIPHER, out, PLAIN, NULL, 0, 1, threads,
                                &s);
        want = plaintext, out_len = PLAIN;
        break;
    case OP_ENC:
        rc = st_encrypt_span_mem(provider, key, nonce, FIRST, plaintext, PLAIN, out, CIPHER, NULL, 0, 1,
                                 threads, &s);
        want = ciphertext, out_len = CIPHER;
        break;
    case OP_TAMPERED:
        snap_dst = out, snap_off = (size_t)BAD_LOW * ST_CHUNK_SIZE, snapped = 0;
        rc = st_decrypt_span_mem(provider, key, nonce, FIRST, tampered, CIPHER, out, PLAIN, NULL, 0, 1,
                                 threads, &s);
        want = NULL, out_len = PLAIN;
        break;
    case OP_AEAD_SEAL:
        rc = st_aead_seal(provider, key, nonce, nonce, sizeof nonce, plaintext, 5000, out,
                          out + 5000, &s);
        want = NULL, out_len = 5000 + ST_TAG_SIZE;
        break;
    default:
        rc = st_aead_open(provider, key, nonce, nonce, sizeof nonce, aead_ct, 5000, aead_ct + 5000,
                          out, &s);
        want = plaintext, out_len = 5000;
        break;
    }
    set_plan(-1, 0, 0);
    snap_dst = NULL;
    checks++;
    const char *name = opname[op];
    if (rc != s.code)
        fail(name, provider, threads, which, nth, from, "return value != status code", &s);
    if (ERR_peek_error() != 0)
        fail(name, provider, threads, which, nth, from, "OpenSSL error queue left non-empty", &s);
    ERR_clear_error();
    if (rc == ST_OK) {
        if (op == OP_TAMPERED)
            fail(name, provider, threads, which, nth, from, "tampered span decrypted", &s);
        else if (want && memcmp(out, want, out_len) != 0)
            fail(name, provider, threads, which, nth, from, "wrong output", &s);
        if (s.chunk_index != -1)
            fail(name, provider, threads, which, nth, from, "chunk index on success", &s);
        return;
    }
    if (!all_zero(out, out_len))
        fail(name, provider, threads, which, nth, from, "destination not wiped", &s);
    if (rc != ST_E_NOMEM && rc != ST_E_PROVIDER && !(op == OP_TAMPERED && rc == ST_E_AUTH))
        fail(name, provider, threads, which, nth, from, "unexpected status", &s);
    if (op == OP_TAMPERED && rc == ST_E_AUTH && s.chunk_index != FIRST + BAD_LOW)
        fail(name, provider, threads, which, nth, from, "not the lowest failing chunk", &s);
    /* every worker decrypts into its private bounce buffer; a worker that cannot get one does
     * not decrypt at all (posix_memalign failures included) */
    if (op == OP_TAMPERED && rc == ST_E_AUTH &&
        (!snapped || !all_aa(snapshot, SNAP_LEN)))
        fail(name, provider, threads, which, nth, from,
             "unauthenticated plaintext streamed into the destination", &s);
    if (op == OP_TAMPERED && rc == ST_E_PROVIDER && s.chunk_index > FIRST + BAD_LOW)
        fail(name, provider, threads, which, nth, from, "provider failure above the tamper", &s);
    if (which < 0 && op != OP_TAMPERED)
        fail(name, provider, threads, which, nth, from, "failed without an injected fault", &s);
}

int main(int argc, char **argv)
{
    plaintext = malloc(PLAIN);
    ciphertext = malloc(CIPHER);
    tampered = malloc(CIPHER);
    out = malloc(CIPHER);
    if (!plaintext || !ciphertext || !tampered || !out)
        return 2;
    srand(11);
    for (size_t i = 0; i < PLAIN; i++)
        plaintext[i] = (uint8_t)rand();
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)rand();
    for (size_t i = 0; i < sizeof nonce; i++)
        nonce[i] = (uint8_t)rand();
    char path[] = "/tmp/sealtensors-fault-XXXXXX";
    fd = mkstemp(path);
    if (fd < 0)
        return 2;
    unlink(path);

    int providers[] = {ST_PROVIDER_IPSECMB, ST_PROVIDER_OPENSSL};
    int thread_counts[] = {1, 3, 16};
    for (size_t p = 0; p < 2; p++) {
        int provider = providers[p];
        if (argc > 1 && strcmp(argv[1], st_provider_name(provider)) != 0)
            continue;
        if (!st_provider_available(provider)) {
            printf("%s: unavailable, skipped\n", st_provider_name(provider));
            continue;
        }
        st_status s;
        if (st_encrypt_span_mem(provider, key, nonce, FIRST, plaintext, PLAIN, ciphertext, CIPHER, NULL, 0, 1,
                                1, &s) != ST_OK)
            return 3;
        if (st_aead_seal(provider, key, nonce, nonce, sizeof nonce, plaintext, 5000, aead_ct,
                         aead_ct + 5000, &s) != ST_OK)
            return 3;
        memcpy(tampered, ciphertext, CIPHER);
        tampered[(size_t)BAD_LOW * ST_ENCRYPTED_CHUNK_SIZE + 3] ^= 1;
        for (size_t c = 200; c <= CHUNKS; c++)
            tampered[c * ST_ENCRYPTED_CHUNK_SIZE + 1] ^= 4;
        if (ftruncate(fd, 0) != 0 || pwrite(fd, ciphertext, CIPHER, 0) != (ssize_t)CIPHER)
            return 2;
        for (int op = 0; op < OP_COUNT; op++)
            for (size_t t = 0; t < sizeof thread_counts / sizeof *thread_counts; t++) {
                int threads = thread_counts[t];
                if (op >= OP_AEAD_SEAL && t > 0)
                    continue;
                run((op_t)op, provider, threads, -1, 0, 0);
                for (int f = 0; f < F_COUNT; f++) {
                    for (long nth = 0; nth < 24; nth++)
                        run((op_t)op, provider, threads, f, nth, 0);
                    for (long nth = 0; nth < 4; nth++)
                        run((op_t)op, provider, threads, f, nth, 1);
                }
            }
        printf("%s: %d checks\n", st_provider_name(provider), checks);
    }
    st_pool_shutdown();
    close(fd);
    free(plaintext);
    free(ciphertext);
    free(tampered);
    free(out);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
