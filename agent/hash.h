/* The one string hash of the agent: 64-bit FNV-1a, byte by byte. It names
 * the files of cache.dir (cache_disk.c), places services in the cache's
 * table (cache.c), and tells a watcher whether a list changed
 * (protocol.c). */
#ifndef DA_HASH_H
#define DA_HASH_H

#include <stdint.h>

/* FNV's 64-bit prime, and an offset basis that is the published one
 * (14695981039346656037) without its last digit. The copies this header
 * replaced all used it, and it names the files already in cache.dir, so it
 * stays: any odd basis spreads as well. */
#define HASH_FNV1A_BASIS 1469598103934665603ull
#define HASH_FNV1A_PRIME 1099511628211ull

/* One byte into the hash h; start from HASH_FNV1A_BASIS. */
static inline uint64_t hash_fnv1a_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * HASH_FNV1A_PRIME;
}

/* The hash of a NUL-terminated string. */
static inline uint64_t hash_fnv1a(const char *s)
{
    uint64_t h = HASH_FNV1A_BASIS;

    while (*s)
        h = hash_fnv1a_step(h, (unsigned char)*s++);
    return h;
}

#endif
