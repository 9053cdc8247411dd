/* The top level of a configuration file and its sections: etcd, session,
 * socket, cache, log, checks and xds. (services: is config_services.c.)
 * Each section is a mapping of known keys; each key's value is read with
 * the typed readers of config_read.c and checked here against the rules
 * of its key. */
#include "config_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "dns_rules.h"
#include "error.h"
#include "validate.h"

/* An etcd cluster has a handful of members; a cap keeps the duplicate check
 * trivial and catches a runaway list. */
#define MAX_ENDPOINTS 64

/* A per-request timeout above an hour is never what was meant, and the cap
 * keeps the value safe to hand to libcurl as a long. */
#define TIMEOUT_MAX_MS (3600u * 1000u)

/* etcd refuses leases longer than this many seconds (its MaxLeaseTTL). */
#define TTL_MAX_S 9000000000ull
#define TTL_MIN_MS 2000u

/* Longest usable unix socket path, without the NUL. */
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* A header name is one token of an HTTP/2 header block; a cap keeps it
 * readable in routes and messages. */
#define XDS_HEADER_MAX 64

/* ---- etcd -------------------------------------------------------------- */

/* Puts why into the caller's buffer for check_endpoint(). */
static int fail_why(char *buf, size_t len, const char *why)
{
    snprintf(buf, len, "%s", why);
    return VALIDATE_BAD;
}

/* Checks an etcd endpoint URL; on success *keep is the length without
 * trailing slashes. The reason for a refusal goes into why. */
static int check_endpoint(const char *url, char *why, size_t whylen, size_t *keep)
{
    size_t len = strlen(url), skip, auth;
    int r;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c == 0x7f)
            return fail_why(why, whylen,
                            "it may not contain spaces or "
                            "control characters");
    }
    if (!strncmp(url, "http://", 7))
        skip = 7;
    else if (!strncmp(url, "https://", 8))
        skip = 8;
    else
        return fail_why(why, whylen,
                        "it must start with http:// or "
                        "https://");
    if (strpbrk(url, "?#"))
        return fail_why(why, whylen,
                        "it may not have a query or fragment "
                        "('?' or '#')");
    auth = strcspn(url + skip, "/");
    if (memchr(url + skip, '@', auth))
        return fail_why(why, whylen,
                        "put the user in etcd.username and the "
                        "password in etcd.password_file, not in the URL");
    r = validate_hostport(url + skip, auth, VALIDATE_PORT_OPTIONAL, NULL, why, whylen);
    if (r != VALIDATE_OK)
        return r;
    while (len > skip + auth && url[len - 1] == '/')
        len--;
    *keep = len;
    return VALIDATE_OK;
}

static int load_endpoints(struct loader *ld, const struct node *key, const struct node *val)
{
    struct config *c = ld->cfg;
    struct shown a;
    int r = config__want_seq(ld, "etcd.endpoints", val);

    if (r < 0)
        return r;
    if (r == 1 || val->n_items == 0)
        return config__fail_node(ld, key,
                                 "etcd.endpoints is empty: list at least "
                                 "one etcd member, e.g. [" DA_DEFAULT_ETCD_ENDPOINT "]");
    if (val->n_items > MAX_ENDPOINTS)
        return config__fail_node(ld, val,
                                 "etcd.endpoints lists %zu URLs: at most %d "
                                 "are supported",
                                 val->n_items, MAX_ENDPOINTS);
    c->endpoints = calloc(val->n_items, sizeof(*c->endpoints));
    if (!c->endpoints)
        return config__fail_oom(ld);
    c->n_endpoints = val->n_items;
    for (size_t i = 0; i < val->n_items; i++) {
        const struct node *item = val->items[i];
        const char *text;
        char why[160];
        size_t keep;

        r = config__want_nonempty(ld, "an etcd.endpoints entry", item, item, &text);
        if (r < 0)
            return r;
        r = check_endpoint(text, why, sizeof(why), &keep);
        if (r == VALIDATE_PORT_RANGE)
            return config__fail_node(ld, item,
                                     "port out of range in endpoint '%s': "
                                     "use 1..65535",
                                     config__show(&a, text));
        if (r != VALIDATE_OK)
            return config__fail_node(ld, item,
                                     "bad endpoint URL '%s' in "
                                     "etcd.endpoints: %s",
                                     config__show(&a, text), why);
        c->endpoints[i] = strndup(text, keep);
        if (!c->endpoints[i])
            return config__fail_oom(ld);
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(c->endpoints[j], c->endpoints[i]))
                return config__fail_node(ld, item,
                                         "endpoint '%s' is listed twice "
                                         "in etcd.endpoints (first at %d:%d): keep "
                                         "only one",
                                         config__show(&a, text), val->items[j]->line,
                                         val->items[j]->column);
        }
    }
    return 0;
}

static int load_prefix(struct loader *ld, const struct node *key, const struct node *val)
{
    struct shown a;
    const char *text;
    size_t len;
    int r = config__want_nonempty(ld, "etcd.prefix", key, val, &text);

    if (r < 0)
        return r;
    len = strlen(text);
    while (len > 1 && text[len - 1] == '/')
        len--;
    if (text[0] != '/')
        return config__fail_node(ld, val,
                                 "bad etcd.prefix '%s': it must start "
                                 "with '/', e.g. " DA_DEFAULT_ETCD_PREFIX,
                                 config__show(&a, text));
    if (len == 1)
        return config__fail_node(ld, val,
                                 "bad etcd.prefix '%s': it needs a name "
                                 "after '/', e.g. " DA_DEFAULT_ETCD_PREFIX,
                                 config__show(&a, text));
    if (len > VALIDATE_PREFIX_MAX)
        return config__fail_node(ld, val,
                                 "etcd.prefix is %zu bytes long: at most %d "
                                 "fit in the keys of every service",
                                 len, VALIDATE_PREFIX_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch <= 0x20 || ch == 0x7f)
            return config__fail_node(ld, val,
                                     "bad etcd.prefix '%s': it may not "
                                     "contain spaces or control characters",
                                     config__show(&a, text));
        if (ch == '/' && i > 0 && text[i - 1] == '/')
            return config__fail_node(ld, val,
                                     "bad etcd.prefix '%s': it may not "
                                     "contain '//'",
                                     config__show(&a, text));
    }
    free(ld->cfg->prefix);
    ld->cfg->prefix = strndup(text, len);
    if (!ld->cfg->prefix)
        return config__fail_oom(ld);
    return 0;
}

/* Reads the etcd password now, so that a missing or unreadable file stops
 * the agent at start rather than at its first request. */
static int load_password(struct loader *ld, const struct node *key)
{
    struct config *c = ld->cfg;
    struct shown a;
    char *buf;
    size_t len;
    int r = config__read_all(c->password_file, CONFIG_PASSWORD_MAX, true, &buf, &len);

    if (r == DA_ENOMEM)
        return config__fail_oom(ld);
    if (r == DA_EFBIG)
        return config__fail_node(ld, key,
                                 "etcd.password_file '%s' is larger than "
                                 "%d bytes: it must hold only the password",
                                 config__show(&a, c->password_file), CONFIG_PASSWORD_MAX);
    if (r < 0)
        return config__fail_node(ld, key, "cannot read etcd.password_file '%s': %s",
                                 config__show(&a, c->password_file), strerror(-r));
    /* One trailing newline is what an editor or "echo" leaves; a second one
     * would be part of the password. */
    if (len > 0 && buf[len - 1] == '\n') {
        buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
            buf[--len] = '\0';
    }
    if (len == 0)
        r = config__fail_node(ld, key,
                              "etcd.password_file '%s' is empty: write the "
                              "password into it",
                              config__show(&a, c->password_file));
    else if (strlen(buf) != len)
        r = config__fail_node(ld, key,
                              "etcd.password_file '%s' contains a NUL "
                              "byte: write the password as text",
                              config__show(&a, c->password_file));
    if (r < 0) {
        explicit_bzero(buf, len);
        free(buf);
        return r;
    }
    c->password = buf;
    return 0;
}

static const char *const tls_keys[] = {"ca_file", "cert_file", "key_file"};
enum { TLS_CA, TLS_CERT, TLS_KEY };

static int load_tls(struct loader *ld, const struct node *val, const struct node **seen)
{
    static const char *const what[] = {"etcd.tls.ca_file", "etcd.tls.cert_file",
                                       "etcd.tls.key_file"};
    struct config *c = ld->cfg;
    char **dst[] = {&c->tls_ca_file, &c->tls_cert_file, &c->tls_key_file};
    int r = config__want_map(ld, "etcd.tls", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *v = val->items[2 * i + 1];
        const char *text;
        int k =
            config__section_key(ld, val, i, tls_keys, ARRAY_SIZE(tls_keys), seen, "in etcd.tls");

        if (k < 0)
            return k;
        r = config__want_nonempty(ld, what[k], val->items[2 * i], v, &text);
        if (r == 0)
            r = config__set_str(ld, dst[k], text);
        if (r < 0)
            return r;
    }
    if ((!seen[TLS_CERT]) != (!seen[TLS_KEY])) {
        bool has_cert = seen[TLS_CERT];
        return config__fail_node(ld, has_cert ? seen[TLS_CERT] : seen[TLS_KEY],
                                 "%s is set without %s: a client certificate needs "
                                 "its key, so give both or neither",
                                 what[has_cert ? TLS_CERT : TLS_KEY],
                                 what[has_cert ? TLS_KEY : TLS_CERT]);
    }
    for (size_t k = 0; k < ARRAY_SIZE(tls_keys); k++) {
        struct shown a;

        if (!seen[k])
            continue;
        r = config__check_readable(*dst[k]);
        if (r < 0)
            return config__fail_node(ld, seen[k], "cannot read %s '%s': %s", what[k],
                                     config__show(&a, *dst[k]), strerror(-r));
    }
    return 0;
}

static const char *const etcd_keys[] = {"endpoints", "prefix",        "timeout",
                                        "username",  "password_file", "tls"};
enum { ETCD_ENDPOINTS, ETCD_PREFIX, ETCD_TIMEOUT, ETCD_USERNAME, ETCD_PASSWORD_FILE, ETCD_TLS };

static int load_etcd(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(etcd_keys)] = {NULL};
    const struct node *tls_seen[ARRAY_SIZE(tls_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "etcd", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2 && r == 0; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        int key =
            config__section_key(ld, val, i, etcd_keys, ARRAY_SIZE(etcd_keys), seen, "in etcd");

        switch (key) {
        case ETCD_ENDPOINTS:
            r = load_endpoints(ld, k, v);
            break;
        case ETCD_PREFIX:
            r = load_prefix(ld, k, v);
            break;
        case ETCD_TIMEOUT:
            r = config__load_duration(ld, "etcd.timeout", k, v, &c->timeout_ms);
            if (r == 0 && c->timeout_ms == 0)
                r = config__fail_node(ld, v,
                                      "etcd.timeout must be more than 0, "
                                      "e.g. 5s");
            if (r == 0 && c->timeout_ms > TIMEOUT_MAX_MS)
                r = config__fail_node(ld, v,
                                      "etcd.timeout is longer than 1h: it "
                                      "bounds a single request, e.g. 5s");
            break;
        case ETCD_USERNAME:
            r = config__want_nonempty(ld, "etcd.username", k, v, &text);
            if (r == 0)
                r = config__set_str(ld, &c->username, text);
            break;
        case ETCD_PASSWORD_FILE:
            r = config__want_nonempty(ld, "etcd.password_file", k, v, &text);
            if (r == 0)
                r = config__set_str(ld, &c->password_file, text);
            break;
        case ETCD_TLS:
            r = load_tls(ld, v, tls_seen);
            break;
        default:
            r = key; /* config__section_key() has reported it */
            break;
        }
    }
    if (r < 0)
        return r;

    /* Checks that involve more than one key, made once the whole section
     * is known. */
    if ((!seen[ETCD_USERNAME]) != (!seen[ETCD_PASSWORD_FILE])) {
        if (seen[ETCD_USERNAME])
            return config__fail_node(ld, seen[ETCD_USERNAME],
                                     "etcd.username is set "
                                     "without etcd.password_file: give both or "
                                     "neither");
        return config__fail_node(ld, seen[ETCD_PASSWORD_FILE],
                                 "etcd.password_file "
                                 "is set without etcd.username: give both or "
                                 "neither");
    }
    if (tls_seen[TLS_CA] || tls_seen[TLS_CERT]) {
        bool https = false;

        for (size_t i = 0; i < c->n_endpoints; i++)
            https |= !strncmp(c->endpoints[i], "https://", 8);
        if (!https)
            return config__fail_node(ld, seen[ETCD_TLS],
                                     "etcd.tls is set but no "
                                     "endpoint in etcd.endpoints uses https://: "
                                     "change the endpoints or remove etcd.tls");
    }
    if (c->password_file)
        return load_password(ld, seen[ETCD_PASSWORD_FILE]);
    return 0;
}

/* ---- session ----------------------------------------------------- */

static const char *const session_keys[] = {"ttl"};

static int load_session(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(session_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "session", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key = config__section_key(ld, val, i, session_keys, ARRAY_SIZE(session_keys), seen,
                                      "in session");

        if (key < 0)
            return key;
        r = config__load_duration(ld, "session.ttl", k, v, &c->session_ttl_ms);
        if (r < 0)
            return r;
        if (c->session_ttl_ms % 1000 != 0)
            return config__fail_node(ld, v,
                                     "session.ttl must be a whole number of "
                                     "seconds, because etcd leases count seconds: "
                                     "e.g. 10s");
        if (c->session_ttl_ms < TTL_MIN_MS)
            return config__fail_node(ld, v,
                                     "session.ttl must be at least 2s, so "
                                     "that the lease can be renewed in time: e.g. "
                                     "10s");
        if (c->session_ttl_ms / 1000 > TTL_MAX_S)
            return config__fail_node(ld, v,
                                     "session.ttl is longer than etcd allows "
                                     "(%llus): e.g. 10s",
                                     TTL_MAX_S);
    }
    return 0;
}

/* ---- socket ------------------------------------------------------ */

/* Parses a socket mode: octal with a leading 0 ("0660") or YAML 1.2's "0o"
 * ("0o660"). A leading 0 is required because "660" read as decimal or as
 * octal gives different permissions, and a guess would be wrong for
 * someone. Returns 0, -1 for bad syntax or -2 for a value above 0777. */
static int parse_mode(const char *text, unsigned *mode)
{
    const char *p = text;
    unsigned long v;
    char *end;

    if (p[0] != '0')
        return -1;
    if (p[1] == 'o' || p[1] == 'O')
        p += 2;
    if (*p == '\0' && p != text + 1)
        return -1; /* "0o" with no digits */
    for (const char *q = p; *q != '\0'; q++) {
        if (*q < '0' || *q > '7')
            return -1;
    }
    errno = 0;
    v = strtoul(p, &end, 8);
    if (errno != 0 || *end != '\0' || v > 0777)
        return -2;
    *mode = (unsigned)v;
    return 0;
}

static const char *const socket_keys[] = {"path", "mode", "register_users", "register_groups"};

/* A list of user or group names (or numeric ids), resolved now, so that a
 * typo is refused at load rather than locking everyone out at run time. */
static int load_ids(struct loader *ld, const char *what, const struct node *v, int groups,
                    unsigned **out, size_t *n_out)
{
    struct shown a;
    int r = config__want_seq(ld, what, v);

    if (r != 0)
        return r < 0 ? r : 0;
    free(*out);
    *out = calloc(v->n_items ? v->n_items : 1, sizeof(**out));
    *n_out = 0;
    if (!*out)
        return config__fail_oom(ld);
    for (size_t i = 0; i < v->n_items; i++) {
        const char *text;
        char *end;
        unsigned long id;

        /* The item is its own key: an empty item has no key to point at. */
        if ((r = config__want_nonempty(ld, what, v->items[i], v->items[i], &text)) < 0)
            return r;
        errno = 0;
        id = strtoul(text, &end, 10);
        if (!errno && *end == '\0' && end != text && id < 0xffffffffUL) {
            (*out)[(*n_out)++] = (unsigned)id;
            continue;
        }
        if (groups) {
            struct group *g = getgrnam(text);
            if (!g)
                return config__fail_node(ld, v->items[i], "unknown group '%s' in %s",
                                         config__show(&a, text), what);
            (*out)[(*n_out)++] = (unsigned)g->gr_gid;
        } else {
            struct passwd *p = getpwnam(text);
            if (!p)
                return config__fail_node(ld, v->items[i], "unknown user '%s' in %s",
                                         config__show(&a, text), what);
            (*out)[(*n_out)++] = (unsigned)p->pw_uid;
        }
    }
    return 0;
}

static int load_socket(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(socket_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "socket", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        int key = config__section_key(ld, val, i, socket_keys, ARRAY_SIZE(socket_keys), seen,
                                      "in socket");

        if (key < 0)
            return key;
        if (key == 2 || key == 3) {
            r = load_ids(ld, key == 2 ? "socket.register_users" : "socket.register_groups", v,
                         key == 3, key == 2 ? &c->register_uids : &c->register_gids,
                         key == 2 ? &c->n_register_uids : &c->n_register_gids);
            if (r < 0)
                return r;
            c->register_limited = true;
            continue;
        }
        r = config__want_nonempty(ld, key == 0 ? "socket.path" : "socket.mode", k, v, &text);
        if (r < 0)
            return r;
        if (key == 0) {
            size_t len = strlen(text);

            if (len > SUN_PATH_MAX)
                return config__fail_node(ld, v,
                                         "socket.path is %zu bytes long, but "
                                         "a unix socket path holds at most %zu: "
                                         "choose a shorter path",
                                         len, SUN_PATH_MAX);
            r = config__set_str(ld, &c->socket_path, text);
            if (r < 0)
                return r;
        } else {
            r = parse_mode(text, &c->socket_mode);
            if (r == -2)
                return config__fail_node(ld, v,
                                         "bad socket.mode '%s': it is above "
                                         "0777; give permission bits only, e.g. "
                                         "\"0660\"",
                                         config__show(&a, text));
            if (r < 0)
                return config__fail_node(ld, v,
                                         "bad socket.mode '%s': write it in "
                                         "octal with a leading 0, e.g. \"0660\"",
                                         config__show(&a, text));
        }
    }
    return 0;
}

/* ---- cache ------------------------------------------------------- */

static const char *const cache_keys[] = {"dir", "idle"};

static int load_cache(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(cache_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "cache", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        int key =
            config__section_key(ld, val, i, cache_keys, ARRAY_SIZE(cache_keys), seen, "in cache");

        if (key < 0)
            return key;
        if (key == 0) {
            r = config__want_nonempty(ld, "cache.dir", k, v, &text);
            if (r == 0)
                r = config__set_str(ld, &c->cache_dir, text);
        } else {
            r = config__load_duration(ld, "cache.idle", k, v, &c->cache_idle_ms);
            if (r == 0 && c->cache_idle_ms == 0)
                r = config__fail_node(ld, v,
                                      "cache.idle must be more than 0, e.g. "
                                      "10m");
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- log --------------------------------------------------------- */

static const char *const log_keys[] = {"level", "format"};
/* In the order of their numbers in struct config's log_level. */
static const char *const log_levels[] = {"debug", "info", "warn", "error"};
/* In the order of their numbers in struct config's log_format. */
static const char *const log_formats[] = {"text", "json"};

static int load_log(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(log_keys)] = {NULL};
    int r = config__want_map(ld, "log", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        int key = config__section_key(ld, val, i, log_keys, ARRAY_SIZE(log_keys), seen, "in log");
        size_t l;

        if (key < 0)
            return key;
        if (key == 1) {
            r = config__want_text(ld, "log.format", k, v, &text);
            if (r < 0)
                return r;
            for (l = 0; l < ARRAY_SIZE(log_formats); l++) {
                if (!strcmp(text, log_formats[l]))
                    break;
            }
            if (l == ARRAY_SIZE(log_formats))
                return config__fail_node(ld, v,
                                         "bad log.format '%s': use text or "
                                         "json",
                                         config__show(&a, text));
            ld->cfg->log_format = (int)l;
            continue;
        }
        r = config__want_text(ld, "log.level", k, v, &text);
        if (r < 0)
            return r;
        for (l = 0; l < ARRAY_SIZE(log_levels); l++) {
            if (!strcmp(text, log_levels[l]))
                break;
        }
        if (l == ARRAY_SIZE(log_levels))
            return config__fail_node(ld, v,
                                     "bad log level '%s' for log.level: use "
                                     "debug, info, warn or error",
                                     config__show(&a, text));
        ld->cfg->log_level = (int)l;
    }
    return 0;
}

/* ---- checks ------------------------------------------------------ */

static const char *const checks_keys[] = {"exec"};

static int load_checks(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(checks_keys)] = {NULL};
    struct shown a;
    const char *text;
    int r = config__want_map(ld, "checks", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *v = val->items[2 * i + 1];
        int k = config__section_key(ld, val, i, checks_keys, ARRAY_SIZE(checks_keys), seen,
                                    "in checks");
        if (k < 0)
            return k;
        if ((r = config__want_text(ld, "checks.exec", seen[k], v, &text)) < 0)
            return r;
        if (!strcmp(text, "true"))
            ld->cfg->checks_exec = true;
        else if (!strcmp(text, "false"))
            ld->cfg->checks_exec = false;
        else
            return config__fail_node(ld, v,
                                     "checks.exec must be true or false, not "
                                     "'%s'",
                                     config__show(&a, text));
    }
    return 0;
}

/* ---- xds: the xDS (ADS) server for gRPC clients (docs/xds.md) ------- */

/* The xDS server has no authentication, so its TCP port may only listen on
 * a loopback address: 127.0.0.0/8, [::1] or localhost. */
static bool is_loopback_host(const char *s, size_t len)
{
    struct in_addr a4;
    char tmp[INET_ADDRSTRLEN + 1];

    if (len == 9 && !strncmp(s, "localhost", 9))
        return true;
    if (len == 5 && !strncmp(s, "[::1]", 5))
        return true;
    if (len >= sizeof(tmp))
        return false;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    return inet_pton(AF_INET, tmp, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

/* A header name gRPC can match: lower case (gRPC lower-cases the names it
 * receives, and its matchers compare them as given), made of letters,
 * digits, '-', '_' and '.', and not one of gRPC's own ("grpc-...") or a
 * pseudo-header, which gRPC's route matching never sees. Returns NULL or
 * what is wrong. */
static const char *check_header_name(const char *s)
{
    size_t len = strlen(s);

    if (len > XDS_HEADER_MAX)
        return "it is longer than 64 bytes";
    if (!strncmp(s, "grpc-", 5))
        return "gRPC clients never match headers that start with 'grpc-'";
    for (; *s != '\0'; s++) {
        char c = *s;

        if (c >= 'A' && c <= 'Z')
            return "write it in lower case";
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return "use letters, digits, '-', '_' and '.' only";
    }
    return NULL;
}

static const char *const xds_keys[] = {
    "enabled", "path", "mode", "tcp", "group_header", "idle", "test_send_host_names"};
enum { XDS_ENABLED, XDS_PATH, XDS_MODE, XDS_TCP, XDS_GROUP_HEADER, XDS_IDLE, XDS_TEST_HOST_NAMES };

static int load_xds(struct loader *ld, const struct node *val)
{
    static const char *const what[] = {"xds.enabled",
                                       "xds.path",
                                       "xds.mode",
                                       "xds.tcp",
                                       "xds.group_header",
                                       "xds.idle",
                                       "xds.test_send_host_names"};
    const struct node *seen[ARRAY_SIZE(xds_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "xds", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text, *why;
        char reason[160];
        struct validate_hostport hp;
        struct shown a;
        int key = config__section_key(ld, val, i, xds_keys, ARRAY_SIZE(xds_keys), seen, "in xds");

        if (key < 0)
            return key;
        r = config__want_nonempty(ld, what[key], k, v, &text);
        if (r < 0)
            return r;
        switch (key) {
        case XDS_ENABLED:
        case XDS_TEST_HOST_NAMES:
            if (config__parse_bool(v, key == XDS_ENABLED ? &c->xds_enabled
                                                         : &c->xds_test_host_names) < 0)
                return config__fail_node(ld, v,
                                         "bad %s '%s': write true or false, "
                                         "without quotes",
                                         what[key], config__show(&a, text));
            break;
        case XDS_PATH:
            if (strlen(text) > SUN_PATH_MAX)
                return config__fail_node(ld, v,
                                         "xds.path is %zu bytes long, but a "
                                         "unix socket path holds at most %zu: choose "
                                         "a shorter path",
                                         strlen(text), SUN_PATH_MAX);
            r = config__set_str(ld, &c->xds_path, text);
            break;
        case XDS_MODE:
            r = parse_mode(text, &c->xds_mode);
            if (r == -2)
                return config__fail_node(ld, v,
                                         "bad xds.mode '%s': it is above "
                                         "0777; give permission bits only, e.g. "
                                         "\"0660\"",
                                         config__show(&a, text));
            if (r < 0)
                return config__fail_node(ld, v,
                                         "bad xds.mode '%s': write it in "
                                         "octal with a leading 0, e.g. \"0660\"",
                                         config__show(&a, text));
            break;
        case XDS_TCP:
            r = validate_hostport(text, strlen(text), 0, &hp, reason, sizeof(reason));
            if (r == VALIDATE_PORT_RANGE)
                return config__fail_node(ld, v,
                                         "port %s out of range in xds.tcp: use "
                                         "1..65535",
                                         config__show(&a, text + hp.port_at));
            if (r != VALIDATE_OK)
                return config__fail_node(ld, v, "bad xds.tcp '%s': %s", config__show(&a, text),
                                         reason);
            if (!is_loopback_host(text, hp.host_len))
                return config__fail_node(ld, v,
                                         "xds.tcp '%s' is not a loopback "
                                         "address: the xDS server has no "
                                         "authentication, so use 127.0.0.1, [::1] or "
                                         "localhost",
                                         config__show(&a, text));
            r = config__set_str(ld, &c->xds_tcp, text);
            break;
        case XDS_GROUP_HEADER:
            why = check_header_name(text);
            if (why)
                return config__fail_node(ld, v, "bad xds.group_header '%s': %s",
                                         config__show(&a, text), why);
            r = config__set_str(ld, &c->xds_group_header, text);
            break;
        case XDS_IDLE:
            r = config__load_duration(ld, what[key], k, v, &c->xds_idle_ms);
            if (r == 0 && c->xds_idle_ms == 0)
                r = config__fail_node(ld, v,
                                      "xds.idle must be more than 0, e.g. "
                                      "60s");
            break;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Without xds.path, the xDS socket goes beside the main socket, so that
 * two agents with their own socket folders (tests, say) never share it;
 * with the default socket.path this is /run/discovery-agent/xds.sock.
 * Without xds.mode, it gets socket.mode: whoever may use the agent may use
 * its xDS server. */
int config__default_xds_path(struct loader *ld)
{
    struct config *c = ld->cfg;
    const char *slash = strrchr(c->socket_path, '/');
    size_t dir_len = slash ? (size_t)(slash - c->socket_path) + 1 : 0;
    size_t len = dir_len + sizeof(DA_DEFAULT_XDS_SOCKET_NAME) - 1;

    if (c->xds_mode == UINT_MAX)
        c->xds_mode = c->socket_mode;
    if (c->xds_path)
        return 0;
    if (len > SUN_PATH_MAX)
        return config__fail_at(ld, c->path, 0, 0, DA_EINVAL,
                               "the xDS socket beside "
                               "socket.path would be %zu bytes long, but a unix "
                               "socket path holds at most %zu: set xds.path",
                               len, SUN_PATH_MAX);
    c->xds_path = malloc(len + 1);
    if (!c->xds_path)
        return config__fail_oom(ld);
    memcpy(c->xds_path, c->socket_path, dir_len);
    memcpy(c->xds_path + dir_len, DA_DEFAULT_XDS_SOCKET_NAME, sizeof(DA_DEFAULT_XDS_SOCKET_NAME));
    return 0;
}

/* ---- dns: the DNS server (docs/dns.md) -------------------------------- */

static const char *const dns_keys[] = {"enabled", "listen",      "domain",
                                       "ttl",     "max_answers", "recursors"};
enum { DNS_ENABLED, DNS_LISTEN, DNS_DOMAIN, DNS_TTL, DNS_MAX_ANSWERS, DNS_RECURSORS };

static int load_dns_listen(struct loader *ld, const struct node *key, const struct node *val)
{
    static const struct config_ip_list spec = {
        .what = "dns.listen",
        .max = DNS_MAX_LISTEN,
        .example = DNS_DEFAULT_LISTEN " or [::1]:8600",
        .empty = "dns.listen is empty: list at least one address, e.g. [" DNS_DEFAULT_LISTEN
                 "], or set dns.enabled: false",
    };

    return config__load_ip_list(ld, &spec, key, val, &ld->cfg->dns_listen, &ld->cfg->n_dns_listen);
}

/* dns.recursors: IP addresses, each with a port or port 53. An empty list
 * is the default: no forwarding. */
static int load_dns_recursors(struct loader *ld, const struct node *val)
{
    static const struct config_ip_list spec = {
        .what = "dns.recursors",
        .flags = VALIDATE_PORT_OPTIONAL,
        .max = DNS_MAX_RECURSORS,
        .example = "10.0.0.2, 127.0.0.53:53 or [::1]:53",
        .port_hint = ", or none for 53",
    };

    return config__load_ip_list(ld, &spec, val, val, &ld->cfg->dns_recursors,
                                &ld->cfg->n_dns_recursors);
}

/* A recursor that is one of our own listeners would send every forwarded
 * query back to the agent (dns_recursor_loops, the rule dns_new() applies
 * too). Checked once the whole dns section is read, since dns.listen may
 * come after dns.recursors, or not at all (the default). */
static int check_dns_recursors(struct loader *ld, const struct node *recursors)
{
    const struct config *c = ld->cfg;
    const char *def = DNS_DEFAULT_LISTEN;
    const char *const *listen = c->n_dns_listen ? (const char *const *)c->dns_listen : &def;
    size_t n_listen = c->n_dns_listen ? c->n_dns_listen : 1;
    struct sockaddr_storage rec, lis;
    struct shown a, b;
    char why[128];

    for (size_t i = 0; recursors && i < c->n_dns_recursors; i++) {
        if (dns_addr_parse(c->dns_recursors[i], DNS_RECURSOR_PORT, &rec, why, sizeof(why)) < 0)
            continue; /* refused above already */
        for (size_t j = 0; j < n_listen; j++)
            if (dns_addr_parse(listen[j], 0, &lis, why, sizeof(why)) == 0 &&
                dns_recursor_loops(&rec, &lis))
                return config__fail_node(ld, recursors->items[i],
                                         "dns.recursors '%s' is the "
                                         "agent's own dns.listen %s: queries would come back "
                                         "to the agent; give another resolver",
                                         config__show(&a, c->dns_recursors[i]),
                                         config__show(&b, listen[j]));
    }
    return 0;
}

static int load_dns(struct loader *ld, const struct node *val)
{
    static const char *const what[] = {"dns.enabled", "dns.listen",      "dns.domain",
                                       "dns.ttl",     "dns.max_answers", "dns.recursors"};
    const struct node *seen[ARRAY_SIZE(dns_keys)] = {NULL}, *recursors = NULL;
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "dns", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        char why[160], *end;
        unsigned long long n;
        uint64_t ms;
        struct shown a;
        int key = config__section_key(ld, val, i, dns_keys, ARRAY_SIZE(dns_keys), seen, "in dns");

        if (key < 0)
            return key;
        if (key == DNS_LISTEN) {
            if ((r = load_dns_listen(ld, k, v)) < 0)
                return r;
            continue;
        }
        if (key == DNS_RECURSORS) {
            if ((r = load_dns_recursors(ld, v)) < 0)
                return r;
            recursors = v;
            continue;
        }
        r = config__want_nonempty(ld, what[key], k, v, &text);
        if (r < 0)
            return r;
        switch (key) {
        case DNS_ENABLED:
            if (config__parse_bool(v, &c->dns_enabled) < 0)
                return config__fail_node(ld, v,
                                         "bad dns.enabled '%s': write true or false, "
                                         "without quotes",
                                         config__show(&a, text));
            break;
        case DNS_DOMAIN:
            if (!dns_domain_valid(text, why, sizeof(why)))
                return config__fail_node(ld, v, "bad dns.domain: %s", why);
            r = config__set_str(ld, &c->dns_domain, text);
            break;
        case DNS_TTL:
            r = config__load_duration(ld, what[key], k, v, &ms);
            if (r == 0 && (ms % 1000 != 0 || ms / 1000 > DNS_MAX_TTL))
                return config__fail_node(ld, v,
                                         "bad dns.ttl '%s': DNS counts whole seconds, "
                                         "at most a day, e.g. 0s or 5s",
                                         config__show(&a, text));
            if (r == 0)
                c->dns_ttl = (uint32_t)(ms / 1000);
            break;
        case DNS_MAX_ANSWERS:
            errno = 0;
            n = strtoull(text, &end, 10);
            if (*text < '0' || *text > '9' || *end != '\0' || errno || n < 1 ||
                n > DNS_MAX_ANSWERS_LIMIT)
                return config__fail_node(ld, v,
                                         "bad dns.max_answers '%s': give a number from 1 "
                                         "to %d",
                                         config__show(&a, text), DNS_MAX_ANSWERS_LIMIT);
            c->dns_max_answers = (size_t)n;
            break;
        }
        if (r < 0)
            return r;
    }
    return check_dns_recursors(ld, recursors);
}

/* Without dns.listen, the default address. */
int config__default_dns_listen(struct loader *ld)
{
    struct config *c = ld->cfg;

    if (c->n_dns_listen > 0)
        return 0;
    c->dns_listen = calloc(1, sizeof(*c->dns_listen));
    if (!c->dns_listen)
        return config__fail_oom(ld);
    c->n_dns_listen = 1;
    c->dns_listen[0] = config__dup_str(ld, DNS_DEFAULT_LISTEN);
    return c->dns_listen[0] ? 0 : DA_ENOMEM;
}

/* ---- the top level ----------------------------------------------- */

static const char *const top_keys[] = {"etcd", "session", "socket", "cache", "log",      "services",
                                       "xds",  "checks",  "dns",    "http",  "locality", "traffic"};
enum {
    TOP_ETCD,
    TOP_SESSION,
    TOP_SOCKET,
    TOP_CACHE,
    TOP_LOG,
    TOP_SERVICES,
    TOP_XDS,
    TOP_CHECKS,
    TOP_DNS,
    TOP_HTTP,
    TOP_LOCALITY,
    TOP_TRAFFIC
};

int config__load_root(struct loader *ld, const struct node *root, bool is_main)
{
    const struct node *seen[ARRAY_SIZE(top_keys)] = {NULL};
    int r = 0;

    /* A file with no document, or with only "---", means all defaults. */
    if (!root || config__is_null(root))
        return 0;
    if (root->kind != NODE_MAP)
        return config__fail_node(ld, root,
                                 "the top level must be a mapping of "
                                 "sections such as 'etcd:' and 'services:', not %s",
                                 config__kind_name(root));
    for (size_t i = 0; i < root->n_items / 2 && r == 0; i++) {
        const struct node *k = root->items[2 * i];
        const struct node *v = root->items[2 * i + 1];
        int key;

        if (!is_main && (k->kind != NODE_SCALAR || strcmp(k->text, "services")))
            return config__fail_node(ld, k,
                                     "only 'services' may be set in conf.d "
                                     "files: move this to %s",
                                     ld->cfg->path);
        key = config__section_key(ld, root, i, top_keys, ARRAY_SIZE(top_keys), seen,
                                  "at the top level");
        switch (key) {
        case TOP_ETCD:
            r = load_etcd(ld, v);
            break;
        case TOP_SESSION:
            r = load_session(ld, v);
            break;
        case TOP_SOCKET:
            r = load_socket(ld, v);
            break;
        case TOP_CACHE:
            r = load_cache(ld, v);
            break;
        case TOP_LOG:
            r = load_log(ld, v);
            break;
        case TOP_SERVICES:
            r = config__load_services(ld, v);
            break;
        case TOP_CHECKS:
            r = load_checks(ld, v);
            break;
        case TOP_XDS:
            r = load_xds(ld, v);
            break;
        case TOP_DNS:
            r = load_dns(ld, v);
            break;
        case TOP_HTTP:
            r = config__load_http(ld, v);
            break;
        case TOP_LOCALITY:
            r = config__load_locality(ld, v);
            break;
        case TOP_TRAFFIC:
            r = config__load_traffic(ld, v);
            break;
        default:
            r = key;
            break;
        }
    }
    return r;
}
