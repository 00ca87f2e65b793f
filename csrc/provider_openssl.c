/* AES-256-GCM through OpenSSL EVP: one EVP_CIPHER_CTX per worker, re-initialised per message
 * (chunk) with only the IV, so the key schedule is computed once per worker. AAD goes in through
 * EVP_CipherUpdate with a NULL output before the ciphertext. */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "sealtensors.h"

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int probe_ok;

static void probe(void)
{
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    probe_ok = cipher != NULL;
    EVP_CIPHER_free(cipher);
    ERR_clear_error();
}

static int ossl_available(void)
{
    pthread_once(&probe_once, probe);
    return probe_ok;
}

/* CPUID leaf 1 (AES-NI, PCLMULQDQ) and leaf 7 (AVX-512F, VAES) read directly: clang 14 rejects
 * __builtin_cpu_supports("vaes"), which made the sanitizer/libFuzzer build of this file fail. */
static const char *ossl_cpu_path(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_AES) && (c & bit_PCLMUL)) {
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 16)) && (c & (1u << 9)))
            return "aesni-clmul (cpu has avx512+vaes)";
        return "aesni-clmul";
    }
#endif
    return "generic";
}

/* Take the thread's first OpenSSL error and leave its queue empty for other users of libcrypto. */
static int provider_failure(unsigned long *err)
{
    unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (err)
        *err = code;
    return ST_E_PROVIDER;
}

static int ossl_key_new(const uint8_t *key, void **keystate, unsigned long *err)
{
    (void)err;
    uint8_t *copy = malloc(ST_KEY_SIZE);
    if (!copy)
        return ST_E_NOMEM;
    memcpy(copy, key, ST_KEY_SIZE);
    *keystate = copy;
    return ST_OK;
}

static void ossl_key_free(void *keystate)
{
    if (keystate) {
        OPENSSL_cleanse(keystate, ST_KEY_SIZE);
        free(keystate);
    }
}

static int ossl_worker_new(const void *keystate, int encrypt, void **worker, unsigned long *err)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return ST_E_NOMEM;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, keystate, NULL, encrypt ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, ST_NONCE_SIZE, NULL) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return provider_failure(err);
    }
    *worker = ctx;
    return ST_OK;
}

static void ossl_worker_free(void *worker)
{
    EVP_CIPHER_CTX_free(worker); /* also cleanses the key schedule */
}

/* OpenSSL takes int lengths: feed `len` bytes in pieces of at most 1 GiB. `out` NULL: the bytes are
 * AAD (all of it must come before the first ciphertext byte, which the callers below respect). */
#define ST_OSSL_PIECE ((size_t)1 << 30)

static int ossl_update(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, size_t len,
                       unsigned long *err)
{
    while (len) {
        size_t n = len < ST_OSSL_PIECE ? len : ST_OSSL_PIECE;
        int outl = 0;
        if (EVP_CipherUpdate(ctx, out, &outl, in, (int)n) != 1)
            return provider_failure(err);
        if (out) {
            if (outl < 0 || (size_t)outl != n) /* GCM is a stream mode: all bytes come out */
                return ST_E_PROVIDER;
            out += n;
        }
        in += n;
        len -= n;
    }
    return ST_OK;
}

static int ossl_seal(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                     const uint8_t *src, size_t len, uint8_t *dst, uint8_t *tag,
                     unsigned long *err)
{
    EVP_CIPHER_CTX *ctx = worker;
    int outl = 0;
    uint8_t tail[16];
    int rc;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1) != 1)
        return provider_failure(err);
    if ((rc = ossl_update(ctx, NULL, aad, aad_len, err)) != ST_OK ||
        (rc = ossl_update(ctx, dst, src, len, err)) != ST_OK)
        return rc;
    if (EVP_EncryptFinal_ex(ctx, tail, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ST_TAG_SIZE, tag) != 1)
        return provider_failure(err);
    return ST_OK;
}

static int ossl_open(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                     const uint8_t *src, size_t len, uint8_t *dst, const uint8_t *tag,
                     unsigned long *err)
{
    EVP_CIPHER_CTX *ctx = worker;
    int outl = 0;
    uint8_t tail[16];
    uint8_t expected[ST_TAG_SIZE];
    int rc;
    memcpy(expected, tag, ST_TAG_SIZE);
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0) != 1)
        return provider_failure(err);
    if ((rc = ossl_update(ctx, NULL, aad, aad_len, err)) != ST_OK ||
        (rc = ossl_update(ctx, dst, src, len, err)) != ST_OK)
        return rc;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ST_TAG_SIZE, expected) != 1)
        return provider_failure(err);
    /* OpenSSL compares the tag in constant time (CRYPTO_memcmp); 0 here means it did not match. */
    if (EVP_DecryptFinal_ex(ctx, tail, &outl) != 1) {
        ERR_clear_error();
        return ST_E_AUTH;
    }
    return ST_OK;
}

const st_provider_ops st_openssl_ops = {
    "openssl",        ossl_available, ossl_cpu_path,    ossl_key_new, ossl_key_free,
    ossl_worker_new,  ossl_worker_free, ossl_seal,      ossl_open,
};
