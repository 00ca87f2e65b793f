/*
 * Hammer the span engine's helper pool: many chunks, concurrent callers (more of them than helpers)
 * each asking for a different thread count on every call, tampered chunks (the lowest failing chunk
 * must win every time), the pread path, truncated and unreadable files, and a pool shut down and
 * rebuilt between passes, and helpers that retire after 1 ms idle (created again all the time).
 * Built and run under ThreadSanitizer by scripts/tsan_pool.sh; exits non-zero on any wrong answer.
 *
 *   pool_stress [rounds]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../sealtensors.h"

#define CHUNKS 300
#define PLAIN (CHUNKS * ST_CHUNK_SIZE + 1234)
#define CIPHER (PLAIN + (CHUNKS + 1) * ST_TAG_SIZE)
#define CALLERS 6

static uint8_t key[ST_KEY_SIZE], nonce[ST_NONCE_SIZE];
static uint8_t *plaintext, *reference;
static uint8_t reference_digests[(CHUNKS + 1) * ST_DIGEST_SIZE]; /* OpenSSL, one thread */
static int provider;
static int failures;
static pthread_mutex_t failures_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, int caller, int threads, int code, int64_t index)
{
    pthread_mutex_lock(&failures_lock);
    failures++;
    fprintf(stderr, "FAIL %s (caller %d, threads %d): code %d, chunk %lld\n", what, caller, threads,
            code, (long long)index);
    pthread_mutex_unlock(&failures_lock);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* pthread_atfork is linked from libc_nonshared.a; this definition replaces it so that registration
 * can be made to fail (ENOMEM), as it may in glibc. */
extern int __register_atfork(void (*)(void), void (*)(void), void (*)(void), void *);
extern void *__dso_handle __attribute__((__weak__, __visibility__("hidden")));
static int atfork_fails;
int pthread_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void))
{
    if (atfork_fails)
        return 12; /* ENOMEM */
    return __register_atfork(prepare, parent, child, &__dso_handle == NULL ? NULL : __dso_handle);
}

/* With no atfork handlers the engine must not keep helpers: a forked child would inherit idle
 * helpers without threads and wait for them forever. Run in a child process (the pool registers its
 * handlers once per process); returns 0 when a grandchild's parallel decrypt finished and was right. */
static int atfork_failure_check(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        atfork_fails = 1;
        uint8_t *out = malloc(PLAIN);
        st_status status;
        int ok = out && st_decrypt_span_mem(ST_PROVIDER_OPENSSL, key, nonce, 5, reference, CIPHER,
                                            out, PLAIN, NULL, 0, 1, 4, &status) == ST_OK &&
                 memcmp(out, plaintext, PLAIN) == 0;
        pid_t grandchild = fork();
        if (grandchild == 0) {
            alarm(20); /* a child waiting for helpers that do not exist dies here */
            int rc = st_decrypt_span_mem(ST_PROVIDER_OPENSSL, key, nonce, 5, reference, CIPHER, out,
                                         PLAIN, NULL, 0, 1, 4, &status);
            _exit(rc == ST_OK && memcmp(out, plaintext, PLAIN) == 0 ? 0 : 1);
        }
        int wstatus = 0;
        ok = ok && grandchild > 0 && waitpid(grandchild, &wstatus, 0) == grandchild &&
             WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
        _exit(ok ? 0 : 1);
    }
    int wstatus = 0;
    return pid > 0 && waitpid(pid, &wstatus, 0) == pid && WIFEXITED(wstatus) &&
                   WEXITSTATUS(wstatus) == 0
               ? 0
               : 1;
}

/* the truncated file holds the span's first CUT bytes */
#define CUT ((size_t)CIPHER - 7 * ST_ENCRYPTED_CHUNK_SIZE - 3)

typedef struct {
    int id;
    int rounds;
    int fd;
    int cut_fd;
} caller_arg;

static void *caller(void *arg)
{
    caller_arg *a = arg;
    uint8_t *ct = malloc(CIPHER), *out = malloc(PLAIN);
    uint8_t digests[(CHUNKS + 1) * ST_DIGEST_SIZE];
    st_status status;
    if (!ct || !out) {
        fail("malloc", a->id, 0, 0, 0);
        return NULL;
    }
    for (int round = 0; round < a->rounds; round++) {
        int threads = (round * 7 + a->id * 5) % 17; /* 0 = the default */
        /* encryption agrees with the single-threaded reference */
        int rc = st_encrypt_span_mem(provider, key, nonce, 5, plaintext, PLAIN, ct, CIPHER, NULL, 0, 1,
                                     threads, &status);
        if (rc != ST_OK || memcmp(ct, reference, CIPHER) != 0)
            fail("encrypt", a->id, threads, rc, status.chunk_index);
        /* decryption round trip */
        rc = st_decrypt_span_mem(provider, key, nonce, 5, ct, CIPHER, out, PLAIN, NULL, 0, 1, threads,
                                 &status);
        if (rc != ST_OK || memcmp(out, plaintext, PLAIN) != 0)
            fail("decrypt", a->id, threads, rc, status.chunk_index);
        /* tamper: chunk `low` and every chunk from `high` on; `low` must be reported */
        int low = (round * 37 + a->id * 11) % CHUNKS, high = low + 1 + round % 50;
        ct[(size_t)low * ST_ENCRYPTED_CHUNK_SIZE + 9] ^= 1;
        for (int c = high; c <= CHUNKS; c++)
            ct[(size_t)c * ST_ENCRYPTED_CHUNK_SIZE] ^= 2;
        memset(out, 0xaa, PLAIN);
        rc = st_decrypt_span_mem(provider, key, nonce, 5, ct, CIPHER, out, PLAIN, NULL, 0, 1, threads,
                                 &status);
        if (rc != ST_E_AUTH || status.chunk_index != 5 + low || !all_zero(out, PLAIN))
            fail("tampered decrypt", a->id, threads, rc, status.chunk_index);
        /* pread path over the untampered file */
        rc = st_decrypt_span_fd(provider, key, nonce, 5, a->fd, 100, CIPHER, out, PLAIN, NULL, 0, 1, threads,
                                &status);
        if (rc != ST_OK || memcmp(out, plaintext, PLAIN) != 0)
            fail("decrypt fd", a->id, threads, rc, status.chunk_index);
        /* a file that ends early: truncated at the chunk where data runs out */
        rc = st_decrypt_span_fd(provider, key, nonce, 5, a->cut_fd, 0, CIPHER, out, PLAIN, NULL, 0, 1,
                                threads, &status);
        if (rc != ST_E_LENGTH || status.chunk_index != (int64_t)(5 + CUT / ST_ENCRYPTED_CHUNK_SIZE) ||
            !all_zero(out, PLAIN))
            fail("truncated fd", a->id, threads, rc, status.chunk_index);
        /* an unreadable file: every batch fails to read; the first chunk is reported */
        memset(out, 0xaa, PLAIN);
        rc = st_decrypt_span_fd(provider, key, nonce, 5, -1, 0, CIPHER, out, PLAIN, NULL, 0, 1, threads,
                                &status);
        if (rc != ST_E_IO || status.chunk_index != 5 || !all_zero(out, PLAIN))
            fail("unreadable fd", a->id, threads, rc, status.chunk_index);
        /* signed: digests produced in parallel (multi-buffer with ipsec-mb) equal the reference;
         * decrypting with them works, and one wrong digest is reported at its chunk */
        rc = st_encrypt_span_mem(provider, key, nonce, 5, plaintext, PLAIN, ct, CIPHER, digests,
                                 sizeof digests, 1, threads, &status);
        if (rc != ST_OK || memcmp(digests, reference_digests, sizeof digests) != 0)
            fail("encrypt with digests", a->id, threads, rc, status.chunk_index);
        rc = st_decrypt_span_fd(provider, key, nonce, 5, a->fd, 100, CIPHER, out, PLAIN, digests,
                                sizeof digests, 1, threads, &status);
        if (rc != ST_OK || memcmp(out, plaintext, PLAIN) != 0)
            fail("decrypt fd with digests", a->id, threads, rc, status.chunk_index);
        digests[(size_t)low * ST_DIGEST_SIZE + 3] ^= 4;
        rc = st_decrypt_span_mem(provider, key, nonce, 5, reference, CIPHER, out, PLAIN, digests,
                                 sizeof digests, 1, threads, &status);
        if (rc != ST_E_DIGEST || status.chunk_index != 5 + low || !all_zero(out, PLAIN))
            fail("wrong digest", a->id, threads, rc, status.chunk_index);
        /* a span too short to split (10 chunks), between the parallel ones */
        rc = st_decrypt_span_mem(provider, key, nonce, 5, reference, 10 * ST_ENCRYPTED_CHUNK_SIZE,
                                 out, 10 * ST_CHUNK_SIZE, NULL, 0, 0, threads, &status);
        if (rc != ST_OK || memcmp(out, plaintext, 10 * ST_CHUNK_SIZE) != 0)
            fail("short span", a->id, threads, rc, status.chunk_index);
    }
    free(ct);
    free(out);
    return NULL;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 6;
    plaintext = malloc(PLAIN);
    reference = malloc(CIPHER);
    if (!plaintext || !reference)
        return 2;
    srand(7);
    for (size_t i = 0; i < PLAIN; i++)
        plaintext[i] = (uint8_t)rand();
    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)rand();
    for (size_t i = 0; i < sizeof nonce; i++)
        nonce[i] = (uint8_t)rand();

    char path[] = "/tmp/sealtensors-pool-XXXXXX", cut_path[] = "/tmp/sealtensors-pool-XXXXXX";
    int fd = mkstemp(path), cut_fd = mkstemp(cut_path);
    if (fd < 0 || cut_fd < 0)
        return 2;
    unlink(path);
    unlink(cut_path);

    st_status setup;
    if (st_encrypt_span_mem(ST_PROVIDER_OPENSSL, key, nonce, 5, plaintext, PLAIN, reference, CIPHER,
                            reference_digests, sizeof reference_digests,
                            1, 1, &setup) != ST_OK)
        return 3;
    if (atfork_failure_check() != 0) /* first: no helper thread exists yet in this process */
        fail("fork after pthread_atfork failed", -1, 4, 0, -1);

    int providers[] = {ST_PROVIDER_IPSECMB, ST_PROVIDER_OPENSSL};
    for (size_t p = 0; p < 2; p++) {
        provider = providers[p];
        if (!st_provider_available(provider)) {
            printf("%s: unavailable, skipped\n", st_provider_name(provider));
            continue;
        }
        st_status status;
        if (st_encrypt_span_mem(provider, key, nonce, 5, plaintext, PLAIN, reference, CIPHER, NULL, 0, 1, 1,
                                &status) != ST_OK)
            return 3;
        if (ftruncate(fd, 0) != 0 || pwrite(fd, "x", 1, 99) != 1 ||
            pwrite(fd, reference, CIPHER, 100) != (ssize_t)CIPHER || ftruncate(cut_fd, 0) != 0 ||
            pwrite(cut_fd, reference, CUT, 0) != (ssize_t)CUT)
            return 2;
        for (int pass = 0; pass < 2; pass++) {
            /* the second pass lets helpers retire after 1 ms idle: they exit and are created
             * again all the time, while other callers take, use and give back the rest */
            st_pool_set_idle_timeout(pass == 0 ? 0 : 1);
            pthread_t threads[CALLERS];
            caller_arg args[CALLERS];
            for (int i = 0; i < CALLERS; i++) {
                args[i] = (caller_arg){i, rounds, fd, cut_fd};
                pthread_create(&threads[i], NULL, caller, &args[i]);
            }
            for (int i = 0; i < CALLERS; i++)
                pthread_join(threads[i], NULL);
            if (pass == 1) { /* idle helpers are gone after a while, without a shutdown */
                st_pool_set_idle_timeout(20);
                for (int wait = 0; wait < 200 && st_pool_size(NULL) > 0; wait++)
                    usleep(10000);
                if (st_pool_size(NULL) != 0)
                    fail("idle helpers did not retire", -1, 0, st_pool_size(NULL), -1);
            }
            st_pool_shutdown(); /* the next pass (and provider) starts new helpers */
        }
        printf("%s (%s): %d callers x %d rounds x 2 passes done\n", st_provider_name(provider),
               st_provider_cpu_path(provider), CALLERS, rounds);
    }
    close(fd);
    close(cut_fd);
    free(plaintext);
    free(reference);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
