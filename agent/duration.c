/* Parsing and printing of configuration durations ("500ms", "1m30s"). */
#include "duration.h"

#include <errno.h>
#include <string.h>

/* The units, largest first. Their order is also the order in which terms
 * must appear in a duration, which keeps "1m1m" and "30s1m" out: a reader
 * should never have to add up a duration in their head. */
static const struct unit {
    const char *name;
    size_t len;
    uint64_t ms;
} units[] = {
    { "h", 1, 3600000u },
    { "m", 1, 60000u },
    { "s", 1, 1000u },
    { "ms", 2, 1u },
};

#define N_UNITS (sizeof(units) / sizeof(units[0]))

/* Returns the index of the unit that s starts with, or -1. "ms" is tried
 * before "m" because it is the longer match. */
static int unit_at(const char *s, size_t *len)
{
    if (s[0] == 'm' && s[1] == 's') {
        *len = 2;
        return 3;
    }
    for (size_t i = 0; i < N_UNITS; i++) {
        if (units[i].len == 1 && s[0] == units[i].name[0]) {
            *len = 1;
            return (int)i;
        }
    }
    return -1;
}

int duration_parse(const char *s, uint64_t *ms)
{
    uint64_t total = 0;
    int last = -1;

    if (s == NULL || ms == NULL || *s == '\0')
        return -EINVAL;
    while (*s != '\0') {
        uint64_t v = 0;
        size_t ulen = 0;
        int u;

        /* Digits are read by hand rather than with strtoull(), which would
         * also accept leading spaces, a sign and "0x". */
        if (*s < '0' || *s > '9')
            return -EINVAL;
        while (*s >= '0' && *s <= '9') {
            unsigned d = (unsigned)(*s - '0');
            if (v > (UINT64_MAX - d) / 10)
                return -EINVAL;
            v = v * 10 + d;
            s++;
        }
        u = unit_at(s, &ulen);
        if (u <= last)
            return -EINVAL;  /* no unit, an unknown one, or out of order */
        if (v > UINT64_MAX / units[u].ms)
            return -EINVAL;
        v *= units[u].ms;
        if (total > UINT64_MAX - v)
            return -EINVAL;
        total += v;
        last = u;
        s += ulen;
    }
    *ms = total;
    return 0;
}

static size_t digits(uint64_t v)
{
    size_t n = 1;

    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* Writes v in decimal at p, which has room for it; returns the end. */
static char *put_u64(char *p, uint64_t v)
{
    size_t n = digits(v);

    for (size_t i = n; i > 0; i--) {
        p[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

int duration_format(uint64_t ms, char *buf, size_t len)
{
    uint64_t best_count[N_UNITS] = { 0 };
    size_t best_len = SIZE_MAX, best_terms = 0;
    unsigned best_mask = 0;
    char tmp[DURATION_FORMAT_MAX];
    char *p = tmp;

    if (buf == NULL)
        return -EINVAL;
    if (ms == 0) {
        best_mask = 1u << 2;  /* "0s" */
    } else {
        /* Try every set of units. With the set fixed, each term takes as
         * much as it can, largest unit first; a set is usable only if the
         * smallest unit absorbs the rest exactly and no term is zero. There
         * are only fifteen sets, so trying them all is cheaper than being
         * clever. */
        for (unsigned mask = 1; mask < (1u << N_UNITS); mask++) {
            uint64_t count[N_UNITS] = { 0 };
            uint64_t rem = ms;
            size_t slen = 0, terms = 0;
            int ok = 1;

            for (size_t i = 0; i < N_UNITS && ok; i++) {
                if (!(mask & (1u << i)))
                    continue;
                count[i] = rem / units[i].ms;
                rem -= count[i] * units[i].ms;
                ok = count[i] > 0;
                slen += digits(count[i]) + units[i].len;
                terms++;
            }
            if (!ok || rem != 0)
                continue;
            /* On a full tie the first set in this order is kept, which
             * makes the output depend on nothing but ms. */
            if (slen < best_len || (slen == best_len && terms < best_terms)) {
                best_len = slen;
                best_terms = terms;
                best_mask = mask;
                memcpy(best_count, count, sizeof(count));
            }
        }
    }
    for (size_t i = 0; i < N_UNITS; i++) {
        if (!(best_mask & (1u << i)))
            continue;
        p = put_u64(p, best_count[i]);
        memcpy(p, units[i].name, units[i].len);
        p += units[i].len;
    }
    *p = '\0';
    if ((size_t)(p - tmp) + 1 > len) {
        if (len > 0)
            buf[0] = '\0';
        return -ENOSPC;
    }
    memcpy(buf, tmp, (size_t)(p - tmp) + 1);
    return 0;
}
