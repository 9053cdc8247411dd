/* The http: section: the operators' listener (agent/web/,
 * docs/operations.md). */
#include "config_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "defaults.h"
#include "error.h"
#include "validate.h"

/* The most addresses http.listen may list. */
#define HTTP_LISTEN_MAX 16

static const char *const http_keys[] = {"enabled", "listen", "max_connections", "max_request_bytes",
                                        "timeout"};
enum { HTTP_ENABLED, HTTP_LISTEN, HTTP_MAX_CONNECTIONS, HTTP_MAX_REQUEST, HTTP_TIMEOUT };

/* A whole number in [lo, hi] for what. */
static int load_number(struct loader *ld, const char *what, const struct node *key,
                       const struct node *val, long lo, long hi, long *out)
{
    struct shown a;
    const char *text;
    char *end;
    long v;
    int r = config__want_text(ld, what, key, val, &text);

    if (r < 0)
        return r;
    errno = 0;
    v = strtol(text, &end, 10);
    if (!val->plain || errno || *end || end == text || v < lo || v > hi)
        return config__fail_node(ld, val,
                                 "%s must be a whole number from %ld "
                                 "to %ld, not '%s'",
                                 what, lo, hi, config__show(&a, text));
    *out = v;
    return 0;
}

/* http.listen: IP literals only (the listener binds them; a name would be
 * resolved at every start to who knows what), each once. */
static int load_listen(struct loader *ld, const struct node *key, const struct node *val)
{
    static const struct config_ip_list spec = {
        .what = "http.listen",
        .flags = VALIDATE_LISTEN,
        .max = HTTP_LISTEN_MAX,
        .example = "127.0.0.1:8608 or [::1]:8608",
        .empty = "http.listen is empty: list at least one address, e.g. [" DA_DEFAULT_HTTP_LISTEN
                 "], or set http.enabled: false",
    };

    return config__load_ip_list(ld, &spec, key, val, &ld->cfg->http_listen,
                                &ld->cfg->n_http_listen);
}

int config__load_http(struct loader *ld, const struct node *val)
{
    static const char *const what[] = {"http.enabled", "http.listen", "http.max_connections",
                                       "http.max_request_bytes", "http.timeout"};
    const struct node *seen[ARRAY_SIZE(http_keys)] = {NULL};
    struct config *c = ld->cfg;
    int r = config__want_map(ld, "http", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        long n = 0;
        int key =
            config__section_key(ld, val, i, http_keys, ARRAY_SIZE(http_keys), seen, "in http");

        if (key < 0)
            return key;
        switch (key) {
        case HTTP_ENABLED:
            r = config__want_nonempty(ld, what[key], k, v, &text);
            if (r == 0 && config__parse_bool(v, &c->http_enabled) < 0)
                r = config__fail_node(ld, v,
                                      "bad http.enabled '%s': write true "
                                      "or false, without quotes",
                                      config__show(&a, text));
            break;
        case HTTP_LISTEN:
            r = load_listen(ld, k, v);
            break;
        case HTTP_MAX_CONNECTIONS:
            r = load_number(ld, what[key], k, v, 1, 10000, &n);
            c->http_max_connections = (unsigned)n;
            break;
        case HTTP_MAX_REQUEST:
            r = load_number(ld, what[key], k, v, 4096, 1048576, &n);
            c->http_max_request_bytes = (size_t)n;
            break;
        case HTTP_TIMEOUT:
            r = config__load_duration(ld, what[key], k, v, &c->http_timeout_ms);
            if (r == 0 && (c->http_timeout_ms < 1000 || c->http_timeout_ms % 1000))
                r = config__fail_node(ld, v,
                                      "http.timeout must be whole "
                                      "seconds, at least 1s, e.g. 10s");
            break;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

int config__default_http_listen(struct loader *ld)
{
    struct config *c = ld->cfg;

    if (c->http_listen)
        return 0;
    if (!(c->http_listen = calloc(1, sizeof(*c->http_listen))))
        return config__fail_oom(ld);
    if (!(c->http_listen[0] = config__dup_str(ld, DA_DEFAULT_HTTP_LISTEN)))
        return DA_ENOMEM;
    c->n_http_listen = 1;
    return 0;
}
