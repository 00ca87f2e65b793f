/* Declarations cffi parses for sealtensors._native (mirrors sealtensors.h; nothing else here). */
#define ST_OK 0
#define ST_E_AUTH 1
#define ST_E_LENGTH 2
#define ST_E_ARG 3
#define ST_E_IO 4
#define ST_E_NOMEM 5
#define ST_E_PROVIDER 6
#define ST_E_VERSION 7
#define ST_E_DIGEST 8

#define ST_PROVIDER_AUTO 0
#define ST_PROVIDER_IPSECMB 1
#define ST_PROVIDER_OPENSSL 2

typedef struct st_status {
    int code;
    int64_t chunk_index;
    unsigned long provider_error;
    int sys_errno;
} st_status;

int st_decrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, const uint8_t *digests, size_t digests_len, int final,
                        int threads, st_status *status);
int st_decrypt_span_fd(int provider, const uint8_t *key, const uint8_t *base_nonce,
                       uint64_t first_chunk, int fd, int64_t file_offset, size_t src_len,
                       uint8_t *dst, size_t dst_len, const uint8_t *digests, size_t digests_len,
                       int final, int threads, st_status *status);
int st_encrypt_span_mem(int provider, const uint8_t *key, const uint8_t *base_nonce,
                        uint64_t first_chunk, const uint8_t *src, size_t src_len, uint8_t *dst,
                        size_t dst_len, uint8_t *digests_out, size_t digests_len, int final,
                        int threads, st_status *status);

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
int st_check_version(const char *expected);

int st_provider_available(int provider);
int st_resolve_provider(int provider);
const char *st_provider_name(int provider);
const char *st_provider_cpu_path(int provider);
const char *st_digest_path(int provider);
int st_default_threads(void);
int st_cpu_count(void);
const char *st_status_message(int code);

void st_pool_set_idle_timeout(unsigned milliseconds);
int st_pool_size(int *idle);

void st_wipe(void *ptr, size_t len);
int st_lock_memory(void *ptr, size_t len);
int st_unlock_memory(void *ptr, size_t len);
