/* The health-check schema: names, defaults, limits and the one reader
 * every front end calls (check_spec.h). libc only, so that the
 * configuration can use it without the loop. */
#include "check_spec.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "error.h"

/* ---- names ------------------------------------------------------------------ */

static const char *const type_names[] = {
    [CHECK_NONE] = "none", [CHECK_GRPC] = "grpc", [CHECK_TCP] = "tcp",
    [CHECK_HTTP] = "http", [CHECK_EXEC] = "exec", [CHECK_TTL] = "ttl",
};

const char *check_type_name(enum check_type t)
{
    if ((unsigned)t < sizeof type_names / sizeof type_names[0])
        return type_names[t];
    return "unknown";
}

int check_type_parse(const char *s, enum check_type *out)
{
    if (!s)
        return DA_EINVAL;
    for (unsigned i = 0; i < sizeof type_names / sizeof type_names[0]; i++) {
        if (!strcmp(s, type_names[i])) {
            *out = (enum check_type)i;
            return 0;
        }
    }
    return DA_EINVAL;
}

/* In enum check_key order. The name ends in _keys[] because test/check-man
 * finds the configuration's keys by that shape. */
static const char *const check_keys[] = {"type",    "interval", "timeout", "rise", "fall",
                                         "service", "url",      "command", "ttl"};

const char *const *check_spec_keys(size_t *n)
{
    _Static_assert(sizeof check_keys / sizeof check_keys[0] == CHECK_KEY_COUNT,
                   "one name per enum check_key");
    *n = CHECK_KEY_COUNT;
    return check_keys;
}

/* ---- specs ------------------------------------------------------------------ */

void check_spec_clear(struct check_spec *s)
{
    if (!s)
        return;
    free(s->grpc_service);
    free(s->http_url);
    if (s->exec_argv) {
        for (char **a = s->exec_argv; *a; a++)
            free(*a);
        free(s->exec_argv);
    }
    memset(s, 0, sizeof *s);
}

static int dup_str(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : DA_ENOMEM;
}

int check_spec_copy(struct check_spec *dst, const struct check_spec *src)
{
    *dst = *src;
    dst->grpc_service = NULL;
    dst->http_url = NULL;
    dst->exec_argv = NULL;
    if (dup_str(&dst->grpc_service, src->grpc_service) < 0 ||
        dup_str(&dst->http_url, src->http_url) < 0)
        goto nomem;
    if (src->exec_argv) {
        size_t n = 0;
        while (src->exec_argv[n])
            n++;
        dst->exec_argv = calloc(n + 1, sizeof *dst->exec_argv);
        if (!dst->exec_argv)
            goto nomem;
        for (size_t i = 0; i < n; i++)
            if (dup_str(&dst->exec_argv[i], src->exec_argv[i]) < 0)
                goto nomem;
    }
    return 0;
nomem:
    check_spec_clear(dst);
    return DA_ENOMEM;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return DA_EINVAL;
}

int check_spec_normalize(struct check_spec *s, bool exec_enabled, char *err, size_t errlen)
{
    const char *t = check_type_name(s->type);
    size_t argc = 0;

    if (s->type == CHECK_NONE)
        return fail(err, errlen, "a checker needs a check type");
    if ((unsigned)s->type > CHECK_TTL)
        return fail(err, errlen, "unknown check type %d", (int)s->type);
    if (s->rise < 0 || s->rise > CHECK_RISE_FALL_MAX)
        return fail(err, errlen, "%s check: rise must be between 1 and %d", t, CHECK_RISE_FALL_MAX);
    if (s->fall < 0 || s->fall > CHECK_RISE_FALL_MAX)
        return fail(err, errlen, "%s check: fall must be between 1 and %d", t, CHECK_RISE_FALL_MAX);
    if (!s->rise)
        s->rise = CHECK_DEFAULT_RISE;
    if (!s->fall)
        s->fall = CHECK_DEFAULT_FALL;

    if (s->type == CHECK_TTL) {
        if (!s->ttl_ms)
            return fail(err, errlen, "ttl check: ttl must be set");
        return 0;
    }
    if (!s->interval_ms)
        s->interval_ms = CHECK_DEFAULT_INTERVAL_MS;
    if (!s->timeout_ms) {
        s->timeout_ms = s->interval_ms > CHECK_DEFAULT_TIMEOUT_MS ? CHECK_DEFAULT_TIMEOUT_MS
                                                                  : s->interval_ms / 2;
        if (!s->timeout_ms)
            s->timeout_ms = 1;
    }
    /* A probe must end (by itself or by its timeout) by the time the next
     * one is due; otherwise every probe of a hanging instance would be
     * skipped. A timeout equal to the interval is what an operator writing
     * "interval: 1s, timeout: 1s" means: the checker counts the late probe
     * as failed when the next one is due, and starts that one. */
    if (s->timeout_ms > s->interval_ms)
        return fail(err, errlen,
                    "%s check: timeout (%llu ms) must not be longer than interval (%llu ms)", t,
                    (unsigned long long)s->timeout_ms, (unsigned long long)s->interval_ms);
    /* libuv timers and libcurl take longs of milliseconds. */
    if (s->interval_ms > (uint64_t)LONG_MAX / 2)
        return fail(err, errlen, "%s check: interval too long", t);

    switch (s->type) {
    case CHECK_GRPC:
        if (s->grpc_service && strlen(s->grpc_service) > CHECK_SERVICE_MAX)
            return fail(err, errlen, "grpc check: service name longer than %d bytes",
                        CHECK_SERVICE_MAX);
        break;
    case CHECK_HTTP:
        if (s->http_url && strncmp(s->http_url, "http://", 7) &&
            strncmp(s->http_url, "https://", 8))
            return fail(err, errlen, "http check: url must start with http:// or https://");
        if (s->http_url && strlen(s->http_url) > CHECK_URL_MAX)
            return fail(err, errlen, "http check: url longer than %d bytes", CHECK_URL_MAX);
        break;
    case CHECK_EXEC:
        if (!exec_enabled)
            return fail(err, errlen,
                        "exec checks are disabled (the agent's configuration must enable them)");
        if (!s->exec_argv || !s->exec_argv[0] || !s->exec_argv[0][0])
            return fail(err, errlen, "exec check: a command is needed");
        while (s->exec_argv[argc])
            argc++;
        if (argc > CHECK_ARGV_MAX)
            return fail(err, errlen, "exec check: command has %zu items, more than %d", argc,
                        CHECK_ARGV_MAX);
        break;
    default:
        break;
    }
    return 0;
}

static bool str_eq0(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}

bool check_spec_equal(const struct check_spec *a, const struct check_spec *b)
{
    struct check_spec x = *a, y = *b; /* shallow: normalize allocates nothing */

    check_spec_normalize(&x, true, NULL, 0);
    check_spec_normalize(&y, true, NULL, 0);
    if (x.type != y.type || x.rise != y.rise || x.fall != y.fall)
        return false;
    switch (x.type) {
    case CHECK_TTL:
        return x.ttl_ms == y.ttl_ms;
    case CHECK_NONE:
        return true;
    default:
        break;
    }
    if (x.interval_ms != y.interval_ms || x.timeout_ms != y.timeout_ms)
        return false;
    switch (x.type) {
    case CHECK_GRPC:
        return str_eq0(x.grpc_service, y.grpc_service);
    case CHECK_HTTP:
        return str_eq0(x.http_url, y.http_url);
    case CHECK_EXEC:
        if (!x.exec_argv || !y.exec_argv)
            return x.exec_argv == y.exec_argv;
        for (size_t i = 0;; i++) {
            if (!x.exec_argv[i] || !y.exec_argv[i])
                return x.exec_argv[i] == y.exec_argv[i];
            if (strcmp(x.exec_argv[i], y.exec_argv[i]))
                return false;
        }
    default:
        return true;
    }
}

/* ---- reading a check ------------------------------------------------------ */

/* A user's text as it may appear in a message: at most 64 bytes of it, cut
 * on a character boundary, control bytes shown as '?'. */
struct shown {
    char s[80];
};

static const char *show(struct shown *b, const char *s)
{
    size_t n = strlen(s), i;

    if (n > 64) {
        n = 64;
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

static int refuse(struct check_error *why, enum check_key key, size_t item, int code,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int refuse(struct check_error *why, enum check_key key, size_t item, int code,
                  const char *fmt, ...)
{
    va_list ap;

    why->key = key;
    why->item = item;
    va_start(ap, fmt);
    vsnprintf(why->msg, sizeof why->msg, fmt, ap);
    va_end(ap);
    return code;
}

static int nomem(struct check_error *why)
{
    return refuse(why, CHECK_KEY_COUNT, SIZE_MAX, DA_ENOMEM, "out of memory");
}

static int read_duration(const struct check_input *in, enum check_key k, uint64_t *ms,
                         struct check_error *why)
{
    const char *text = in->value[k].text;
    struct shown a;

    if (text && duration_parse(text, ms) < 0)
        return refuse(why, k, SIZE_MAX, DA_EINVAL,
                      "bad duration '%s' for check.%s: use 500ms, 10s, 2m", show(&a, text),
                      check_keys[k]);
    return 0;
}

/* rise and fall: a bare whole number, so that "3" in quotes (text in
 * both formats) is not taken for one. */
static int read_count(const struct check_input *in, enum check_key k, int *out,
                      struct check_error *why)
{
    const char *text = in->value[k].text;
    struct shown a;
    char *end;
    long v;

    if (!text)
        return 0;
    errno = 0;
    v = strtol(text, &end, 10);
    if (in->value[k].quoted || errno || *end || end == text || v < 1 || v > CHECK_RISE_FALL_MAX)
        return refuse(why, k, SIZE_MAX, DA_EINVAL,
                      "check.%s must be a whole number from 1 to %d, not '%s'", check_keys[k],
                      CHECK_RISE_FALL_MAX, show(&a, text));
    *out = (int)v;
    return 0;
}

static int read_strings(struct check_spec *s, const struct check_input *in, struct check_error *why)
{
    const char *url = in->value[CHECK_KEY_URL].text;
    const char *service = in->value[CHECK_KEY_SERVICE].text;
    struct shown a;

    if (service && !(s->grpc_service = strdup(service)))
        return nomem(why);
    if (url) {
        if (!*url)
            return refuse(why, CHECK_KEY_URL, SIZE_MAX, DA_EINVAL,
                          "check.url is empty: give a value");
        if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
            return refuse(why, CHECK_KEY_URL, SIZE_MAX, DA_EINVAL,
                          "check.url '%s' must start with http:// or https://", show(&a, url));
        if (!(s->http_url = strdup(url)))
            return nomem(why);
    }
    return 0;
}

static int read_command(struct check_spec *s, const struct check_input *in, struct check_error *why)
{
    size_t n = in->n_command;

    if (!in->has_command)
        return 0;
    if (!n)
        return refuse(
            why, CHECK_KEY_COMMAND, SIZE_MAX, DA_EINVAL,
            "check.command must be a list of strings, the program first: [/bin/check, arg]");
    /* Refused before anything is allocated for it. */
    if (n > CHECK_ARGV_MAX)
        return refuse(why, CHECK_KEY_COMMAND, SIZE_MAX, DA_EINVAL,
                      "check.command has %zu items: at most %d", n, CHECK_ARGV_MAX);
    if (!(s->exec_argv = calloc(n + 1, sizeof *s->exec_argv)))
        return nomem(why);
    for (size_t i = 0; i < n; i++) {
        if (!in->command[i] || !in->command[i][0])
            return refuse(why, CHECK_KEY_COMMAND, i, DA_EINVAL,
                          "each check.command item is empty: give a value");
        if (!(s->exec_argv[i] = strdup(in->command[i])))
            return nomem(why);
    }
    return 0;
}

static int build(struct check_spec *s, const struct check_input *in, bool exec_enabled,
                 struct check_error *why)
{
    const char *type = in->value[CHECK_KEY_TYPE].text;
    const char *of = in->owner ? " of " : "", *owner = in->owner ? in->owner : "";
    const char *for_ = in->owner ? " for " : "";
    char msg[256];
    struct shown a;
    int rc;

    if (!type)
        return refuse(why, CHECK_KEY_COUNT, SIZE_MAX, DA_EINVAL,
                      "the check%s%s has no type: add 'type: grpc' (or tcp, http, exec, ttl)", of,
                      owner);
    if (!*type)
        return refuse(why, CHECK_KEY_TYPE, SIZE_MAX, DA_EINVAL,
                      "check type is empty: give a value");
    if (check_type_parse(type, &s->type) < 0 || s->type == CHECK_NONE)
        return refuse(why, CHECK_KEY_TYPE, SIZE_MAX, DA_EINVAL,
                      "unknown check type '%s'%s%s: use grpc, tcp, http, exec or ttl",
                      show(&a, type), for_, owner);
    if ((rc = read_duration(in, CHECK_KEY_INTERVAL, &s->interval_ms, why)) ||
        (rc = read_duration(in, CHECK_KEY_TIMEOUT, &s->timeout_ms, why)) ||
        (rc = read_duration(in, CHECK_KEY_TTL, &s->ttl_ms, why)) ||
        (rc = read_count(in, CHECK_KEY_RISE, &s->rise, why)) ||
        (rc = read_count(in, CHECK_KEY_FALL, &s->fall, why)) || (rc = read_strings(s, in, why)) ||
        (rc = read_command(s, in, why)))
        return rc;
    if (check_spec_normalize(s, exec_enabled, msg, sizeof msg) < 0)
        return refuse(why, CHECK_KEY_COUNT, SIZE_MAX, DA_EINVAL, "%s%s%s%s%s",
                      in->owner ? "bad check" : "", for_, owner, in->owner ? ": " : "", msg);
    return 0;
}

int check_spec_build(struct check_spec *out, const struct check_input *in, bool exec_enabled,
                     struct check_error *why)
{
    struct check_error scratch;
    int rc;

    if (!why)
        why = &scratch;
    why->key = CHECK_KEY_COUNT;
    why->item = SIZE_MAX;
    why->msg[0] = '\0';
    memset(out, 0, sizeof *out);
    rc = build(out, in, exec_enabled, why);
    if (rc < 0)
        check_spec_clear(out);
    return rc;
}
