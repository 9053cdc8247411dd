/* Parsing of configuration durations ("500ms", "1m30s"). */
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
    {"h", 1, 3600000u},
    {"m", 1, 60000u},
    {"s", 1, 1000u},
    {"ms", 2, 1u},
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
            return -EINVAL; /* no unit, an unknown one, or out of order */
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
