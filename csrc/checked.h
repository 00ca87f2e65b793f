/* Overflow-checked size arithmetic: each returns 1 on success, 0 on overflow. */
#ifndef SEALTENSORS_CHECKED_H
#define SEALTENSORS_CHECKED_H

#include <stddef.h>
#include <stdint.h>

static inline int st_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static inline int st_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

static inline int st_add_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static inline int st_mul_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

#endif
