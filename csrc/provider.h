/*
 * The internal interface every AES-256-GCM provider implements.
 *
 * A call sets up one read-only key state (key expansion, hash-key tables) and one worker state per
 * thread (an EVP_CIPHER_CTX, ...). Chunk functions then seal/open one chunk with a 12-byte nonce and
 * empty AAD. Status values are ST_OK, ST_E_AUTH, ST_E_PROVIDER and ST_E_NOMEM.
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
    /* Encrypt `len` bytes of `src` into `dst`, write the tag to `tag`. */
    int (*seal)(void *worker, const uint8_t *nonce, const uint8_t *src, size_t len, uint8_t *dst,
                uint8_t *tag, unsigned long *err);
    /* Decrypt `len` bytes of `src` into `dst`; ST_E_AUTH when `tag` does not verify. */
    int (*open)(void *worker, const uint8_t *nonce, const uint8_t *src, size_t len, uint8_t *dst,
                const uint8_t *tag, unsigned long *err);
} st_provider_ops;

extern const st_provider_ops st_openssl_ops;
extern const st_provider_ops st_ipsecmb_ops;

#endif
