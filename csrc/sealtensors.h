/*
 * sealtensors chunk engine: AES-256-GCM over spans of a C2SP chunked message.
 *
 * Also single AES-256-GCM messages with AAD (st_aead_seal / st_aead_open).
 *
 * Pure C, no Python.h. Every entry point returns a status code (ST_OK or one of ST_E_*) and, when
 * `status` is not NULL, fills it. Functions are thread safe; concurrent calls share nothing but
 * read-only provider state initialised once.
 */
#ifndef SEALTENSORS_H
#define SEALTENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ST_KEY_SIZE 32
#define ST_NONCE_SIZE 12
#define ST_TAG_SIZE 16
#define ST_CHUNK_SIZE 16384
#define ST_ENCRYPTED_CHUNK_SIZE (ST_CHUNK_SIZE + ST_TAG_SIZE)
#define ST_MAX_CHUNKS (UINT64_C(1) << 38)
#define ST_DIGEST_SIZE 32 /* SHA-256 of one stored chunk: its ciphertext and its tag */

/* Status codes. */
#define ST_OK 0
#define ST_E_AUTH 1     /* a chunk's tag did not verify */
#define ST_E_LENGTH 2   /* impossible span length, or the file ended inside the span */
#define ST_E_ARG 3      /* bad argument (sizes that do not match, counter out of range, ...) */
#define ST_E_IO 4       /* pread failed; status->sys_errno holds errno */
#define ST_E_NOMEM 5    /* an allocation failed */
#define ST_E_PROVIDER 6 /* the AES provider is unavailable or failed; provider_error holds ERR code */
#define ST_E_VERSION 7  /* st_check_version: the compiled engine belongs to another package version */
#define ST_E_DIGEST 8   /* a chunk's SHA-256 is not the expected digest (checked before decrypting) */

/* AES providers. */
#define ST_PROVIDER_AUTO 0    /* ipsec-mb when compiled in and usable on this CPU, else OpenSSL */
#define ST_PROVIDER_IPSECMB 1
#define ST_PROVIDER_OPENSSL 2

typedef struct st_status {
    int code;                      /* same as the return value */
    int64_t chunk_index;           /* lowest failing absolute chunk counter, -1 if none */
    unsigned long provider_error;  /* OpenSSL ERR_get_error() code, or 0 */
    int sys_errno;                 /* errno for ST_E_IO, or 0 */
} st_status;

/* Decrypt the span `src` (ciphertext chunks) into `dst` (exactly the span's plaintext). On any
 * failure all of `dst` is wiped. `src` and `dst` must not overlap. threads = 0: the default.
 *
 * `digests` (NULL and 0 for none): ST_DIGEST_SIZE bytes per chunk of the span, each the expected
 * SHA-256 of that chunk as stored (its ciphertext followed by its tag). Each chunk is hashed and
 * compared (in constant time) before it is decrypted; a mismatch is ST_E_DIGEST at that chunk (the
 * lowest failing chunk wins, as for ST_E_AUTH). `digests_len` must be exactly chunks * 32, and
 * `digests` must not overlap `dst`. */
int st_decrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, const uint8_t *digests, size_t digests_len, int final,
                        int threads, st_status *status);

/* Same, reading the `src_len` ciphertext bytes at `file_offset` of `fd` with pread (the file
 * position is untouched). A file that ends early is ST_E_LENGTH at the chunk where data ran out,
 * unless a lower chunk fails authentication. */
int st_decrypt_span_fd(int provider, const uint8_t *key, const uint8_t *base_nonce,
                       uint64_t first_chunk, int fd, int64_t file_offset, size_t src_len,
                       uint8_t *dst, size_t dst_len, const uint8_t *digests, size_t digests_len,
                       int final, int threads, st_status *status);

/* Encrypt the plaintext `src` into `dst` (exactly the span's ciphertext length). `digests_out`
 * (NULL and 0 for none; exactly chunks * 32 bytes, overlapping neither buffer) receives the SHA-256
 * of every ciphertext chunk produced, tag included; it is wiped on failure. */
int st_encrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, uint8_t *digests_out, size_t digests_len, int final,
                        int threads, st_status *status);

/* One AES-256-GCM message (32-byte key, 12-byte nonce, 16-byte tag) with `aad_len` bytes of AAD,
 * on the calling thread. Seal writes `pt_len` bytes of ciphertext and the tag; open verifies `tag`
 * (in constant time) over the AAD and ciphertext and writes `ct_len` bytes of plaintext: ST_E_AUTH
 * when it does not verify. On any failure after the arguments were accepted, every output byte is
 * wiped. ST_E_ARG (nothing written): NULL pointers with nonzero lengths, outputs overlapping an
 * input, or more than GCM allows (2^36 - 32 bytes of text, 2^61 - 1 bytes of AAD). */
int st_aead_seal(int provider, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                 size_t aad_len, const uint8_t *plaintext, size_t pt_len, uint8_t *ciphertext_out,
                 uint8_t *tag_out, st_status *status);
int st_aead_open(int provider, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                 size_t aad_len, const uint8_t *ciphertext, size_t ct_len, const uint8_t *tag,
                 uint8_t *plaintext_out, st_status *status);

size_t st_key_size(void);
size_t st_nonce_size(void);
size_t st_tag_size(void);
size_t st_chunk_size(void);
size_t st_digest_size(void);
uint64_t st_max_chunks(void);

const char *st_version(void);
int st_check_version(const char *expected); /* ST_OK or ST_E_VERSION */

int st_provider_available(int provider);     /* 1 or 0 */
int st_resolve_provider(int provider);       /* the concrete provider AUTO maps to, -1 if none */
const char *st_provider_name(int provider);  /* "ipsecmb", "openssl"; NULL for unknown */
const char *st_provider_cpu_path(int provider);
/* How chunk digests (signed files) are computed with this provider: "ipsecmb-avx512 multi-buffer"
 * (and the like) or "openssl"; NULL when the provider is unavailable. */
const char *st_digest_path(int provider);
/* SEALTENSORS_THREADS when it is a positive integer (reads the environment: call it where no
 * other thread can be changing the environment), else st_cpu_count(); at most 256. */
int st_default_threads(void);
/* online CPUs, capped by this process's CPU affinity; at most 256. */
int st_cpu_count(void);
const char *st_status_message(int code);

/* Stop and free the helper threads of the engine's resident pool; the next parallel call starts
 * new ones. Only while no engine call is in flight. Not needed in normal use (the pool lives as long
 * as the process and stays reachable); for tests and leak checkers. */
void st_pool_shutdown(void);

/* Helpers idle for this long exit (default 2000 ms; 0: they never do). Takes effect for idle
 * helpers at once. Thread safe. */
void st_pool_set_idle_timeout(unsigned milliseconds);
/* Helpers alive now (and, when `idle` is not NULL, how many of them are idle). Thread safe. */
int st_pool_size(int *idle);

/* Memory helpers for the loader. */
void st_wipe(void *ptr, size_t len);
int st_lock_memory(void *ptr, size_t len);   /* 0 or errno */
int st_unlock_memory(void *ptr, size_t len); /* 0 or errno */

#ifdef __cplusplus
}
#endif

#endif
