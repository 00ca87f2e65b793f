/*
 * The span engine: length rules, chunk nonces, work distribution over threads, error reporting.
 *
 * Threading: a call that is worth splitting (enough chunks, threads > 1) borrows up to threads-1
 * helper threads from a small resident pool and works itself as well. Batches of consecutive chunks
 * are handed out through an atomic counter. A failing chunk is recorded under a mutex only when it
 * is lower than the failure already recorded; batches that start above the recorded failure are
 * skipped. Every chunk below the final recorded failure has therefore been processed, so the
 * reported chunk is the lowest failing one whatever the thread timing. The caller waits until every
 * borrowed helper has finished its part and then reports once.
 *
 * The pool: creating threads and their scratch buffers on every call cost more than decrypting
 * a 1 MiB span, so helpers are created lazily (never more than the largest thread count a call
 * asked for, minus one) and sleep on their own condition variable between calls. A call only takes
 * helpers that are idle and never waits for one, so concurrent calls cannot deadlock: with none
 * free, the calling thread does the whole job. Helpers idle for longer than the idle timeout
 * (st_pool_set_idle_timeout, 2 s by default) exit, so the pool shrinks back to what recent calls
 * use. Key and provider state stay per call; a helper keeps
 * only its read and bounce buffers. After fork() the child has no helpers: an atfork handler
 * forgets them and the child's next parallel call starts new ones.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "checked.h"
#include "provider.h"
#include "sealtensors.h"

#ifndef ST_VERSION
#error "ST_VERSION must be defined by the build (the package version)"
#endif

/* Tuning: spans shorter than this run on the calling thread; batches hold between MIN and MAX chunks
 * (1 MiB of plaintext at 64), sized for about 8 batches per worker. pread batches are at most 8
 * chunks (a 128 KiB read buffer per helper, which stays in L2): measured on a 2-core Zen 5 VM, 1 GiB
 * in one call is the same at 8, 16, 64 or 256 chunks (0.077-0.084 s), but 16 MiB spans, as the GPU
 * staging ring and safe_open issue them, cost 0.77-0.83 ms at 8 against 1.4 ms at 64: the per-call
 * setup of large read buffers dominated. */
#define ST_MIN_PARALLEL_CHUNKS 32
#define ST_MIN_BATCH 16
#define ST_MAX_BATCH 128
#define ST_MAX_FD_BATCH 8
/* Chunks hashed side by side (signed files): two rounds of ipsec-mb's 16 AVX-512 lanes. pread
 * batches of a hashing job hold this many chunks, since a half-filled round of lanes costs as much
 * as a full one. */
#define ST_DIGEST_GROUP 32
#define ST_MAX_THREADS 256
/* Every decrypted chunk goes through the worker's private one-chunk bounce buffer and is copied
 * into the destination only after its tag verified: no thread of the caller can ever read
 * unauthenticated plaintext there, not even between a failed chunk and the final wipe. Spans of
 * this many chunks or more (2 MiB) are copied with streaming (non-temporal) stores: a span that
 * large will not stay in cache anyway, and skipping the read-for-ownership of every destination
 * line measured ~1.6x faster for ipsec-mb on a 1 GiB span. Smaller spans are copied with memcpy and
 * stay in cache for the caller. */
#define ST_STREAM_MIN_CHUNKS 128

/* ---------------------------------------------------------------- small helpers */

void st_wipe(void *ptr, size_t len)
{
    if (ptr && len)
        explicit_bzero(ptr, len);
}

int st_lock_memory(void *ptr, size_t len)
{
    return mlock(ptr, len) == 0 ? 0 : errno;
}

int st_unlock_memory(void *ptr, size_t len)
{
    return munlock(ptr, len) == 0 ? 0 : errno;
}

size_t st_key_size(void) { return ST_KEY_SIZE; }
size_t st_nonce_size(void) { return ST_NONCE_SIZE; }
size_t st_tag_size(void) { return ST_TAG_SIZE; }
size_t st_chunk_size(void) { return ST_CHUNK_SIZE; }
size_t st_digest_size(void) { return ST_DIGEST_SIZE; }
uint64_t st_max_chunks(void) { return ST_MAX_CHUNKS; }

const char *st_version(void)
{
    return ST_VERSION;
}

int st_check_version(const char *expected)
{
    return (expected && strcmp(expected, ST_VERSION) == 0) ? ST_OK : ST_E_VERSION;
}

const char *st_status_message(int code)
{
    switch (code) {
    case ST_OK: return "ok";
    case ST_E_AUTH: return "chunk failed authentication";
    case ST_E_LENGTH: return "ciphertext span has an impossible length (truncated or extended)";
    case ST_E_ARG: return "invalid argument";
    case ST_E_IO: return "read failed";
    case ST_E_NOMEM: return "out of memory";
    case ST_E_PROVIDER: return "AES provider unavailable or failed";
    case ST_E_VERSION: return "engine version mismatch";
    case ST_E_DIGEST: return "chunk does not match its expected SHA-256 digest";
    default: return "unknown status";
    }
}

static const st_provider_ops *provider_ops(int provider)
{
    switch (provider) {
    case ST_PROVIDER_IPSECMB: return &st_ipsecmb_ops;
    case ST_PROVIDER_OPENSSL: return &st_openssl_ops;
    default: return NULL;
    }
}

int st_resolve_provider(int provider)
{
    if (provider == ST_PROVIDER_AUTO) {
        if (st_ipsecmb_ops.available())
            return ST_PROVIDER_IPSECMB;
        return st_openssl_ops.available() ? ST_PROVIDER_OPENSSL : -1;
    }
    const st_provider_ops *ops = provider_ops(provider);
    return (ops && ops->available()) ? provider : -1;
}

int st_provider_available(int provider)
{
    return st_resolve_provider(provider) >= 0;
}

const char *st_provider_name(int provider)
{
    const st_provider_ops *ops = provider_ops(provider);
    return ops ? ops->name : NULL;
}

const char *st_provider_cpu_path(int provider)
{
    const st_provider_ops *ops = provider_ops(provider);
    return ops ? ops->cpu_path() : NULL;
}

const char *st_digest_path(int provider)
{
    int resolved = st_resolve_provider(provider);
    if (resolved < 0)
        return NULL;
    const char *multi = resolved == ST_PROVIDER_IPSECMB ? st_ipsecmb_sha256_path() : NULL;
    return multi ? multi : "openssl";
}

static int parse_positive(const char *text)
{
    if (!text || !*text)
        return 0;
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end || value <= 0)
        return 0;
    if (errno == ERANGE) /* more than a long holds: still a positive integer, so the cap */
        return ST_MAX_THREADS;
    if (errno)
        return 0;
    return value > ST_MAX_THREADS ? ST_MAX_THREADS : (int)value;
}

int st_default_threads(void)
{
    int from_env = parse_positive(getenv("SEALTENSORS_THREADS"));
    return from_env ? from_env : st_cpu_count();
}

int st_cpu_count(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1)
        online = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int allowed = CPU_COUNT(&set);
        if (allowed >= 1 && allowed < online)
            online = allowed;
    }
    return online > ST_MAX_THREADS ? ST_MAX_THREADS : (int)online;
}

/* ---------------------------------------------------------------- status */

static int finish(st_status *status, int code, int64_t chunk_index, unsigned long provider_error,
                  int sys_errno)
{
    if (status) {
        status->code = code;
        status->chunk_index = chunk_index;
        status->provider_error = provider_error;
        status->sys_errno = sys_errno;
    }
    return code;
}

/* ---------------------------------------------------------------- the job */

typedef struct span_job {
    const st_provider_ops *ops;
    int encrypt;
    uint8_t base_nonce[ST_NONCE_SIZE];
    uint64_t first_chunk;
    uint64_t nchunks;
    size_t last_len;     /* plaintext bytes of the span's last chunk */
    const uint8_t *src;  /* memory source, or NULL when reading from fd */
    uint8_t *dst;
    int fd;
    int64_t file_offset;
    size_t src_len;
    int stream;          /* copy authenticated chunks into dst with streaming stores */
    const uint8_t *digests; /* decrypt: expected SHA-256 per chunk of the span, or NULL */
    uint8_t *digests_out;   /* encrypt: SHA-256 per produced chunk, or NULL */
    int multi_digest;       /* hash groups of chunks with ipsec-mb's multi-buffer SHA-256 */
    uint64_t batch;
    uint64_t nbatches;
    atomic_uint_fast64_t next_batch;
    atomic_uint_fast64_t fail_at; /* relative index of the lowest failure so far; UINT64_MAX: none */
    pthread_mutex_t lock;
    int pending;         /* helpers still working on this job; guarded by the pool lock */
    int fail_code;
    unsigned long fail_provider;
    int fail_errno;
} span_job;

typedef struct worker {
    span_job *job;
    void *pstate;
    uint8_t *readbuf;
    uint8_t *bounce; /* one chunk of plaintext, private to the worker, before it is authenticated */
    EVP_MD_CTX *md;  /* when the job hashes chunks */
} worker;

/* ---------------------------------------------------------------- chunk digests */

/* SHA-256 through OpenSSL (SHA-NI / AVX2 code paths), fetched once: an implicit fetch per chunk
 * would take the provider store's lock on every call. */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    ERR_clear_error();
}

static int digest_available(void)
{
    pthread_once(&sha256_once, sha256_fetch);
    return sha256_md != NULL;
}

static int chunk_sha256(EVP_MD_CTX *md, const uint8_t *data, size_t len,
                        uint8_t out[ST_DIGEST_SIZE], unsigned long *perr)
{
    unsigned int outl = 0;
    if (EVP_DigestInit_ex2(md, sha256_md, NULL) != 1 || EVP_DigestUpdate(md, data, len) != 1 ||
        EVP_DigestFinal_ex(md, out, &outl) != 1 || outl != ST_DIGEST_SIZE) {
        *perr = ERR_get_error();
        ERR_clear_error();
        return ST_E_PROVIDER;
    }
    return ST_OK;
}

static void record_failure(span_job *job, uint64_t rel, int code, unsigned long perr, int err)
{
    pthread_mutex_lock(&job->lock);
    if (rel < atomic_load_explicit(&job->fail_at, memory_order_relaxed)) {
        atomic_store_explicit(&job->fail_at, rel, memory_order_relaxed);
        job->fail_code = code;
        job->fail_provider = perr;
        job->fail_errno = err;
    }
    pthread_mutex_unlock(&job->lock);
}

static inline void chunk_nonce(const span_job *job, uint64_t rel, uint8_t nonce[ST_NONCE_SIZE])
{
    uint64_t counter = job->first_chunk + rel;
    memcpy(nonce, job->base_nonce, ST_NONCE_SIZE);
    for (int i = 0; i < 8; i++)
        nonce[ST_NONCE_SIZE - 1 - i] ^= (uint8_t)(counter >> (8 * i));
}

static inline size_t chunk_plain_len(const span_job *job, uint64_t rel)
{
    return rel + 1 == job->nchunks ? job->last_len : ST_CHUNK_SIZE;
}

#if defined(__SSE2__)
#include <emmintrin.h>
/* Copy with non-temporal stores: the destination is written without being read into the cache
 * first (no read-for-ownership), which a large decrypt would otherwise pay for every line. */
static void stream_copy(uint8_t *dst, const uint8_t *src, size_t len)
{
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    if (head > len)
        head = len;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    len -= head;
    size_t body = len & ~(size_t)63;
    for (size_t i = 0; i < body; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
    memcpy(dst + body, src + body, len - body);
}
#define ST_HAVE_STREAM 1
#else
#define ST_HAVE_STREAM 0
#endif

/* SHA-256 of the stored chunks [lo, hi) (at most ST_DIGEST_GROUP; the first at `stored`, the
 * others ST_ENCRYPTED_CHUNK_SIZE apart) into `out`: all at once through ipsec-mb's multi-buffer
 * hashing when the job's provider is ipsec-mb, else (or when that path is missing) one by one with
 * OpenSSL. Both compute plain FIPS 180-4 SHA-256; tests compare them with each other and hashlib. */
static int digest_group(const span_job *job, worker *w, const uint8_t *stored, uint64_t lo,
                        uint64_t hi, uint8_t *out, unsigned long *perr)
{
    const uint8_t *data[ST_DIGEST_GROUP] = {0};
    size_t lens[ST_DIGEST_GROUP] = {0};
    size_t n = (size_t)(hi - lo);
    for (size_t i = 0; i < n; i++) {
        data[i] = stored + i * ST_ENCRYPTED_CHUNK_SIZE;
        lens[i] = chunk_plain_len(job, lo + i) + ST_TAG_SIZE;
    }
    if (job->multi_digest) {
        int rc = st_ipsecmb_sha256_many(data, lens, n, out);
        if (rc != ST_E_ARG)
            return rc;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = chunk_sha256(w->md, data[i], lens[i], out + i * ST_DIGEST_SIZE, perr);
        if (rc != ST_OK)
            return rc;
    }
    return ST_OK;
}

/* Decrypt chunks [lo, hi) (at most ST_DIGEST_GROUP when the job checks digests), whose ciphertext
 * starts at `ct`. With digests, every chunk of the group is hashed first and none at or above the
 * first mismatch is decrypted: the stored bytes must be what was signed before any AES work. */
static int open_group(span_job *job, worker *w, const uint8_t *ct, uint64_t lo, uint64_t hi)
{
    uint64_t stop = hi;
    int rc;
    unsigned long perr = 0;
    if (job->digests) {
        uint8_t got[ST_DIGEST_GROUP * ST_DIGEST_SIZE];
        rc = digest_group(job, w, ct, lo, hi, got, &perr);
        if (rc != ST_OK) {
            record_failure(job, lo, rc, perr, 0);
            return 0;
        }
        for (uint64_t rel = lo; rel < hi; rel++) {
            if (CRYPTO_memcmp(got + (rel - lo) * ST_DIGEST_SIZE,
                              job->digests + rel * ST_DIGEST_SIZE, ST_DIGEST_SIZE) != 0) {
                stop = rel;
                break;
            }
        }
    }
    uint8_t nonce[ST_NONCE_SIZE];
    for (uint64_t rel = lo; rel < stop; rel++) {
        if (rel >= atomic_load_explicit(&job->fail_at, memory_order_relaxed))
            return 0; /* a lower chunk already failed; nothing here can be lower */
        const uint8_t *in = ct + (rel - lo) * ST_ENCRYPTED_CHUNK_SIZE;
        uint8_t *out = job->dst + rel * ST_CHUNK_SIZE;
        size_t len = chunk_plain_len(job, rel);
        chunk_nonce(job, rel, nonce);
        rc = job->ops->open(w->pstate, nonce, NULL, 0, in, len, w->bounce, in + len, &perr);
        if (rc != ST_OK) {
            record_failure(job, rel, rc, perr, 0);
            return 0;
        }
        /* only authenticated plaintext reaches the destination */
#if ST_HAVE_STREAM
        if (job->stream)
            stream_copy(out, w->bounce, len);
        else
#endif
            memcpy(out, w->bounce, len);
    }
    if (stop < hi) {
        record_failure(job, stop, ST_E_DIGEST, 0, 0);
        return 0;
    }
    return 1;
}

/* Encrypt chunks [lo, hi) (at most ST_DIGEST_GROUP when the job records digests), then hash the
 * stored chunks produced. */
static int seal_group(span_job *job, worker *w, uint64_t lo, uint64_t hi)
{
    uint8_t nonce[ST_NONCE_SIZE];
    unsigned long perr = 0;
    int rc;
    for (uint64_t rel = lo; rel < hi; rel++) {
        if (rel >= atomic_load_explicit(&job->fail_at, memory_order_relaxed))
            return 0;
        const uint8_t *plain = job->src + rel * ST_CHUNK_SIZE;
        uint8_t *out = job->dst + rel * ST_ENCRYPTED_CHUNK_SIZE;
        size_t len = chunk_plain_len(job, rel);
        chunk_nonce(job, rel, nonce);
        rc = job->ops->seal(w->pstate, nonce, NULL, 0, plain, len, out, out + len, &perr);
        if (rc != ST_OK) {
            record_failure(job, rel, rc, perr, 0);
            return 0;
        }
    }
    if (job->digests_out) {
        rc = digest_group(job, w, job->dst + lo * ST_ENCRYPTED_CHUNK_SIZE, lo, hi,
                          job->digests_out + lo * ST_DIGEST_SIZE, &perr);
        if (rc != ST_OK) {
            record_failure(job, lo, rc, perr, 0);
            return 0;
        }
    }
    return 1;
}

/* Process chunks [lo, hi) in groups; when decrypting, their ciphertext starts at `ct` (chunk lo's
 * first byte, NULL when encrypting). Returns 0 after recording a failure, 1 when all chunks
 * succeeded. */
static int run_chunks(span_job *job, worker *w, const uint8_t *ct, uint64_t lo, uint64_t hi)
{
    for (uint64_t g = lo; g < hi; g += ST_DIGEST_GROUP) {
        uint64_t ghi = hi - g > ST_DIGEST_GROUP ? g + ST_DIGEST_GROUP : hi;
        int ok = job->encrypt ? seal_group(job, w, g, ghi)
                              : open_group(job, w, ct + (g - lo) * ST_ENCRYPTED_CHUNK_SIZE, g, ghi);
        if (!ok)
            return 0;
    }
    return 1;
}

/* Read [want] bytes at `offset`; returns bytes read (short only at end of file) or -1 (errno). */
static ssize_t pread_full(int fd, uint8_t *buf, size_t want, int64_t offset)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(offset + (int64_t)got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static void run_batch(span_job *job, worker *w, uint64_t b)
{
    uint64_t lo = b * job->batch;
    uint64_t hi = lo + job->batch < job->nchunks ? lo + job->batch : job->nchunks;
    if (job->encrypt) {
        run_chunks(job, w, NULL, lo, hi);
        return;
    }
    if (job->src) {
        run_chunks(job, w, job->src + lo * ST_ENCRYPTED_CHUNK_SIZE, lo, hi);
        return;
    }
    /* fd source: this batch's ciphertext, the last chunk possibly short (the final chunk) */
    size_t start = (size_t)lo * ST_ENCRYPTED_CHUNK_SIZE;
    size_t end = (size_t)hi * ST_ENCRYPTED_CHUNK_SIZE;
    if (end > job->src_len)
        end = job->src_len;
    ssize_t got = pread_full(job->fd, w->readbuf, end - start, job->file_offset + (int64_t)start);
    if (got < 0) {
        record_failure(job, lo, ST_E_IO, 0, errno);
        return;
    }
    if ((size_t)got < end - start) {
        /* the file ended early: whole chunks that arrived are authenticated first (lowest wins) */
        uint64_t whole = (uint64_t)got / ST_ENCRYPTED_CHUNK_SIZE;
        if (run_chunks(job, w, w->readbuf, lo, lo + whole))
            record_failure(job, lo + whole, ST_E_LENGTH, 0, 0);
        return;
    }
    run_chunks(job, w, w->readbuf, lo, hi);
}

static void work(worker *w)
{
    span_job *job = w->job;
    for (;;) {
        uint64_t b = atomic_fetch_add_explicit(&job->next_batch, 1, memory_order_relaxed);
        if (b >= job->nbatches)
            break;
        if (b * job->batch >= atomic_load_explicit(&job->fail_at, memory_order_relaxed))
            continue; /* wholly above a recorded failure */
        run_batch(job, w, b);
    }
#if ST_HAVE_STREAM
    _mm_sfence(); /* streaming stores are visible before the caller is told this part is done */
#endif
}

/* ---------------------------------------------------------------- the helper pool */

#define ST_READBUF_LEN ((size_t)ST_DIGEST_GROUP * ST_ENCRYPTED_CHUNK_SIZE)

typedef struct helper {
    pthread_t thread;
    pthread_cond_t wake; /* on CLOCK_MONOTONIC, for the idle timeout */
    worker *task;    /* this call's part, set by the caller; NULL again once it is done */
    int quit;        /* st_pool_shutdown */
    int on_idle;     /* on the idle stack (and so free to retire once idle long enough) */
    uint8_t *readbuf; /* scratch kept across calls (ST_READBUF_LEN bytes), or NULL */
    uint8_t *bounce;  /* one chunk, 64-byte aligned, wiped after every call; or NULL */
} helper;

/* Every helper is listed in `all` (so the memory stays reachable for leak checkers); the idle ones
 * are also on the `idle` stack. One lock guards the lists, every helper's `task`/`quit`/`on_idle`,
 * `creating`, `idle_ms` and every job's `pending`; it is never held while chunks are processed nor
 * while threads are created.
 *
 * Shrinking: a helper that stays on the idle stack for `idle_ms` takes itself off the lists, detaches
 * and exits, freeing its buffers. The stack is LIFO, so calls keep reusing the helpers that came back
 * last and the ones beyond what recent calls asked for are the ones that time out: a single call
 * with threads=256 no longer leaves 255 helpers (and their 144 KiB of buffers and their stacks)
 * behind for the life of the process. */
#define ST_POOL_IDLE_MS_DEFAULT 2000
static struct {
    pthread_mutex_t lock;
    pthread_cond_t done; /* some helper finished its part of some job */
    int count, nidle;
    int creating; /* helpers being created outside the lock, counted against the cap */
    unsigned idle_ms; /* 0: helpers never retire */
    helper *all[ST_MAX_THREADS - 1];
    helper *idle[ST_MAX_THREADS - 1];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, ST_POOL_IDLE_MS_DEFAULT,
          {0}, {0}};

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void helper_free(helper *h)
{
    free(h->readbuf);
    if (h->bounce)
        st_wipe(h->bounce, ST_CHUNK_SIZE);
    free(h->bounce);
    free(h);
}

/* Take an idle helper off both lists (under the lock). */
static void pool_forget(helper *h)
{
    for (int i = 0; i < pool.nidle; i++) {
        if (pool.idle[i] == h) { /* keep the stack's order: the top stays the most recent */
            memmove(&pool.idle[i], &pool.idle[i + 1], (size_t)(pool.nidle - i - 1) * sizeof h);
            pool.nidle--;
            break;
        }
    }
    for (int i = 0; i < pool.count; i++) {
        if (pool.all[i] == h) {
            pool.all[i] = pool.all[--pool.count];
            break;
        }
    }
}

static struct timespec idle_deadline(unsigned ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static void *helper_main(void *arg)
{
    helper *h = arg;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        struct timespec deadline;
        int timing = 0;
        unsigned timing_ms = 0;
        while (!h->task && !h->quit) {
            if (!h->on_idle || pool.idle_ms == 0) { /* taken by a caller, or no timeout */
                timing = 0;
                pthread_cond_wait(&h->wake, &pool.lock);
                continue;
            }
            if (!timing || timing_ms != pool.idle_ms) { /* spurious wakes keep the deadline */
                deadline = idle_deadline(pool.idle_ms);
                timing_ms = pool.idle_ms;
                timing = 1;
            }
            if (pthread_cond_timedwait(&h->wake, &pool.lock, &deadline) == ETIMEDOUT &&
                !h->task && !h->quit && h->on_idle) {
                /* idle too long: retire. Off the lists, no caller can take it any more. */
                pool_forget(h);
                pthread_mutex_unlock(&pool.lock);
                pthread_detach(pthread_self());
                pthread_cond_destroy(&h->wake);
                helper_free(h);
                return NULL;
            }
        }
        if (!h->task)
            break;
        worker *w = h->task;
        pthread_mutex_unlock(&pool.lock);
        work(w);
        if (w->bounce) /* it may hold plaintext that failed authentication */
            st_wipe(w->bounce, ST_CHUNK_SIZE);
        pthread_mutex_lock(&pool.lock);
        /* the last access to the job: after this the caller may return */
        if (--w->job->pending == 0)
            pthread_cond_broadcast(&pool.done);
        h->task = NULL;
        h->on_idle = 1;
        pool.idle[pool.nidle++] = h;
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* fork() holds the lock so that the child copies a consistent pool; the child then drops the
 * helpers, whose threads exist only in the parent (glibc has reset malloc's locks by now). Helpers
 * another thread was creating at the time are not listed yet and do not exist in the child. */
static void pool_fork_prepare(void) { pthread_mutex_lock(&pool.lock); }
static void pool_fork_parent(void) { pthread_mutex_unlock(&pool.lock); }
static void pool_fork_child(void)
{
    for (int i = 0; i < pool.count; i++)
        helper_free(pool.all[i]); /* no pthread_cond_destroy: waiters of the parent are counted */
    pool.count = pool.nidle = pool.creating = 0;
    pool.done = (pthread_cond_t)PTHREAD_COND_INITIALIZER;
    pthread_mutex_unlock(&pool.lock);
}

/* Without the handlers a forked child would inherit idle helpers that have no thread and wait for
 * them forever: if they cannot be registered (ENOMEM), there is no pool and calls run on the
 * calling thread alone. Written once under pool_once; read after pthread_once. */
static int pool_enabled;

static void pool_init(void)
{
    pool_enabled = pthread_atfork(pool_fork_prepare, pool_fork_parent, pool_fork_child) == 0;
}

/* A new helper with no task yet and not idle (only its creator knows it), or NULL. Called without
 * the pool lock: pthread_create takes glibc's own locks, and holding ours meanwhile would order
 * them against fork()'s prepare handler. */
static helper *helper_new(void)
{
    helper *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        free(h);
        return NULL;
    }
    int ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&h->wake, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!ok) {
        free(h);
        return NULL;
    }
    /* Helpers block every signal so that signals keep reaching the threads that expect them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&h->thread, NULL, helper_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&h->wake);
        free(h);
        return NULL;
    }
    return h;
}

/* Take up to `want` helpers for one call: idle ones first (the most recently used on top), then
 * new ones while the pool (with the helpers other calls are creating) is smaller than `want`.
 * Never waits for a busy helper. Returns how many were taken (into `got`). */
static int pool_take(helper **got, int want)
{
    pthread_once(&pool_once, pool_init);
    if (!pool_enabled)
        return 0;
    pthread_mutex_lock(&pool.lock);
    int n = 0;
    while (n < want && pool.nidle > 0) {
        helper *h = pool.idle[--pool.nidle];
        h->on_idle = 0;
        got[n++] = h;
    }
    int create = want - n;
    int room = want - pool.count - pool.creating;
    if (create > room)
        create = room > 0 ? room : 0;
    pool.creating += create;
    pthread_mutex_unlock(&pool.lock);
    if (create == 0)
        return n;

    int made = 0;
    while (made < create && (got[n + made] = helper_new()) != NULL)
        made++; /* on failure go on with fewer helpers */
    pthread_mutex_lock(&pool.lock);
    pool.creating -= create;
    for (int i = 0; i < made; i++)
        pool.all[pool.count++] = got[n + i];
    pthread_mutex_unlock(&pool.lock);
    return n + made;
}

static void pool_give_back(helper **h, int n)
{
    if (n <= 0)
        return;
    pthread_mutex_lock(&pool.lock);
    for (int i = 0; i < n; i++) {
        h[i]->on_idle = 1;
        pool.idle[pool.nidle++] = h[i];
    }
    pthread_mutex_unlock(&pool.lock);
}

void st_pool_set_idle_timeout(unsigned milliseconds)
{
    pthread_mutex_lock(&pool.lock);
    pool.idle_ms = milliseconds;
    for (int i = 0; i < pool.nidle; i++) /* idle helpers count the new timeout from now */
        pthread_cond_signal(&pool.idle[i]->wake);
    pthread_mutex_unlock(&pool.lock);
}

int st_pool_size(int *idle)
{
    pthread_mutex_lock(&pool.lock);
    int count = pool.count;
    if (idle)
        *idle = pool.nidle;
    pthread_mutex_unlock(&pool.lock);
    return count;
}

void st_pool_shutdown(void)
{
    pthread_mutex_lock(&pool.lock);
    int count = pool.count;
    helper *all[ST_MAX_THREADS - 1];
    memcpy(all, pool.all, (size_t)count * sizeof *all);
    for (int i = 0; i < count; i++) {
        all[i]->quit = 1;
        pthread_cond_signal(&all[i]->wake);
    }
    pool.count = pool.nidle = 0;
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < count; i++) {
        pthread_join(all[i]->thread, NULL);
        pthread_cond_destroy(&all[i]->wake);
        helper_free(all[i]);
    }
}

/* ---------------------------------------------------------------- running a job */

static int resolve_threads(int threads)
{
    if (threads <= 0)
        threads = st_default_threads();
    return threads > ST_MAX_THREADS ? ST_MAX_THREADS : threads;
}

/* One chunk, 64-byte aligned, into *out; 0 when out of memory (*out untouched). */
static int bounce_new(uint8_t **out)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, ST_CHUNK_SIZE) != 0)
        return 0;
    *out = p;
    return 1;
}

/* Free what the calling thread's worker holds (any field may still be NULL). */
static void worker_release(const span_job *job, worker *w)
{
    if (w->pstate)
        job->ops->worker_free(w->pstate);
    EVP_MD_CTX_free(w->md);
    free(w->readbuf);
    if (w->bounce) {
        st_wipe(w->bounce, ST_CHUNK_SIZE);
        free(w->bounce);
    }
}

/* Run the job; returns ST_OK or the code of the lowest failure (details in *status). */
static int run_job(span_job *job, int provider, const uint8_t *key, int threads, st_status *status)
{
    int resolved = st_resolve_provider(provider);
    if (resolved < 0)
        return finish(status, ST_E_PROVIDER, -1, 0, 0);
    job->ops = provider_ops(resolved);
    job->stream = ST_HAVE_STREAM && !job->encrypt && job->nchunks >= ST_STREAM_MIN_CHUNKS;

    threads = resolve_threads(threads);
    uint64_t n = job->nchunks;
    int hashing = job->digests || job->digests_out;
    job->multi_digest = hashing && resolved == ST_PROVIDER_IPSECMB;
    uint64_t max_batch = job->src || job->encrypt ? ST_MAX_BATCH
                         : hashing                ? ST_DIGEST_GROUP
                                                  : ST_MAX_FD_BATCH;
    uint64_t batch;
    int nworkers = 1;
    if (threads > 1 && n >= ST_MIN_PARALLEL_CHUNKS) {
        batch = (n + (uint64_t)threads * 8 - 1) / ((uint64_t)threads * 8);
        if (batch < ST_MIN_BATCH)
            batch = ST_MIN_BATCH;
        if (batch > max_batch)
            batch = max_batch;
        uint64_t nbatches = (n + batch - 1) / batch;
        nworkers = nbatches < (uint64_t)threads ? (int)nbatches : threads;
    } else {
        batch = max_batch;
    }
    job->batch = batch;
    job->nbatches = (n + batch - 1) / batch;
    atomic_init(&job->next_batch, 0);
    atomic_init(&job->fail_at, UINT64_MAX);
    job->fail_code = ST_OK;
    job->fail_provider = 0;
    job->fail_errno = 0;
    job->pending = 0;
    int need_readbuf = !job->src && !job->encrypt;
    if (hashing && !digest_available())
        return finish(status, ST_E_PROVIDER, -1, 0, 0);

    unsigned long perr = 0;
    void *keystate = NULL;
    int rc = job->ops->key_new(key, &keystate, &perr);
    if (rc != ST_OK)
        return finish(status, rc, -1, perr, 0);

    /* workers[0] is the calling thread, with its own per-call buffers */
    worker *workers = calloc((size_t)nworkers, sizeof *workers);
    helper **helpers = nworkers > 1 ? calloc((size_t)nworkers - 1, sizeof *helpers) : NULL;
    if (!workers || (nworkers > 1 && !helpers)) {
        free(workers);
        free(helpers);
        job->ops->key_free(keystate);
        return finish(status, ST_E_NOMEM, -1, 0, 0);
    }
    worker *self = &workers[0];
    self->job = job;
    rc = job->ops->worker_new(keystate, job->encrypt, &self->pstate, &perr);
    if (rc != ST_OK)
        self->pstate = NULL;
    /* no bounce buffer, no decryption: never decrypt into the destination in place */
    else if ((need_readbuf && !(self->readbuf = malloc((size_t)batch * ST_ENCRYPTED_CHUNK_SIZE))) ||
             (!job->encrypt && !bounce_new(&self->bounce)) ||
             (hashing && !(self->md = EVP_MD_CTX_new())) ||
             pthread_mutex_init(&job->lock, NULL) != 0) {
        worker_release(job, self);
        rc = ST_E_NOMEM;
    }
    if (rc != ST_OK) {
        free(workers);
        free(helpers);
        job->ops->key_free(keystate);
        return finish(status, rc, -1, perr, 0);
    }

    /* Borrow helpers and give each its per-call provider state and its cached buffers; if
     * resources run out, go on with the ones that are ready and give the rest back. */
    int taken = nworkers > 1 ? pool_take(helpers, nworkers - 1) : 0;
    int ready = 0;
    for (; ready < taken; ready++) {
        helper *h = helpers[ready];
        worker *w = &workers[1 + ready];
        w->job = job;
        if (need_readbuf && !h->readbuf && !(h->readbuf = malloc(ST_READBUF_LEN)))
            break;
        if (!job->encrypt && !h->bounce && !bounce_new(&h->bounce))
            break; /* this helper sits this call out; the next one tries again */
        if (hashing && !(w->md = EVP_MD_CTX_new()))
            break;
        if (job->ops->worker_new(keystate, job->encrypt, &w->pstate, &perr) != ST_OK) {
            EVP_MD_CTX_free(w->md);
            w->md = NULL;
            break;
        }
        w->readbuf = need_readbuf ? h->readbuf : NULL;
        w->bounce = job->encrypt ? NULL : h->bounce;
    }
    if (taken > ready) /* helpers may be NULL when none was asked for: no pointer arithmetic then */
        pool_give_back(helpers + ready, taken - ready);
    if (ready > 0) {
        pthread_mutex_lock(&pool.lock);
        job->pending = ready;
        for (int i = 0; i < ready; i++) {
            helpers[i]->task = &workers[1 + i];
            pthread_cond_signal(&helpers[i]->wake);
        }
        pthread_mutex_unlock(&pool.lock);
    }
    work(self); /* the caller works too, so the job finishes even without helpers */
    if (ready > 0) {
        /* no helper touches this job (on this stack) or its buffers once pending is 0 */
        pthread_mutex_lock(&pool.lock);
        while (job->pending > 0)
            pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }

    worker_release(job, self);
    for (int i = 1; i <= ready; i++) { /* the read and bounce buffers stay with the helper */
        job->ops->worker_free(workers[i].pstate);
        EVP_MD_CTX_free(workers[i].md);
    }
    free(workers);
    free(helpers);
    job->ops->key_free(keystate);
    pthread_mutex_destroy(&job->lock);

    uint64_t failed = atomic_load(&job->fail_at);
    if (failed == UINT64_MAX)
        return finish(status, ST_OK, -1, 0, 0);
    return finish(status, job->fail_code, (int64_t)(job->first_chunk + failed), job->fail_provider,
                  job->fail_errno);
}

/* ---------------------------------------------------------------- length rules */

/* The plaintext length of a ciphertext span, as _engine_api.span_plaintext_length; 0 if impossible. */
static int span_plaintext_length(size_t ct_len, int final, size_t *plain)
{
    size_t full = ct_len / ST_ENCRYPTED_CHUNK_SIZE;
    size_t rem = ct_len % ST_ENCRYPTED_CHUNK_SIZE;
    if (final) {
        if (rem < ST_TAG_SIZE)
            return 0;
        *plain = ct_len - (full + 1) * ST_TAG_SIZE;
        return 1;
    }
    if (rem)
        return 0;
    *plain = full * ST_CHUNK_SIZE;
    return 1;
}

static int counter_range_ok(uint64_t first_chunk, uint64_t count)
{
    uint64_t end;
    return st_add_u64(first_chunk, count, &end) && end <= ST_MAX_CHUNKS;
}

static int ranges_overlap(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    return alen && blen && a0 < b0 + blen && b0 < a0 + alen;
}

/* Whether a digest array fits a span of `count` chunks: none (NULL, 0) or exactly 32 per chunk. */
static int digests_fit(const uint8_t *digests, size_t digests_len, uint64_t count)
{
    uint64_t want;
    if (!digests)
        return digests_len == 0;
    return st_mul_u64(count, ST_DIGEST_SIZE, &want) && want == digests_len;
}

static int decrypt_common(span_job *job, int provider, const uint8_t *key, const uint8_t *base_nonce,
                          uint64_t first_chunk, size_t src_len, uint8_t *dst, size_t dst_len,
                          const uint8_t *digests, size_t digests_len, int final, int threads,
                          st_status *status)
{
    if (!key || !base_nonce || (dst_len && !dst) || threads < 0 || (!digests && digests_len) ||
        ranges_overlap(digests, digests_len, dst, dst_len))
        return finish(status, ST_E_ARG, -1, 0, 0);
    size_t plain;
    if (!span_plaintext_length(src_len, final, &plain)) {
        uint64_t at = first_chunk + src_len / ST_ENCRYPTED_CHUNK_SIZE;
        st_wipe(dst, dst_len);
        return finish(status, ST_E_LENGTH, at > INT64_MAX ? INT64_MAX : (int64_t)at, 0, 0);
    }
    if (dst_len != plain)
        return finish(status, ST_E_ARG, -1, 0, 0);
    uint64_t count = plain / ST_CHUNK_SIZE + (final ? 1 : 0);
    if (!counter_range_ok(first_chunk, count) || !digests_fit(digests, digests_len, count))
        return finish(status, ST_E_ARG, -1, 0, 0);
    if (count == 0)
        return finish(status, ST_OK, -1, 0, 0);

    job->encrypt = 0;
    job->digests = digests;
    memcpy(job->base_nonce, base_nonce, ST_NONCE_SIZE);
    job->first_chunk = first_chunk;
    job->nchunks = count;
    job->last_len = final ? plain % ST_CHUNK_SIZE : ST_CHUNK_SIZE;
    job->dst = dst;
    job->src_len = src_len;
    int rc;
    uint64_t end;
    if (!job->src && (job->file_offset < 0 ||
                      !st_add_u64((uint64_t)job->file_offset, src_len, &end) || end > INT64_MAX))
        rc = finish(status, ST_E_IO, (int64_t)first_chunk, 0, EINVAL); /* as pread would fail */
    else
        rc = run_job(job, provider, key, threads, status);
    st_wipe(job->base_nonce, ST_NONCE_SIZE);
    if (rc != ST_OK)
        st_wipe(dst, dst_len); /* no unauthenticated plaintext escapes */
    return rc;
}

int st_decrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, const uint8_t *digests, size_t digests_len, int final,
                        int threads, st_status *status)
{
    span_job job;
    memset(&job, 0, sizeof job);
    if ((src_len && !src) || ranges_overlap(src, src_len, dst, dst_len))
        return finish(status, ST_E_ARG, -1, 0, 0);
    job.src = src ? src : (const uint8_t *)"";
    job.fd = -1;
    return decrypt_common(&job, provider, key, base_nonce, first_chunk, src_len, dst, dst_len,
                          digests, digests_len, final, threads, status);
}

int st_decrypt_span_fd(int provider, const uint8_t *key, const uint8_t *base_nonce,
                       uint64_t first_chunk, int fd, int64_t file_offset, size_t src_len,
                       uint8_t *dst, size_t dst_len, const uint8_t *digests, size_t digests_len,
                       int final, int threads, st_status *status)
{
    span_job job;
    memset(&job, 0, sizeof job);
    job.src = NULL;
    job.fd = fd;
    job.file_offset = file_offset;
    return decrypt_common(&job, provider, key, base_nonce, first_chunk, src_len, dst, dst_len,
                          digests, digests_len, final, threads, status);
}

int st_encrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, uint8_t *digests_out, size_t digests_len, int final,
                        int threads, st_status *status)
{
    if (!key || !base_nonce || (src_len && !src) || (dst_len && !dst) || threads < 0 ||
        ranges_overlap(src, src_len, dst, dst_len) || (!digests_out && digests_len) ||
        ranges_overlap(digests_out, digests_len, src, src_len) ||
        ranges_overlap(digests_out, digests_len, dst, dst_len))
        return finish(status, ST_E_ARG, -1, 0, 0);
    if (!final && src_len % ST_CHUNK_SIZE)
        return finish(status, ST_E_ARG, -1, 0, 0);
    uint64_t count = src_len / ST_CHUNK_SIZE + (final ? 1 : 0);
    uint64_t tags, expected;
    if (!st_mul_u64(count, ST_TAG_SIZE, &tags) || !st_add_u64(src_len, tags, &expected) ||
        expected != dst_len)
        return finish(status, ST_E_ARG, -1, 0, 0);
    if (!counter_range_ok(first_chunk, count) || !digests_fit(digests_out, digests_len, count))
        return finish(status, ST_E_ARG, -1, 0, 0);
    if (count == 0)
        return finish(status, ST_OK, -1, 0, 0);

    span_job job;
    memset(&job, 0, sizeof job);
    job.encrypt = 1;
    memcpy(job.base_nonce, base_nonce, ST_NONCE_SIZE);
    job.first_chunk = first_chunk;
    job.nchunks = count;
    job.last_len = final ? src_len % ST_CHUNK_SIZE : ST_CHUNK_SIZE;
    job.src = src ? src : (const uint8_t *)"";
    job.dst = dst;
    job.fd = -1;
    job.src_len = src_len;
    job.digests_out = digests_out;
    int rc = run_job(&job, provider, key, threads, status);
    st_wipe(job.base_nonce, ST_NONCE_SIZE);
    if (rc != ST_OK) {
        st_wipe(dst, dst_len);
        st_wipe(digests_out, digests_len);
    }
    return rc;
}

/* ---------------------------------------------------------------- single messages */

/* NIST SP 800-38D: at most 2^39 - 256 bits of plaintext and 2^64 - 1 bits of AAD per message. */
#define ST_GCM_MAX_TEXT ((UINT64_C(1) << 36) - 32)
#define ST_GCM_MAX_AAD ((UINT64_C(1) << 61) - 1)

static int aead_lengths_ok(size_t aad_len, size_t text_len)
{
    return (uint64_t)text_len <= ST_GCM_MAX_TEXT && (uint64_t)aad_len <= ST_GCM_MAX_AAD;
}

/* One message on the calling thread: key state, one worker, one seal/open. */
static int aead_run(int provider, int encrypt, const uint8_t *key, const uint8_t *nonce,
                    const uint8_t *aad, size_t aad_len, const uint8_t *src, size_t len,
                    uint8_t *dst, uint8_t *tag_out, const uint8_t *tag_in, st_status *status)
{
    int resolved = st_resolve_provider(provider);
    if (resolved < 0)
        return finish(status, ST_E_PROVIDER, -1, 0, 0);
    const st_provider_ops *ops = provider_ops(resolved);
    unsigned long perr = 0;
    void *keystate = NULL, *w = NULL;
    int rc = ops->key_new(key, &keystate, &perr);
    if (rc != ST_OK)
        return finish(status, rc, -1, perr, 0);
    /* Decryption goes through a private buffer, copied out once the tag verified: the caller's
     * other threads never see unauthenticated plaintext in `dst`. */
    uint8_t *plain = NULL;
    if (rc == ST_OK && !encrypt && !(plain = malloc(len ? len : 1)))
        rc = ST_E_NOMEM;
    if (rc == ST_OK)
        rc = ops->worker_new(keystate, encrypt, &w, &perr);
    if (rc == ST_OK) {
        if (encrypt)
            rc = ops->seal(w, nonce, aad_len ? aad : NULL, aad_len, src, len, dst, tag_out, &perr);
        else
            rc = ops->open(w, nonce, aad_len ? aad : NULL, aad_len, src, len, plain, tag_in, &perr);
        ops->worker_free(w);
    }
    if (plain) {
        if (rc == ST_OK && len)
            memcpy(dst, plain, len);
        st_wipe(plain, len);
        free(plain);
    }
    ops->key_free(keystate);
    return finish(status, rc, -1, rc == ST_E_PROVIDER ? perr : 0, 0);
}

int st_aead_seal(int provider, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                 size_t aad_len, const uint8_t *plaintext, size_t pt_len, uint8_t *ciphertext_out,
                 uint8_t *tag_out, st_status *status)
{
    if (!key || !nonce || !tag_out || (aad_len && !aad) ||
        (pt_len && (!plaintext || !ciphertext_out)) || !aead_lengths_ok(aad_len, pt_len) ||
        ranges_overlap(ciphertext_out, pt_len, plaintext, pt_len) ||
        ranges_overlap(ciphertext_out, pt_len, aad, aad_len) ||
        ranges_overlap(ciphertext_out, pt_len, tag_out, ST_TAG_SIZE) ||
        ranges_overlap(tag_out, ST_TAG_SIZE, plaintext, pt_len) ||
        ranges_overlap(tag_out, ST_TAG_SIZE, aad, aad_len))
        return finish(status, ST_E_ARG, -1, 0, 0);
    int rc = aead_run(provider, 1, key, nonce, aad, aad_len, plaintext, pt_len, ciphertext_out,
                      tag_out, NULL, status);
    if (rc != ST_OK) {
        st_wipe(ciphertext_out, pt_len);
        st_wipe(tag_out, ST_TAG_SIZE);
    }
    return rc;
}

int st_aead_open(int provider, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                 size_t aad_len, const uint8_t *ciphertext, size_t ct_len, const uint8_t *tag,
                 uint8_t *plaintext_out, st_status *status)
{
    if (!key || !nonce || !tag || (aad_len && !aad) ||
        (ct_len && (!ciphertext || !plaintext_out)) || !aead_lengths_ok(aad_len, ct_len) ||
        ranges_overlap(plaintext_out, ct_len, ciphertext, ct_len) ||
        ranges_overlap(plaintext_out, ct_len, aad, aad_len) ||
        ranges_overlap(plaintext_out, ct_len, tag, ST_TAG_SIZE))
        return finish(status, ST_E_ARG, -1, 0, 0);
    int rc = aead_run(provider, 0, key, nonce, aad, aad_len, ciphertext, ct_len, plaintext_out,
                      NULL, tag, status);
    if (rc != ST_OK)
        st_wipe(plaintext_out, ct_len); /* no unauthenticated plaintext escapes */
    return rc;
}
