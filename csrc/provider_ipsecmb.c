/* AES-256-GCM through intel-ipsec-mb's direct GCM API (compiled in when ST_HAVE_IPSECMB is set).
 *
 * One IMB_MGR is allocated once per process; its function pointers are read-only after
 * init_mb_mgr_auto, so threads share it. A call expands the key once (IMB_AES256_GCM_PRE) into a
 * 64-byte aligned gcm_key_data; each chunk uses a gcm_context_data on the worker's stack. The
 * library returns the computed tag on decryption, which is compared here in constant time. */
#define _GNU_SOURCE /* posix_memalign under -std=c11 */
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "sealtensors.h"

#ifdef ST_HAVE_IPSECMB

#include <intel-ipsec-mb.h>
#include <openssl/crypto.h>
#include <pthread.h>

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static IMB_MGR *mgr;
static IMB_ARCH arch = IMB_ARCH_NONE;
static int usable;

static void init_manager(void)
{
    IMB_MGR *m = alloc_mb_mgr(0);
    if (!m)
        return;
    init_mb_mgr_auto(m, &arch);
    if (imb_get_errno(m) != 0 || arch == IMB_ARCH_NONE || arch == IMB_ARCH_NOAESNI) {
        free_mb_mgr(m); /* no AES-NI: leave AES to OpenSSL */
        return;
    }
    if ((m->features & IMB_FEATURE_SELF_TEST) && !(m->features & IMB_FEATURE_SELF_TEST_PASS)) {
        free_mb_mgr(m);
        return;
    }
    mgr = m;
    usable = 1;
}

static int imb_available(void)
{
    pthread_once(&init_once, init_manager);
    return usable;
}

static const char *imb_cpu_path(void)
{
    if (!imb_available())
        return "unavailable";
    switch (arch) {
    case IMB_ARCH_SSE:
        return "sse";
    case IMB_ARCH_AVX:
        return "avx";
    case IMB_ARCH_AVX2:
        return (mgr->features & IMB_FEATURE_VAES) ? "avx2-vaes" : "avx2";
    case IMB_ARCH_AVX512:
        return (mgr->features & IMB_FEATURE_VAES) ? "avx512-vaes" : "avx512";
    default:
        return "unknown";
    }
}

static int imb_key_new(const uint8_t *key, void **keystate, unsigned long *err)
{
    (void)err;
    void *kd = NULL;
    if (!imb_available())
        return ST_E_PROVIDER;
    if (posix_memalign(&kd, 64, sizeof(struct gcm_key_data)) != 0)
        return ST_E_NOMEM;
    IMB_AES256_GCM_PRE(mgr, key, (struct gcm_key_data *)kd);
    *keystate = kd;
    return ST_OK;
}

static void imb_key_free(void *keystate)
{
    if (keystate) {
        OPENSSL_cleanse(keystate, sizeof(struct gcm_key_data));
        free(keystate);
    }
}

static int imb_worker_new(const void *keystate, int encrypt, void **worker, unsigned long *err)
{
    (void)encrypt;
    (void)err;
    *worker = (void *)keystate; /* all per-chunk state lives on the worker's stack */
    return ST_OK;
}

static void imb_worker_free(void *worker)
{
    (void)worker;
}

static uint8_t empty_byte;

static int imb_seal(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                    const uint8_t *src, size_t len, uint8_t *dst, uint8_t *tag, unsigned long *err)
{
    (void)err;
    struct gcm_context_data ctx;
    IMB_AES256_GCM_ENC(mgr, (const struct gcm_key_data *)worker, &ctx, len ? dst : &empty_byte,
                       len ? src : &empty_byte, (uint64_t)len, nonce, aad_len ? aad : NULL,
                       (uint64_t)aad_len, tag, ST_TAG_SIZE);
    OPENSSL_cleanse(&ctx, sizeof ctx);
    return ST_OK;
}

static int imb_open(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                    const uint8_t *src, size_t len, uint8_t *dst, const uint8_t *tag,
                    unsigned long *err)
{
    (void)err;
    struct gcm_context_data ctx;
    uint8_t computed[ST_TAG_SIZE];
    IMB_AES256_GCM_DEC(mgr, (const struct gcm_key_data *)worker, &ctx, len ? dst : &empty_byte,
                       len ? src : &empty_byte, (uint64_t)len, nonce, aad_len ? aad : NULL,
                       (uint64_t)aad_len, computed, ST_TAG_SIZE);
    int ok = CRYPTO_memcmp(computed, tag, ST_TAG_SIZE) == 0;
    OPENSSL_cleanse(&ctx, sizeof ctx);
    OPENSSL_cleanse(computed, sizeof computed);
    return ok ? ST_OK : ST_E_AUTH;
}

/* ---------------------------------------------------------------- multi-buffer SHA-256 */

/* The job API keeps queued jobs inside the manager, so unlike the direct GCM calls above it needs
 * one manager per thread. Each thread allocates its own on first use (about 200 KiB, ~150 us) and
 * keeps it until it exits: engine helpers live across calls, so the cost is paid once per thread. */
#define ST_SHA256_MAX_MESSAGE 65472 /* the job API refuses plain SHA-256 messages of 64 KiB */

static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t thread_mgr_key;
static int thread_key_ok;

static void thread_mgr_free(void *m)
{
    free_mb_mgr((IMB_MGR *)m);
}

static void thread_key_create(void)
{
    thread_key_ok = pthread_key_create(&thread_mgr_key, thread_mgr_free) == 0;
}

static IMB_MGR *thread_manager(void)
{
    if (!imb_available())
        return NULL;
    pthread_once(&thread_key_once, thread_key_create);
    if (!thread_key_ok)
        return NULL;
    IMB_MGR *m = pthread_getspecific(thread_mgr_key);
    if (m)
        return m;
    m = alloc_mb_mgr(0);
    if (!m)
        return NULL;
    IMB_ARCH got = IMB_ARCH_NONE;
    init_mb_mgr_auto(m, &got);
    if (imb_get_errno(m) != 0 || got != arch ||
        ((m->features & IMB_FEATURE_SELF_TEST) && !(m->features & IMB_FEATURE_SELF_TEST_PASS)) ||
        pthread_setspecific(thread_mgr_key, m) != 0) {
        free_mb_mgr(m);
        return NULL;
    }
    return m;
}

const char *st_ipsecmb_sha256_path(void)
{
    if (!imb_available())
        return NULL;
    switch (arch) {
    case IMB_ARCH_AVX512:
        return "ipsecmb-avx512 multi-buffer";
    case IMB_ARCH_AVX2:
        return "ipsecmb-avx2 multi-buffer";
    case IMB_ARCH_AVX:
        return "ipsecmb-avx multi-buffer";
    default:
        return "ipsecmb-sse multi-buffer";
    }
}

static int completed(const IMB_JOB *job)
{
    return job->status == IMB_STATUS_COMPLETED;
}

int st_ipsecmb_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++)
        if (lens[i] > ST_SHA256_MAX_MESSAGE)
            return ST_E_ARG;
    IMB_MGR *m = thread_manager();
    if (!m)
        return ST_E_ARG;
    int ok = 1;
    IMB_JOB *job;
    for (size_t i = 0; i < n; i++) {
        job = IMB_GET_NEXT_JOB(m);
        job->cipher_mode = IMB_CIPHER_NULL;
        job->cipher_direction = IMB_DIR_ENCRYPT;
        job->chain_order = IMB_ORDER_HASH_CIPHER;
        job->hash_alg = IMB_AUTH_SHA_256;
        job->src = data[i];
        job->dst = NULL;
        job->enc_keys = NULL;
        job->dec_keys = NULL;
        job->key_len_in_bytes = 0;
        job->iv = NULL;
        job->iv_len_in_bytes = 0;
        job->cipher_start_src_offset_in_bytes = 0;
        job->msg_len_to_cipher_in_bytes = 0;
        job->hash_start_src_offset_in_bytes = 0;
        job->msg_len_to_hash_in_bytes = lens[i];
        job->auth_tag_output = out + (size_t)ST_DIGEST_SIZE * i;
        job->auth_tag_output_len_in_bytes = ST_DIGEST_SIZE;
        job = IMB_SUBMIT_JOB(m);
        while (job) {
            ok &= completed(job);
            job = IMB_GET_COMPLETED_JOB(m);
        }
    }
    while ((job = IMB_FLUSH_JOB(m)) != NULL) {
        ok &= completed(job);
        while ((job = IMB_GET_COMPLETED_JOB(m)) != NULL)
            ok &= completed(job);
    }
    return ok ? ST_OK : ST_E_PROVIDER;
}

const st_provider_ops st_ipsecmb_ops = {
    "ipsecmb",      imb_available,   imb_cpu_path, imb_key_new, imb_key_free,
    imb_worker_new, imb_worker_free, imb_seal,     imb_open,
};

#else /* !ST_HAVE_IPSECMB: the provider exists but is never available */

static int imb_available(void)
{
    return 0;
}

static const char *imb_cpu_path(void)
{
    return "not built";
}

static int imb_key_new(const uint8_t *key, void **keystate, unsigned long *err)
{
    (void)key;
    (void)keystate;
    (void)err;
    return ST_E_PROVIDER;
}

int st_ipsecmb_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)
{
    (void)data;
    (void)lens;
    (void)n;
    (void)out;
    return ST_E_ARG;
}

const char *st_ipsecmb_sha256_path(void)
{
    return NULL;
}

const st_provider_ops st_ipsecmb_ops = {
    "ipsecmb", imb_available, imb_cpu_path, imb_key_new, NULL, NULL, NULL, NULL, NULL,
};

#endif
