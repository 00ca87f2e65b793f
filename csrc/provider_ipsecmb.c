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

const st_provider_ops st_ipsecmb_ops = {
    "ipsecmb", imb_available, imb_cpu_path, imb_key_new, NULL, NULL, NULL, NULL, NULL,
};

#endif
