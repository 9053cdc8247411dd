#include "validate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return false;
}

bool validate_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    while (p < end) {
        unsigned c = *p++;
        unsigned need, min, cp;

        if (c < 0x80)
            continue;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if ((size_t)(end - p) < need)
            return false;
        for (; need; need--, p++) {
            if ((*p & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (*p & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
    }
    return true;
}

const char *validate_excerpt(const char *s, char *buf, size_t len)
{
    size_t n = strlen(s);

    if (n <= VALIDATE_EXCERPT)
        return s;
    n = VALIDATE_EXCERPT;
    while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    snprintf(buf, len, "%.*s...", (int)n, s);
    return buf;
}

/* ---- host:port ------------------------------------------------------------ */

static int hp_fail(int code, char *err, size_t errlen, const char *why)
{
    fail(err, errlen, "%s", why);
    return code;
}

/* Checks the host of len bytes at p (brackets included for IPv6) and copies
 * it, without brackets, into out->host. */
static int check_host(const char *p, size_t len, struct validate_hostport *out, char *err,
                      size_t errlen)
{
    const char *what = "the host must be an IPv4 address, an IPv6 address in brackets "
                       "or a host name";
    char tmp[INET6_ADDRSTRLEN + 1];
    unsigned char addr[sizeof(struct in6_addr)];
    size_t label = 0;
    bool only_digits = true;

    if (len == 0)
        return hp_fail(VALIDATE_BAD, err, errlen, "the host is missing");
    if (p[0] == '[') {
        if (len < 3 || p[len - 1] != ']' || len - 2 >= sizeof tmp)
            return hp_fail(VALIDATE_BAD, err, errlen, what);
        memcpy(tmp, p + 1, len - 2);
        tmp[len - 2] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return hp_fail(VALIDATE_BAD, err, errlen, what);
        memcpy(out->host, tmp, len - 1);
        out->ipv6 = true;
        return VALIDATE_OK;
    }
    if (len > VALIDATE_HOST_MAX)
        return hp_fail(VALIDATE_BAD, err, errlen, what);
    for (size_t i = 0; i < len; i++) {
        char c = p[i];

        if (c == '.') {
            if (label == 0 || p[i - 1] == '-')
                return hp_fail(VALIDATE_BAD, err, errlen, what);
            label = 0;
            continue;
        }
        if (c >= '0' && c <= '9') {
            label++;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                   (c == '-' && label > 0)) {
            only_digits = false;
            label++;
        } else {
            return hp_fail(VALIDATE_BAD, err, errlen, what);
        }
        if (label > 63)
            return hp_fail(VALIDATE_BAD, err, errlen, what);
    }
    if (label == 0 || p[len - 1] == '-')
        return hp_fail(VALIDATE_BAD, err, errlen, what);
    /* Digits and dots alone are meant as an IPv4 address, and then they
     * must be one: "10.0.0.256" or "10.1" is a typo, not a host name. */
    if (only_digits) {
        if (len >= sizeof tmp)
            return hp_fail(VALIDATE_BAD, err, errlen, what);
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        if (inet_pton(AF_INET, tmp, addr) != 1)
            return hp_fail(VALIDATE_BAD, err, errlen, what);
    }
    memcpy(out->host, p, len);
    out->host[len] = '\0';
    return VALIDATE_OK;
}

/* Decimal digits without a leading zero, 1..65535 (0 too when zero_ok). */
static int check_port(const char *p, size_t len, bool zero_ok, struct validate_hostport *out,
                      char *err, size_t errlen)
{
    char tmp[16], *end;
    long v;

    for (size_t i = 0; i < len; i++)
        if (p[i] < '0' || p[i] > '9')
            return hp_fail(VALIDATE_BAD, err, errlen, "the port must be a decimal number");
    if (len == 0)
        return hp_fail(VALIDATE_BAD, err, errlen, "the port after ':' is missing");
    if (len > 1 && p[0] == '0')
        return hp_fail(VALIDATE_BAD, err, errlen, "write the port without leading zeros");
    if (len >= sizeof tmp)
        return hp_fail(VALIDATE_PORT_RANGE, err, errlen, "the port must be 1..65535");
    memcpy(tmp, p, len);
    tmp[len] = '\0';
    errno = 0;
    v = strtol(tmp, &end, 10);
    if (errno || *end || v < (zero_ok ? 0 : 1) || v > 65535)
        return hp_fail(VALIDATE_PORT_RANGE, err, errlen, "the port must be 1..65535");
    out->port = (uint16_t)v;
    return VALIDATE_OK;
}

int validate_hostport(const char *s, size_t len, unsigned flags, struct validate_hostport *out,
                      char *err, size_t errlen)
{
    struct validate_hostport spare;
    const char *colon = NULL;
    int r;

    if (!out)
        out = &spare;
    memset(out, 0, sizeof *out);
    out->port_at = len;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);

        if (!close) {
            return hp_fail(VALIDATE_BAD, err, errlen, "the '[' of an IPv6 address has no ']'");
        }
        if ((size_t)(close + 1 - s) < len) {
            if (close[1] != ':') {
                return hp_fail(VALIDATE_BAD, err, errlen, "expected ':' and a port after ']'");
            }
            colon = close + 1;
        }
    } else {
        const char *first = memchr(s, ':', len);

        for (size_t i = len; i > 0; i--) {
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        }
        if (colon && first != colon) {
            return hp_fail(VALIDATE_BAD, err, errlen,
                           "write an IPv6 address in brackets, e.g. [::1]:50051");
        }
    }
    if (!colon && !(flags & VALIDATE_PORT_OPTIONAL)) {
        return hp_fail(VALIDATE_BAD, err, errlen,
                       "the port is missing: write host:port, e.g. 10.0.0.5:8082");
    }
    out->host_len = colon ? (size_t)(colon - s) : len;
    if (!(out->host_len == 0 && colon && (flags & VALIDATE_LISTEN))) {
        r = check_host(s, out->host_len, out, err, errlen);
        if (r != VALIDATE_OK)
            return r;
    }
    if (!colon)
        return VALIDATE_OK;
    out->port_at = out->host_len + 1;
    return check_port(colon + 1, len - out->host_len - 1, flags & VALIDATE_LISTEN, out, err,
                      errlen);
}

bool validate_address(const char *s, char *err, size_t errlen)
{
    if (!s)
        return fail(err, errlen, "the address is missing");
    return validate_hostport(s, strlen(s), 0, NULL, err, errlen) == VALIDATE_OK;
}

/* ---- names, groups, weights, metadata -------------------------------------- */

static bool has_control(const char *s, bool space_too)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (space_too && *p == ' '))
            return true;
    return false;
}

bool validate_name(const char *s, char *err, size_t errlen)
{
    size_t n;

    if (!s || !*s)
        return fail(err, errlen, "a name may not be empty");
    n = strlen(s);
    if (n > VALIDATE_NAME_MAX)
        return fail(err, errlen, "a name is at most %d bytes, not %zu", VALIDATE_NAME_MAX, n);
    if (strchr(s, '/') || has_control(s, true))
        return fail(err, errlen, "a name may not contain '/', spaces or control characters");
    /* "<prefix>/../" is not one service's range: etcd keys are not paths,
     * but every reader that treats them as paths (and the cache's files)
     * would see another folder. */
    if (!strcmp(s, ".") || !strcmp(s, ".."))
        return fail(err, errlen, "a name may not be '.' or '..'");
    if (!validate_utf8(s, n))
        return fail(err, errlen, "a name must be UTF-8 text");
    return true;
}

bool validate_group(const char *s, char *err, size_t errlen)
{
    size_t n = s ? strlen(s) : 0;

    if (n > VALIDATE_GROUP_MAX)
        return fail(err, errlen, "a group is at most %d bytes, not %zu", VALIDATE_GROUP_MAX, n);
    if (n && has_control(s, false))
        return fail(err, errlen, "a group may not contain control characters");
    if (n && !validate_utf8(s, n))
        return fail(err, errlen, "a group must be UTF-8 text");
    return true;
}

bool validate_weight(long long w, char *err, size_t errlen)
{
    if (w < INT32_MIN || w > INT32_MAX)
        return fail(err, errlen, "a weight is an integer from %d to %d", INT32_MIN, INT32_MAX);
    return true;
}

bool validate_meta_key(const char *k, char *err, size_t errlen)
{
    size_t n = k ? strlen(k) : 0;

    if (!n)
        return fail(err, errlen, "a metadata key may not be empty");
    if (n > VALIDATE_META_KEY_MAX)
        return fail(err, errlen, "a metadata key is at most %d bytes, not %zu",
                    VALIDATE_META_KEY_MAX, n);
    if (!validate_utf8(k, n))
        return fail(err, errlen, "a metadata key must be UTF-8 text");
    return true;
}

bool validate_meta_value(const char *v, size_t len, char *err, size_t errlen)
{
    if (memchr(v, '\0', len))
        return fail(err, errlen, "a metadata value may not contain a NUL byte");
    if (!validate_utf8(v, len))
        return fail(err, errlen, "a metadata value must be UTF-8 text");
    return true;
}

bool validate_meta_size(size_t total, char *err, size_t errlen)
{
    if (total > VALIDATE_META_MAX)
        return fail(err, errlen, "metadata is at most %d bytes of keys and values, not %zu",
                    VALIDATE_META_MAX, total);
    return true;
}
