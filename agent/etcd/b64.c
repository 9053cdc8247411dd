#include "b64.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encode(const void *in, size_t n, char *out)
{
    const unsigned char *p = in;
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int value_of(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

int b64_decode(const char *in, size_t len, char **out, size_t *outlen)
{
    size_t pad = 0, o = 0;
    unsigned char *buf;

    if (len % 4)
        return -EINVAL;
    if (len && in[len - 1] == '=')
        pad++;
    if (len > 1 && in[len - 2] == '=')
        pad++;
    buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        for (size_t j = 0; j < 4; j++) {
            int d;
            /* '=' is only allowed as padding at the very end. */
            if (in[i + j] == '=' && i + 4 == len && j >= 4 - pad)
                d = 0;
            else if ((d = value_of((unsigned char)in[i + j])) < 0)
                goto bad;
            v = v << 6 | (uint32_t)d;
        }
        buf[o++] = (unsigned char)(v >> 16);
        buf[o++] = (unsigned char)(v >> 8);
        buf[o++] = (unsigned char)v;
    }
    o -= pad;
    buf[o] = '\0';
    *out = (char *)buf;
    *outlen = o;
    return 0;
bad:
    free(buf);
    return -EINVAL;
}
