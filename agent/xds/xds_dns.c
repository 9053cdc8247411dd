#include "xds_dns.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"

#define UNUSED_MS (10u * 60u * 1000u)

enum { ANSWER_NONE, ANSWER_OK, ANSWER_FAILED };

struct name {
    xdns *d;
    char *host;
    int answer;
    char ip[INET6_ADDRSTRLEN];
    uint64_t answered; /* uv_now of the answer */
    uint64_t used;     /* uv_now of the last lookup */
    bool busy;         /* a uv_getaddrinfo in flight */
    uv_getaddrinfo_t req;
    struct name *next;
};

struct xdns {
    uv_loop_t *loop;
    xdns_cb cb;
    void *arg;
    struct name *names;
    size_t n;
    size_t busy;
    bool closing;
};

int xdns_new(xdns **out, uv_loop_t *loop, xdns_cb cb, void *arg)
{
    xdns *d = calloc(1, sizeof *d);

    *out = NULL;
    if (!d)
        return DA_ENOMEM;
    d->loop = loop;
    d->cb = cb;
    d->arg = arg;
    *out = d;
    return 0;
}

static void name_free(struct name *nm)
{
    free(nm->host);
    free(nm);
}

static void maybe_free(xdns *d)
{
    if (d->closing && !d->busy)
        free(d);
}

/* The first IPv4 answer, else the first IPv6 one. */
static bool pick(const struct addrinfo *res, char *ip, size_t len)
{
    const struct addrinfo *v6 = NULL;

    for (const struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET)
            return inet_ntop(AF_INET, &((const struct sockaddr_in *)a->ai_addr)->sin_addr, ip,
                             (socklen_t)len) != NULL;
        if (a->ai_family == AF_INET6 && !v6)
            v6 = a;
    }
    return v6 && inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)v6->ai_addr)->sin6_addr, ip,
                           (socklen_t)len) != NULL;
}

static void answered(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct name *nm = req->data;
    xdns *d = nm->d;
    char ip[INET6_ADDRSTRLEN] = "";
    int answer;
    bool changed;

    nm->busy = false;
    d->busy--;
    if (d->closing) {
        uv_freeaddrinfo(res);
        name_free(nm);
        maybe_free(d);
        return;
    }
    answer = status == 0 && pick(res, ip, sizeof ip) ? ANSWER_OK : ANSWER_FAILED;
    uv_freeaddrinfo(res);
    changed = answer != nm->answer || (answer == ANSWER_OK && strcmp(ip, nm->ip));
    if (changed) {
        if (answer == ANSWER_OK)
            log_debug("xds: %s is %s", nm->host, ip);
        else
            log_warn("xds: host name %s does not resolve (%s); its instances are not sent to "
                     "xDS clients",
                     nm->host, status ? uv_strerror(status) : "no IPv4 or IPv6 address");
    }
    nm->answer = answer;
    memcpy(nm->ip, ip, sizeof ip);
    nm->answered = uv_now(d->loop);
    if (changed)
        d->cb(d->arg);
}

static int start(xdns *d, struct name *nm)
{
    struct addrinfo hints;
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    nm->req.data = nm;
    rc = uv_getaddrinfo(d->loop, &nm->req, answered, nm->host, NULL, &hints);
    if (rc < 0)
        return rc;
    nm->busy = true;
    d->busy++;
    return 0;
}

/* Drops names nobody asked for lately (never one being looked up). */
static void prune(xdns *d)
{
    uint64_t now = uv_now(d->loop);

    for (struct name **pp = &d->names; *pp;) {
        struct name *nm = *pp;
        if (!nm->busy && now - nm->used > UNUSED_MS) {
            *pp = nm->next;
            name_free(nm);
            d->n--;
        } else {
            pp = &nm->next;
        }
    }
}

int xdns_lookup(xdns *d, const char *host, char *ip)
{
    uint64_t now = uv_now(d->loop);
    struct name *nm;

    for (nm = d->names; nm; nm = nm->next)
        if (!strcmp(nm->host, host))
            break;
    if (!nm) {
        if (d->n >= XDNS_MAX_NAMES)
            prune(d);
        if (d->n >= XDNS_MAX_NAMES)
            return -1;
        nm = calloc(1, sizeof *nm);
        if (!nm || !(nm->host = strdup(host))) {
            free(nm);
            return -1;
        }
        nm->d = d;
        if (start(d, nm) < 0) {
            name_free(nm);
            return -1;
        }
        nm->next = d->names;
        d->names = nm;
        d->n++;
    }
    nm->used = now;
    if (nm->answer == ANSWER_NONE)
        return 0;
    /* Known: answer now, and ask again in the background once it is old. */
    if (!nm->busy &&
        now - nm->answered > (nm->answer == ANSWER_OK ? XDNS_REFRESH_MS : XDNS_RETRY_MS))
        start(d, nm);
    if (nm->answer == ANSWER_FAILED)
        return -1;
    memcpy(ip, nm->ip, sizeof nm->ip);
    return 1;
}

xdns *xdns_close(xdns *d)
{
    if (!d)
        return NULL;
    d->closing = true;
    while (d->names) {
        struct name *nm = d->names;
        d->names = nm->next;
        /* A cancelled lookup still calls back (UV_ECANCELED), which frees
         * it; one already running on the pool finishes first. */
        if (nm->busy)
            uv_cancel((uv_req_t *)&nm->req);
        else
            name_free(nm);
    }
    maybe_free(d);
    return NULL;
}
