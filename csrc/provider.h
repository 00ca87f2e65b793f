/*
 * The internal interface every AES-256-GCM provider implements.
 *
 * A call sets up one read-only key state (key expansion, hash-key tables) and one worker state per
 * thread (an EVP_CIPHER_CTX, ...). Chunk functions then seal/open one message with a 12-byte nonce
 * and optional AAD (the chunk engine passes NULL, 0). Lengths are any size_t the caller has checked
 * against GCM's limits; a provider with narrower lengths (OpenSSL's int) works in pieces. Status
 * values are ST_OK, ST_E_AUTH, ST_E_PROVIDER and ST_E_NOMEM.
 */
#ifndef SEALTENSORS_PROVIDER_H
#define SEALTENSORS_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

typedef struct st_provider_ops {
    const char *name;
    int (*available)(void);
    const char *(*cpu_path)(void);
    int (*key_new)(const uint8_t *key, void **keystate, unsigned long *err);
    void (*key_free)(void *keystate);
    int (*worker_new)(const void *keystate, int encrypt, void **worker, unsigned long *err);
    void (*worker_free)(void *worker);
    /* Authenticate `aad_len` bytes of `aad` (NULL when 0), encrypt `len` bytes of `src` into `dst`,
     * write the tag to `tag`. */
    int (*seal)(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                const uint8_t *src, size_t len, uint8_t *dst, uint8_t *tag, unsigned long *err);
    /* Decrypt `len` bytes of `src` into `dst`; ST_E_AUTH when `tag` does not verify over `aad` and
     * the ciphertext (the tag is compared in constant time; the caller wipes `dst` on failure). */
    int (*open)(void *worker, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                const uint8_t *src, size_t len, uint8_t *dst, const uint8_t *tag,
                unsigned long *err);
} st_provider_ops;

/* SHA-256 of `n` messages, each shorter than 64 KiB (`data[i]`, `lens[i]` bytes; digest i at
 * out + 32 * i), through intel-ipsec-mb's multi-buffer job API on the calling thread's own manager
 * (16 messages side by side with AVX-512, 8 with AVX2): ST_OK, ST_E_PROVIDER when a job failed, or
 * ST_E_ARG when the multi-buffer path is not there (not built, no usable CPU path, no memory for
 * the thread's manager, a message too long): the caller hashes with OpenSSL instead. */
int st_ipsecmb_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out);
/* "ipsecmb-<arch> multi-buffer", or NULL when st_ipsecmb_sha256_many is not available. */
const char *st_ipsecmb_sha256_path(void);

extern const st_provider_ops st_openssl_ops;
extern const st_provider_ops st_ipsecmb_ops;

#endif
