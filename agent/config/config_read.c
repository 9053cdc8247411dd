/* Typed readers of the YAML tree: each takes a node, checks that it is
 * what the schema expects (a mapping, a list, one value, a duration, a
 * boolean, a known key) and reports what is wrong with the node's
 * FILE:LINE:COLUMN otherwise. The sections and the services are written
 * with these. */
#include "config_internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "error.h"
#include "validate.h"

/* ---- Messages ---------------------------------------------------------- */

const char *config__show(struct shown *b, const char *s)
{
    size_t n = strlen(s), max = 64, i;

    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        b->s[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n < strlen(s)) {
        memcpy(b->s + i, "...", 3);
        i += 3;
    }
    b->s[i] = '\0';
    return b->s;
}

static int vfail(struct loader *ld, const char *file, int line, int column, int code,
                 const char *fmt, va_list ap)
{
    if (!ld->failed && ld->err && ld->errlen > 0) {
        int n;

        if (line > 0)
            n = snprintf(ld->err, ld->errlen, "%s:%d:%d: ", file, line, column);
        else
            n = snprintf(ld->err, ld->errlen, "%s: ", file);
        if (n >= 0 && (size_t)n < ld->errlen)
            vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    }
    ld->failed = true;
    return code;
}

int config__fail_at(struct loader *ld, const char *file, int line, int column, int code,
                    const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vfail(ld, file, line, column, code, fmt, ap);
    va_end(ap);
    return r;
}

/* Reports a content error at a node of the file being read. */
int config__fail_node(struct loader *ld, const struct node *n, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vfail(ld, ld->file, n->line, n->column, DA_EINVAL, fmt, ap);
    va_end(ap);
    return r;
}

int config__fail_oom(struct loader *ld)
{
    return config__fail_at(ld, ld->file, 0, 0, DA_ENOMEM, "out of memory");
}

char *config__dup_str(struct loader *ld, const char *s)
{
    char *d = strdup(s);

    if (!d)
        config__fail_oom(ld);
    return d;
}

/* Replaces *dst with a copy of s. */
int config__set_str(struct loader *ld, char **dst, const char *s)
{
    char *d = config__dup_str(ld, s);

    if (!d)
        return DA_ENOMEM;
    free(*dst);
    *dst = d;
    return 0;
}

/* YAML's spellings of null; an empty plain value is one too. */
bool config__is_null(const struct node *n)
{
    return n->kind == NODE_SCALAR && n->plain &&
           (n->text[0] == '\0' || !strcmp(n->text, "~") || !strcmp(n->text, "null") ||
            !strcmp(n->text, "Null") || !strcmp(n->text, "NULL"));
}

const char *config__kind_name(const struct node *n)
{
    if (n->kind == NODE_MAP)
        return "a mapping";
    if (n->kind == NODE_SEQ)
        return "a sequence";
    return config__is_null(n) ? "an empty value" : "a single value";
}

/* Returns 0 if val is a mapping, 1 if it is empty (which counts as an empty
 * mapping), or an error. */
int config__want_map(struct loader *ld, const char *what, const struct node *val)
{
    if (val->kind == NODE_MAP)
        return 0;
    if (config__is_null(val))
        return 1;
    return config__fail_node(ld, val,
                             "%s must be a mapping (indented 'key: value' "
                             "lines), not %s",
                             what, config__kind_name(val));
}

/* Like config__want_map(), for sequences. */
int config__want_seq(struct loader *ld, const char *what, const struct node *val)
{
    if (val->kind == NODE_SEQ)
        return 0;
    if (config__is_null(val))
        return 1;
    return config__fail_node(ld, val,
                             "%s must be a sequence (indented '- item' "
                             "lines, or [a, b]), not %s",
                             what, config__kind_name(val));
}

/* Gets the text of a single value; an empty value is an error reported at
 * key, because an empty value's own mark points past the line. */
int config__want_text(struct loader *ld, const char *what, const struct node *key,
                      const struct node *val, const char **text)
{
    *text = "";
    if (val->kind != NODE_SCALAR)
        return config__fail_node(ld, val, "%s must be a single value, not %s", what,
                                 config__kind_name(val));
    if (config__is_null(val))
        return config__fail_node(ld, key,
                                 "%s has no value: write one after the "
                                 "':'",
                                 what);
    *text = val->text;
    return 0;
}

/* Like config__want_text(), and the text may not be "". */
int config__want_nonempty(struct loader *ld, const char *what, const struct node *key,
                          const struct node *val, const char **text)
{
    int r = config__want_text(ld, what, key, val, text);

    if (r == 0 && (*text)[0] == '\0')
        return config__fail_node(ld, val, "%s is empty: give a value", what);
    return r;
}

/* Optimal string alignment distance, for "did you mean" hints. Both
 * strings are short: callers pass known keys and skip long input. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t d[33][33];

    if (la > 32 || lb > 32)
        return SIZE_MAX;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = d[i - 1][j] + 1;

            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

/* Writes "a, b, c" into buf, cut short if it does not fit. */
static void join_keys(char *buf, size_t size, const char *const *keys, size_t n_keys)
{
    size_t off = 0;

    buf[0] = '\0';
    for (size_t k = 0; k < n_keys && off < size; k++) {
        int w = snprintf(buf + off, size - off, "%s%s", k ? ", " : "", keys[k]);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* Checks the i-th key of map against the section's known keys. Returns the
 * key's index, or an error for a key that is not a plain name, is unknown,
 * or was given before in this mapping (seen[] holds the earlier key nodes).
 * where completes "unknown key 'x' ...", e.g. "in etcd". */
int config__section_key(struct loader *ld, const struct node *map, size_t i,
                        const char *const *keys, size_t n_keys, const struct node **seen,
                        const char *where)
{
    const struct node *key = map->items[2 * i];
    struct shown a;
    size_t best = SIZE_MAX, best_d = SIZE_MAX;
    char list[256];

    if (key->kind != NODE_SCALAR)
        return config__fail_node(ld, key, "keys must be plain names, not %s",
                                 config__kind_name(key));
    for (size_t k = 0; k < n_keys; k++) {
        size_t d;

        if (!strcmp(key->text, keys[k])) {
            if (seen[k])
                return config__fail_node(ld, key,
                                         "key '%s' given twice %s (first "
                                         "at %d:%d): keep only one",
                                         keys[k], where, seen[k]->line, seen[k]->column);
            seen[k] = key;
            return (int)k;
        }
        d = edit_distance(key->text, keys[k]);
        if (d < best_d) {
            best_d = d;
            best = k;
        }
    }
    if (best_d <= 2 && best_d < strlen(keys[best]))
        return config__fail_node(ld, key, "unknown key '%s' %s (did you mean '%s'?)",
                                 config__show(&a, key->text), where, keys[best]);
    /* Without a close match, listing the known keys tells the reader what
     * may go here. */
    join_keys(list, sizeof(list), keys, n_keys);
    return config__fail_node(ld, key, "unknown key '%s' %s (known keys: %s)",
                             config__show(&a, key->text), where, list);
}

int config__load_duration(struct loader *ld, const char *what, const struct node *key,
                          const struct node *val, uint64_t *ms)
{
    struct shown a;
    const char *text;
    int r = config__want_text(ld, what, key, val, &text);

    if (r < 0)
        return r;
    if (duration_parse(text, ms) < 0)
        return config__fail_node(ld, val,
                                 "bad duration '%s' for %s: use 500ms, "
                                 "10s, 2m",
                                 config__show(&a, text), what);
    return 0;
}

int config__parse_bool(const struct node *v, bool *b)
{
    static const char *const yes[] = {"true", "True", "TRUE"};
    static const char *const no[] = {"false", "False", "FALSE"};

    if (v->kind != NODE_SCALAR || !v->plain)
        return -1;
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (!strcmp(v->text, yes[i])) {
            *b = true;
            return 0;
        }
        if (!strcmp(v->text, no[i])) {
            *b = false;
            return 0;
        }
    }
    return -1;
}

int config__load_ip_list(struct loader *ld, const struct config_ip_list *spec,
                         const struct node *key, const struct node *val, char ***out, size_t *n)
{
    struct shown a;
    char what[96];
    int r = config__want_seq(ld, spec->what, val);

    if (r < 0)
        return r;
    if (r == 1 || !val->n_items)
        return spec->empty ? config__fail_node(ld, key, "%s", spec->empty) : 0;
    if (val->n_items > spec->max)
        return config__fail_node(ld, val, "%s lists %zu addresses: at most %zu", spec->what,
                                 val->n_items, spec->max);
    if (!(*out = calloc(val->n_items, sizeof(**out))))
        return config__fail_oom(ld);
    *n = val->n_items;
    snprintf(what, sizeof what, "an entry of %s", spec->what);
    for (size_t i = 0; i < val->n_items; i++) {
        const struct node *item = val->items[i];
        struct validate_hostport hp;
        unsigned char ip[16];
        const char *text;
        char why[160];

        if ((r = config__want_nonempty(ld, what, item, item, &text)) < 0)
            return r;
        r = validate_hostport(text, strlen(text), spec->flags, &hp, why, sizeof(why));
        if (r == VALIDATE_PORT_RANGE)
            return config__fail_node(ld, item, "port out of range in %s '%s': use 1..65535%s",
                                     spec->what, config__show(&a, text),
                                     spec->port_hint ? spec->port_hint : "");
        if (r != VALIDATE_OK)
            return config__fail_node(ld, item, "bad %s '%s': %s", spec->what,
                                     config__show(&a, text), why);
        if (inet_pton(hp.ipv6 ? AF_INET6 : AF_INET, hp.host, ip) != 1)
            return config__fail_node(ld, item, "bad %s '%s': give an IP address, such as %s",
                                     spec->what, config__show(&a, text), spec->example);
        if (!((*out)[i] = config__dup_str(ld, text)))
            return DA_ENOMEM;
        for (size_t j = 0; j < i; j++)
            if (!strcmp((*out)[j], text))
                return config__fail_node(ld, item, "'%s' is listed twice in %s: keep only one",
                                         config__show(&a, text), spec->what);
    }
    return 0;
}
