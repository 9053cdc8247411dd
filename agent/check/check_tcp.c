/* tcp probes: a connect to host:port within the timeout. An IP literal is
 * parsed once when the checker starts; a host name is resolved on every
 * probe (uv_getaddrinfo, on libuv's thread pool) so that a moved name is
 * followed, and the first address returned is tried. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_internal.h"
#include "error.h"

struct tcp_priv {
    char host[CHECK_ADDRESS_MAX + 1];
    char port[8];
    bool literal;
    struct sockaddr_storage sa; /* when literal */
};

struct tcp_probe {
    struct check__probe base;
    uv_getaddrinfo_t gai;
    uv_tcp_t tcp;
    uv_connect_t conn;
    bool resolving; /* gai pending: its callback frees p if nothing else is open */
    bool tcp_open;  /* tcp initialised and not yet closed */
};

static int tcp_init(checker *k, char *err, size_t errlen)
{
    struct tcp_priv *t = calloc(1, sizeof *t);
    int port;

    if (!t)
        return DA_ENOMEM;
    if (check__split_address(k->address, t->host, sizeof t->host, &port) < 0) {
        snprintf(err, errlen, "tcp check: address \"%s\" is not host:port", k->address);
        free(t);
        return DA_EINVAL;
    }
    snprintf(t->port, sizeof t->port, "%d", port);
    t->literal = uv_ip4_addr(t->host, port, (struct sockaddr_in *)&t->sa) == 0 ||
                 uv_ip6_addr(t->host, port, (struct sockaddr_in6 *)&t->sa) == 0;
    k->priv = t;
    return 0;
}

static void tcp_fini(checker *k)
{
    free(k->priv);
    k->priv = NULL;
}

static void tcp_closed(uv_handle_t *h)
{
    struct tcp_probe *p = h->data;

    p->tcp_open = false;
    if (!p->resolving)
        free(p);
}

static void tcp_close(struct tcp_probe *p)
{
    if (p->tcp_open && !uv_is_closing((uv_handle_t *)&p->tcp))
        uv_close((uv_handle_t *)&p->tcp, tcp_closed);
}

static void connected(uv_connect_t *req, int status)
{
    struct tcp_probe *p = req->data;

    /* UV_ECANCELED: abandoned, the handle is already closing. */
    if (status == 0)
        check__report(&p->base, true, "connected");
    else if (status != UV_ECANCELED)
        check__report(&p->base, false, "connect: %s", strerror(-status));
    tcp_close(p);
}

/* Starts the connect. On failure the handle is closing and frees p. */
static int tcp_connect(struct tcp_probe *p, uv_loop_t *loop, const struct sockaddr *sa)
{
    int rc;

    uv_tcp_init(loop, &p->tcp);
    p->tcp.data = p;
    p->tcp_open = true;
    p->conn.data = p;
    rc = uv_tcp_connect(&p->conn, &p->tcp, sa, connected);
    if (rc < 0)
        tcp_close(p);
    return rc;
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct tcp_probe *p = req->data;
    checker *k = p->base.k;

    p->resolving = false;
    if (!k) {
        /* Abandoned while resolving. */
        uv_freeaddrinfo(res);
        free(p);
        return;
    }
    if (status < 0 || !res) {
        const char *host = ((struct tcp_priv *)k->priv)->host;
        check__report(&p->base, false, "resolve %s: %s", host,
                      status < 0 ? uv_strerror(status) : "no address");
        uv_freeaddrinfo(res);
        free(p);
        return;
    }
    int rc = tcp_connect(p, k->ctx->loop, res->ai_addr);
    uv_freeaddrinfo(res);
    if (rc < 0)
        check__report(&p->base, false, "connect: %s", strerror(-rc));
}

static struct check__probe *tcp_start(checker *k)
{
    struct tcp_priv *t = k->priv;
    struct tcp_probe *p = calloc(1, sizeof *p);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc;

    if (!p) {
        check__report_k(k, false, "out of memory");
        return NULL;
    }
    if (t->literal) {
        /* The probe is attached only when we return it, so a connect that
         * fails at once is reported without it. */
        rc = tcp_connect(p, k->ctx->loop, (const struct sockaddr *)&t->sa);
        if (rc < 0) {
            check__report_k(k, false, "connect: %s", strerror(-rc));
            return NULL;
        }
        return &p->base;
    }
    p->gai.data = p;
    rc = uv_getaddrinfo(k->ctx->loop, &p->gai, resolved, t->host, t->port, &hints);
    if (rc < 0) {
        free(p);
        check__report_k(k, false, "resolve %s: %s", t->host, uv_strerror(rc));
        return NULL;
    }
    p->resolving = true;
    return &p->base;
}

static void tcp_abandon(struct check__probe *base)
{
    struct tcp_probe *p = check__container_of(base, struct tcp_probe, base);

    check__detach(base);
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->gai); /* resolved() runs either way and frees p */
    tcp_close(p);
}

const struct check__type check__tcp = {
    .init = tcp_init,
    .fini = tcp_fini,
    .start = tcp_start,
    .abandon = tcp_abandon,
};
