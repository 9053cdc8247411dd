/* google.protobuf.StringValue, encoded and decoded by hand (field 1,
 * wire type 2), shared by the echo examples so that they need no protobuf
 * library and interoperate with any gRPC implementation of echo.Echo/Say. */
#ifndef EXAMPLES_STRINGVALUE_H
#define EXAMPLES_STRINGVALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- google.protobuf.StringValue ------------------------------------------ */

/* Encodes {value: s} into out (room for len + 11 bytes). Returns the size. */
static inline size_t sv_encode(const char *s, size_t len, unsigned char *out)
{
    size_t o = 0;
    uint64_t v = len;

    if (len == 0)
        return 0; /* proto3: the default value is not written */
    out[o++] = 0x0A;
    do {
        out[o] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v)
            out[o] |= 0x80;
        o++;
    } while (v);
    memcpy(out + o, s, len);
    return o + len;
}

static inline bool read_varint(const unsigned char *p, size_t n, size_t *at, uint64_t *out)
{
    uint64_t v = 0;

    for (int shift = 0; shift < 64; shift += 7) {
        if (*at >= n)
            return false;
        unsigned char b = p[(*at)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Decodes a StringValue: *val points into p (the last field 1 wins, as
 * protobuf says); unknown fields are skipped. false when malformed. */
static inline bool sv_decode(const unsigned char *p, size_t n, const unsigned char **val,
                             size_t *vlen)
{
    size_t at = 0;

    *val = p;
    *vlen = 0;
    while (at < n) {
        uint64_t key, len;
        if (!read_varint(p, n, &at, &key) || key >> 3 == 0)
            return false;
        switch (key & 7) {
        case 0: /* varint */
            if (!read_varint(p, n, &at, &len))
                return false;
            break;
        case 1: /* 64-bit */
            if (n - at < 8)
                return false;
            at += 8;
            break;
        case 2: /* length-delimited */
            if (!read_varint(p, n, &at, &len) || len > n - at)
                return false;
            if (key >> 3 == 1) {
                *val = p + at;
                *vlen = (size_t)len;
            }
            at += (size_t)len;
            break;
        case 5: /* 32-bit */
            if (n - at < 4)
                return false;
            at += 4;
            break;
        default:
            return false;
        }
    }
    return true;
}

#endif
