/* Standard base64 (RFC 4648, with padding), as etcd's gateway writes keys
 * and values. */
#ifndef DA_B64_H
#define DA_B64_H

#include <stddef.h>

/* Size of the encoding of n bytes, with its NUL. */
#define B64_ENCODED_SIZE(n) ((((n) + 2) / 3) * 4 + 1)

/* Encodes n bytes into out (B64_ENCODED_SIZE(n) bytes), NUL-terminated;
 * returns the length without the NUL. */
size_t b64_encode(const void *in, size_t n, char *out);

/* Decodes len characters into a new buffer (*out, NUL-terminated, owned by
 * the caller) and its length. Returns 0, -EINVAL on a bad character or
 * length, -ENOMEM. */
int b64_decode(const char *in, size_t len, char **out, size_t *outlen);

#endif
