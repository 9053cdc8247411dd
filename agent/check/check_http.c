/* http probes: a GET through the agent's shared libcurl client; any 2xx
 * passes. The reply is read as a stream of which only the first bytes are
 * kept (for the output line), so a large health page is not an error and
 * costs no memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_internal.h"
#include "error.h"

/* Bytes of the body kept for the output's first line. */
#define BODY_KEEP 200
/* The http client's cap on one pending chunk; larger chunks than libcurl
 * hands over (16 KiB) never queue, but two may. */
#define CHUNK_MAX (64 * 1024)

struct http_priv {
    char *url;
};

struct http_probe {
    struct check__probe base;
    http_req *req;
    uint64_t timeout_ms;
    size_t body_len;
    char body[BODY_KEEP];
};

static int http_init(checker *k, char *err, size_t errlen)
{
    struct http_priv *h = calloc(1, sizeof *h);
    size_t n;

    (void)err;
    (void)errlen;
    if (!h)
        return DA_ENOMEM;
    if (k->spec.http_url) {
        h->url = strdup(k->spec.http_url);
    } else {
        n = strlen(k->address) + sizeof "http:///health";
        h->url = malloc(n);
        if (h->url)
            snprintf(h->url, n, "http://%s/health", k->address);
    }
    if (!h->url) {
        free(h);
        return DA_ENOMEM;
    }
    k->priv = h;
    return 0;
}

static void http_fini(checker *k)
{
    struct http_priv *h = k->priv;

    if (h)
        free(h->url);
    free(h);
    k->priv = NULL;
}

static int got_chunk(http_req *req, const char *data, size_t len, void *arg)
{
    struct http_probe *p = arg;
    size_t room = sizeof p->body - p->body_len;

    (void)req;
    if (len > room)
        len = room;
    memcpy(p->body + p->body_len, data, len);
    p->body_len += len;
    return 0; /* read on to the end: a reply cut short is not a reply */
}

static void http_done(http_req *req, int err, long status, const char *body, size_t len, void *arg)
{
    struct http_probe *p = arg;
    char line[CHECK_OUTPUT_MAX];

    (void)body;
    (void)len;
    if (err == DA_ETIMEDOUT) {
        check__report(&p->base, false, "timed out after %llu ms",
                      (unsigned long long)p->timeout_ms);
    } else if (err < 0) {
        const char *why = http_req_errtext(req);
        check__report(&p->base, false, "http: %s", *why ? why : da_strerror(err));
    } else {
        check__first_line(line, sizeof line, p->body, p->body_len);
        check__report(&p->base, status >= 200 && status <= 299, "HTTP %ld%s%s", status,
                      *line ? ": " : "", line);
    }
    free(p);
}

static struct check__probe *http_start(checker *k)
{
    struct http_priv *h = k->priv;
    struct http_probe *p = calloc(1, sizeof *p);
    static const char *const headers[] = {"Accept: */*", "User-Agent: discovery-agent-check", NULL};
    struct http_req_opts o = {
        .url = h->url,
        .headers = headers,
        .timeout_ms = (long)k->spec.timeout_ms,
        .max_body = CHUNK_MAX,
        .on_chunk = got_chunk,
    };
    int rc;

    if (!p) {
        check__report_k(k, false, "out of memory");
        return NULL;
    }
    p->timeout_ms = k->spec.timeout_ms;
    rc = http_request(k->ctx->http, &o, http_done, p, &p->req);
    if (rc < 0) {
        free(p);
        check__report_k(k, false, "http: %s", da_strerror(rc));
        return NULL;
    }
    return &p->base;
}

static void http_abandon(struct check__probe *base)
{
    struct http_probe *p = check__container_of(base, struct http_probe, base);

    check__detach(base);
    http_cancel(p->req); /* http_done will not run */
    free(p);
}

const struct check__type check__http = {
    .init = http_init,
    .fini = http_fini,
    .start = http_start,
    .abandon = http_abandon,
};
