/* The DNS server on the loop: a UDP socket and a TCP listener per
 * dns.listen address, queries answered by the engine (dns_answer.c) from
 * the cache, and queries for services without a first list held until it
 * comes (or DNS_WAIT_MS passes).
 *
 * TCP follows RFC 7766: several queries per connection, answered as each
 * is ready; a cap on connections; a connection without a complete query
 * for DNS_TCP_IDLE_MS is closed, so a slow or half-open client holds its
 * slot no longer; a client that does not read its replies is not read
 * from past DNS_TCP_MAX_QUEUED bytes, and then times out.
 *
 * With dns.recursors, a query for a name outside the domain is handed to
 * the forwarder (dns_forward.c) and its client waits here, as a relay,
 * for the recursor's reply or SERVFAIL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "dns.h"
#include "dns_internal.h"
#include "error.h"
#include "log.h"
#include "validate.h"

#define RCODES 24

struct dns_listener {
    dns_server *d;
    char addr[VALIDATE_ADDRESS_MAX + 1];
    struct sockaddr_storage sa;
    uv_udp_t udp;
    uv_tcp_t tcp;
    bool udp_open, tcp_open;
};

struct dns_conn {
    dns_server *d;
    uv_tcp_t tcp;
    uv_timer_t idle;
    uint8_t *buf;
    size_t have, cap;
    size_t waiting;  /* its queries held for a first list */
    size_t relaying; /* and held for a recursor */
    bool reading, closing;
    int open_handles;
    struct dns_conn *prev, *next;
};

struct tcp_write {
    uv_write_t req;
    struct dns_conn *c;
    size_t len;
    uint8_t data[];
};

struct udp_send {
    uv_udp_send_t req;
    dns_server *d;
    size_t len;
    uint8_t data[];
};

/* A query held until its service has a first list. */
struct dns_wait {
    dns_server *d;
    struct dns_wait *prev, *next;
    uint64_t deadline;
    service *svc;
    cache_sub *sub;
    struct dns_listener *l; /* UDP: the socket and the peer */
    struct sockaddr_storage peer;
    struct dns_conn *conn; /* TCP; NULL once it closed */
    bool tcp;
    size_t len;
    uint8_t query[];
};

/* A client waiting for a recursor (forwarded queries). */
struct dns_relay {
    dns_server *d;
    struct dns_relay *prev, *next;
    struct dns_listener *l; /* UDP: the socket and the peer */
    struct sockaddr_storage peer;
    struct dns_conn *conn; /* TCP; NULL once it closed */
    bool tcp;
    size_t len;
    uint8_t query[]; /* for the SERVFAIL if no recursor answers */
};

struct dns_server {
    uv_loop_t *loop;
    cache *cache;
    struct dns_zone zone;
    char *domain;
    dns_engine *engine;
    uint64_t rng;
    uint64_t wait_ms, tcp_idle_ms;
    size_t tcp_max_conns;
    struct dns_listener *listeners;
    size_t n_listen;
    struct dns_conn *conns;
    size_t n_conns;
    struct dns_wait *wait_head, *wait_tail;
    size_t n_waiting;
    uv_timer_t wait_timer;
    /* dns.recursors, parsed by dns_new(); the forwarder from dns_start(). */
    char recursor_text[DNS_MAX_RECURSORS][VALIDATE_ADDRESS_MAX + 1];
    struct sockaddr_storage recursors[DNS_MAX_RECURSORS];
    size_t n_recursors;
    uint64_t forward_ms;
    size_t max_forwards;
    dns_fwd *fwd;
    struct dns_relay *relays;
    int open_handles; /* the server's own: the wait timer */
    bool started, closing;
    size_t udp_queued;
    /* recvmmsg(2) fills it with up to DNS_UDP_BATCH datagrams of 64 KiB at
     * most each (libuv's chunks); only the bytes received are touched. */
    uint8_t *udp_buf;
    /* counters for status */
    uint64_t queries, udp, tcp, truncated, dropped, tcp_refused, waited;
    uint64_t forwarded, forward_failed, forward_busy;
    uint64_t rcodes[RCODES];
    char last_nx_name[KNOT_DNAME_TXT_MAXLEN + 1];
    const char *last_nx_reason;
};

static const char *rcode_name(unsigned r)
{
    static const char *const names[RCODES] = {
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE",  NULL,       NULL,     NULL,      NULL,       NULL,
        "BADVERS", NULL,      NULL,       NULL,       NULL,     NULL,      NULL,       NULL};
    return r < RCODES && names[r] ? names[r] : "OTHER";
}

static size_t peer_size(const struct sockaddr *peer)
{
    return peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* ---- the cache as the engine sees it ------------------------------------ */

static int lookup(void *arg, const char *name, struct dns_svc *out)
{
    dns_server *d = arg;
    int err;
    service *svc = cache_get(d->cache, name, &err);

    if (!svc)
        return DNS_LOOKUP_FAIL;
    if (!service_ready(svc))
        return DNS_LOOKUP_WAIT;
    out->stale = service_stale(svc);
    out->revision = service_revision(svc);
    out->age_ms = uv_now(d->loop) - service_updated(svc);
    out->inst = service_instances(svc, &out->n);
    out->plan = service_plan(svc);
    return DNS_LOOKUP_OK;
}

/* ---- sending ------------------------------------------------------------ */

static void udp_sent(uv_udp_send_t *req, int status)
{
    struct udp_send *s = req->data;

    (void)status;
    s->d->udp_queued -= s->len;
    free(s);
}

static void send_udp(struct dns_listener *l, const struct sockaddr *peer, const uint8_t *data,
                     size_t len)
{
    dns_server *d = l->d;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    struct udp_send *s;

    if (!l->udp_open)
        return;
    if (uv_udp_try_send(&l->udp, &b, 1, peer) >= 0)
        return;
    /* The socket's buffer is full: queue a copy, within a bound, since a
     * client may ask faster than the kernel sends. */
    if (d->udp_queued + len > DNS_TCP_MAX_QUEUED * 4 || !(s = malloc(sizeof *s + len))) {
        d->dropped++;
        return;
    }
    s->d = d;
    s->len = len;
    s->req.data = s;
    memcpy(s->data, data, len);
    b = uv_buf_init((char *)s->data, (unsigned)len);
    if (uv_udp_send(&s->req, &l->udp, &b, 1, peer, udp_sent) < 0) {
        free(s);
        d->dropped++;
        return;
    }
    d->udp_queued += len;
}

static void conn_close(struct dns_conn *c);
static void conn_read(struct dns_conn *c, bool on);

static void tcp_written(uv_write_t *req, int status)
{
    struct tcp_write *w = req->data;
    struct dns_conn *c = w->c;

    free(w);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (!c->closing && !c->reading &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < DNS_TCP_MAX_QUEUED / 2)
        conn_read(c, true);
}

static void send_tcp(struct dns_conn *c, const uint8_t *data, size_t len)
{
    struct tcp_write *w;
    uv_buf_t b;

    if (c->closing)
        return;
    if (!(w = malloc(sizeof *w + 2 + len))) {
        conn_close(c);
        return;
    }
    w->c = c;
    w->len = len;
    w->req.data = w;
    knot_wire_write_u16(w->data, (uint16_t)len);
    memcpy(w->data + 2, data, len);
    b = uv_buf_init((char *)w->data, (unsigned)(len + 2));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, tcp_written) < 0) {
        free(w);
        conn_close(c);
    }
}

/* ---- answering ---------------------------------------------------------- */

static void count(dns_server *d, const struct dns_result *res)
{
    d->rcodes[res->rcode < RCODES ? res->rcode : RCODES - 1]++;
    if (res->truncated)
        d->truncated++;
    if (res->rcode == KNOT_RCODE_NXDOMAIN && res->reason) {
        d->last_nx_reason = res->reason;
        d->last_nx_name[0] = '\0';
        if (res->qname)
            knot_dname_to_str(d->last_nx_name, res->qname, sizeof d->last_nx_name);
    }
}

static void hold(dns_server *d, const struct dns_result *res, const uint8_t *query, size_t len,
                 struct dns_listener *l, const struct sockaddr *peer, struct dns_conn *c);
static void forward(dns_server *d, const uint8_t *query, size_t len, struct dns_listener *l,
                    const struct sockaddr *peer, struct dns_conn *c);

/* One query from a UDP peer (l, peer) or a TCP connection (c). */
static void handle(dns_server *d, const uint8_t *query, size_t len, bool waited,
                   struct dns_listener *l, const struct sockaddr *peer, struct dns_conn *c)
{
    struct dns_result res;
    const uint8_t *reply;
    size_t rlen;

    if (!waited) {
        d->queries++;
        if (c)
            d->tcp++;
        else
            d->udp++;
    }
    dns_answer(d->engine, &d->zone, query, len, c != NULL, waited, &d->rng, &reply, &rlen, &res);
    switch (res.outcome) {
    case DNS_DROP:
        d->dropped++;
        return;
    case DNS_WAIT:
        hold(d, &res, query, len, l, peer, c);
        return;
    case DNS_FORWARD:
        forward(d, query, len, l, peer, c);
        return;
    case DNS_REPLY:
        break;
    }
    count(d, &res);
    if (c)
        send_tcp(c, reply, rlen);
    else
        send_udp(l, peer, reply, rlen);
}

/* ---- queries waiting for a first list ----------------------------------- */

static void wait_free(struct dns_wait *w)
{
    dns_server *d = w->d;

    if (w->prev)
        w->prev->next = w->next;
    else
        d->wait_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        d->wait_tail = w->prev;
    d->n_waiting--;
    if (w->conn)
        w->conn->waiting--;
    cache_unsubscribe(w->sub);
    free(w);
}

static void wait_answer(struct dns_wait *w)
{
    dns_server *d = w->d;

    if (!w->tcp || w->conn)
        handle(d, w->query, w->len, true, w->l, (const struct sockaddr *)&w->peer, w->conn);
    wait_free(w);
}

static void on_service(service *svc, void *arg)
{
    struct dns_wait *w = arg;

    if (service_ready(svc))
        wait_answer(w);
}

static void wait_due(uv_timer_t *t)
{
    dns_server *d = t->data;
    uint64_t now = uv_now(d->loop);

    while (d->wait_head && d->wait_head->deadline <= now)
        wait_answer(d->wait_head);
    if (d->wait_head)
        uv_timer_start(&d->wait_timer, wait_due, d->wait_head->deadline - now, 0);
}

static void hold(dns_server *d, const struct dns_result *res, const uint8_t *query, size_t len,
                 struct dns_listener *l, const struct sockaddr *peer, struct dns_conn *c)
{
    struct dns_wait *w = NULL;
    int err;
    service *svc = cache_get(d->cache, res->service, &err);

    if (!svc || d->n_waiting >= DNS_MAX_WAITING || (c && c->waiting >= DNS_TCP_MAX_WAITING) ||
        !(w = calloc(1, sizeof *w + len))) {
        /* Past the caps the answer is the one the wait would end in. */
        handle(d, query, len, true, l, peer, c);
        return;
    }
    w->d = d;
    w->svc = svc;
    w->deadline = uv_now(d->loop) + d->wait_ms;
    w->l = l;
    if (peer)
        memcpy(&w->peer, peer, peer_size(peer));
    w->conn = c;
    w->tcp = c != NULL;
    w->len = len;
    memcpy(w->query, query, len);
    if (!(w->sub = cache_subscribe(svc, on_service, w))) {
        free(w);
        handle(d, query, len, true, l, peer, c);
        return;
    }
    w->prev = d->wait_tail;
    if (d->wait_tail)
        d->wait_tail->next = w;
    else
        d->wait_head = w;
    d->wait_tail = w;
    d->n_waiting++;
    d->waited++;
    if (c)
        c->waiting++;
    if (!uv_is_active((uv_handle_t *)&d->wait_timer))
        uv_timer_start(&d->wait_timer, wait_due, d->wait_ms, 0);
}

/* ---- queries forwarded to a recursor ------------------------------------ */

/* SERVFAIL for a query no recursor answers (or that none was asked). */
static void forward_failed(dns_server *d, const uint8_t *query, size_t len, struct dns_listener *l,
                           const struct sockaddr *peer, struct dns_conn *c)
{
    struct dns_result res;
    const uint8_t *reply;
    size_t rlen;

    dns_answer_rcode(d->engine, query, len, c != NULL, KNOT_RCODE_SERVFAIL, &reply, &rlen, &res);
    if (res.outcome != DNS_REPLY)
        return;
    count(d, &res);
    if (c)
        send_tcp(c, reply, rlen);
    else
        send_udp(l, peer, reply, rlen);
}

static void relay_free(struct dns_relay *r)
{
    dns_server *d = r->d;

    if (r->prev)
        r->prev->next = r->next;
    else
        d->relays = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->conn)
        r->conn->relaying--;
    free(r);
}

/* The forwarder's end of a query: the reply, relayed as the recursor
 * wrote it (TC included) under the client's ID, or SERVFAIL. */
static void relayed(void *arg, const uint8_t *reply, size_t len)
{
    struct dns_relay *r = arg;
    dns_server *d = r->d;
    const struct sockaddr *peer = (const struct sockaddr *)&r->peer;

    if (!reply)
        d->forward_failed++;
    if (r->tcp && !r->conn) {
        /* The client hung up meanwhile. */
    } else if (!reply) {
        forward_failed(d, r->query, r->len, r->l, peer, r->conn);
    } else {
        struct dns_result res = {.rcode = knot_wire_get_rcode(reply),
                                 .truncated = knot_wire_get_tc(reply)};
        count(d, &res);
        if (r->conn)
            send_tcp(r->conn, reply, len);
        else
            send_udp(r->l, peer, reply, len);
    }
    relay_free(r);
}

static void forward(dns_server *d, const uint8_t *query, size_t len, struct dns_listener *l,
                    const struct sockaddr *peer, struct dns_conn *c)
{
    struct dns_relay *r;

    /* Past the caps, SERVFAIL: the query is one the agent forwards, and
     * another server (or a later try) may well answer it. */
    if (!d->fwd || dns_fwd_full(d->fwd, c != NULL) || (c && c->relaying >= DNS_TCP_MAX_WAITING)) {
        d->forward_busy++;
        forward_failed(d, query, len, l, peer, c);
        return;
    }
    if (!(r = calloc(1, sizeof *r + len))) {
        d->forward_busy++;
        forward_failed(d, query, len, l, peer, c);
        return;
    }
    r->d = d;
    r->l = l;
    if (peer)
        memcpy(&r->peer, peer, peer_size(peer));
    r->conn = c;
    r->tcp = c != NULL;
    r->len = len;
    memcpy(r->query, query, len);
    if (dns_fwd_query(d->fwd, query, len, c != NULL, relayed, r) < 0) {
        free(r);
        d->forward_failed++;
        forward_failed(d, query, len, l, peer, c);
        return;
    }
    d->forwarded++;
    r->next = d->relays;
    if (d->relays)
        d->relays->prev = r;
    d->relays = r;
    if (c)
        c->relaying++;
}

/* ---- UDP ---------------------------------------------------------------- */

static void udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct dns_listener *l = h->data;

    (void)suggested;
    *buf = uv_buf_init((char *)l->d->udp_buf, DNS_UDP_BATCH * 65536);
}

static void udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *peer,
                     unsigned flags)
{
    struct dns_listener *l = h->data;

    /* With recvmmsg, a last call (nread 0, UV_UDP_MMSG_FREE) hands the
     * buffer back: it is ours for good, nothing to do. */
    if (nread <= 0 || !peer)
        return;
    if (flags & UV_UDP_PARTIAL) {
        l->d->dropped++;
        return;
    }
    handle(l->d, (const uint8_t *)buf->base, (size_t)nread, false, l, peer, NULL);
}

/* ---- TCP ---------------------------------------------------------------- */

/* One of the server's handles closed: the last frees the server, and the
 * listeners' array, which holds handles of its own, only then. */
static void server_unref(dns_server *d)
{
    if (--d->open_handles > 0 || !d->closing)
        return;
    free(d->listeners);
    free(d);
}

static void conn_closed(uv_handle_t *h)
{
    struct dns_conn *c = h->data;
    dns_server *d = c->d;

    if (--c->open_handles > 0)
        return;
    free(c->buf);
    free(c);
    server_unref(d);
}

static void conn_close(struct dns_conn *c)
{
    dns_server *d = c->d;

    if (c->closing)
        return;
    c->closing = true;
    for (struct dns_wait *w = d->wait_head; w && c->waiting; w = w->next)
        if (w->conn == c) {
            w->conn = NULL;
            c->waiting--;
        }
    for (struct dns_relay *r = d->relays; r && c->relaying; r = r->next)
        if (r->conn == c) {
            r->conn = NULL;
            c->relaying--;
        }
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    d->n_conns--;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    uv_close((uv_handle_t *)&c->idle, conn_closed);
}

static void conn_idle(uv_timer_t *t)
{
    conn_close(t->data);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct dns_conn *c = h->data;

    (void)suggested;
    if (c->have == c->cap) {
        /* Grows to the frame being read, never past one whole query. */
        size_t cap = c->cap ? c->cap * 2 : 512;
        uint8_t *b;
        if (c->have >= 2 && 2 + (size_t)knot_wire_read_u16(c->buf) > cap)
            cap = 2 + (size_t)knot_wire_read_u16(c->buf);
        if (cap > 2 + DNS_MAX_QUERY)
            cap = 2 + DNS_MAX_QUERY;
        if (cap <= c->cap || !(b = realloc(c->buf, cap))) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->buf = b;
        c->cap = cap;
    }
    *buf = uv_buf_init((char *)c->buf + c->have, (unsigned)(c->cap - c->have));
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read(struct dns_conn *c, bool on)
{
    if (on && !c->reading && uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read_cb) == 0)
        c->reading = true;
    else if (!on && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dns_conn *c = s->data;
    dns_server *d = c->d;
    size_t off = 0;

    (void)buf;
    if (nread < 0) {
        /* EOF, an error, or a frame we would not take (UV_ENOBUFS). */
        conn_close(c);
        return;
    }
    c->have += (size_t)nread;
    while (!c->closing && c->have - off >= 2) {
        size_t mlen = knot_wire_read_u16(c->buf + off);
        if (mlen < KNOT_WIRE_HEADER_SIZE || mlen > DNS_MAX_QUERY) {
            conn_close(c);
            return;
        }
        if (c->have - off < 2 + mlen)
            break;
        handle(d, c->buf + off + 2, mlen, false, NULL, NULL, c);
        off += 2 + mlen;
        uv_timer_start(&c->idle, conn_idle, d->tcp_idle_ms, 0);
    }
    if (c->closing)
        return;
    memmove(c->buf, c->buf + off, c->have - off);
    c->have -= off;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > DNS_TCP_MAX_QUEUED)
        conn_read(c, false);
}

static void tcp_refused_closed(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct dns_listener *l = server->data;
    dns_server *d = l->d;
    struct dns_conn *c;

    if (status < 0)
        return;
    if (d->n_conns >= d->tcp_max_conns || !(c = calloc(1, sizeof *c))) {
        uv_tcp_t *t = malloc(sizeof *t);
        d->tcp_refused++;
        if (t && uv_tcp_init(d->loop, t) == 0) {
            uv_accept(server, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, tcp_refused_closed);
        } else {
            free(t);
        }
        return;
    }
    c->d = d;
    uv_tcp_init(d->loop, &c->tcp);
    uv_timer_init(d->loop, &c->idle);
    c->tcp.data = c->idle.data = c;
    c->open_handles = 2;
    d->open_handles++;
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    d->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->idle, conn_idle, d->tcp_idle_ms, 0);
    conn_read(c, true);
}

/* ---- lifetime ----------------------------------------------------------- */

static int parse_listen(const char *s, struct sockaddr_storage *sa, char *err, size_t errlen)
{
    char why[128];

    if (dns_addr_parse(s, 0, sa, why, sizeof why) < 0) {
        snprintf(err, errlen, "dns.listen '%s': %s", s, why);
        return DA_EINVAL;
    }
    return 0;
}

/* dns.recursors: IP addresses, port 53 unless given, none that would send
 * a query back to one of our own listeners. */
static int parse_recursors(dns_server *d, const struct dns_options *o, char *err, size_t errlen)
{
    char why[128];

    if (o->n_recursors > DNS_MAX_RECURSORS) {
        snprintf(err, errlen, "dns.recursors lists %zu addresses: at most %d", o->n_recursors,
                 DNS_MAX_RECURSORS);
        return DA_EINVAL;
    }
    for (size_t i = 0; i < o->n_recursors; i++) {
        const char *s = o->recursors[i];
        if (dns_addr_parse(s, DNS_RECURSOR_PORT, &d->recursors[i], why, sizeof why) < 0) {
            snprintf(err, errlen, "dns.recursors '%s': %s", s, why);
            return DA_EINVAL;
        }
        for (size_t j = 0; j < d->n_listen; j++)
            if (dns_recursor_loops(&d->recursors[i], &d->listeners[j].sa)) {
                snprintf(err, errlen,
                         "dns.recursors '%s' is the agent's own dns.listen '%s': a query "
                         "would come back to the agent",
                         s, d->listeners[j].addr);
                return DA_EINVAL;
            }
        snprintf(d->recursor_text[i], sizeof d->recursor_text[i], "%s", s);
    }
    d->n_recursors = o->n_recursors;
    d->zone.forward = d->n_recursors > 0;
    return 0;
}

int dns_new(dns_server **out, uv_loop_t *loop, cache *c, const struct dns_options *o, char *err,
            size_t errlen)
{
    dns_server *d = calloc(1, sizeof *d);
    int rc = DA_ENOMEM;

    *out = NULL;
    if (!d)
        return DA_ENOMEM;
    d->loop = loop;
    d->cache = c;
    d->wait_ms = o->wait_ms ? o->wait_ms : DNS_WAIT_MS;
    d->tcp_idle_ms = o->tcp_idle_ms ? o->tcp_idle_ms : DNS_TCP_IDLE_MS;
    d->tcp_max_conns = o->tcp_max_conns ? o->tcp_max_conns : DNS_TCP_MAX_CONNS;
    d->zone.ttl = o->ttl;
    d->zone.max_answers = o->max_answers ? o->max_answers : DNS_DEFAULT_MAX_ANSWERS;
    d->zone.lookup = lookup;
    d->zone.arg = d;
    d->domain = strdup(o->domain ? o->domain : DNS_DEFAULT_DOMAIN);
    d->udp_buf = malloc(DNS_UDP_BATCH * 65536);
    if (!d->domain || !d->udp_buf || dns_engine_new(&d->engine) < 0)
        goto fail;
    rc = dns_domain_parse(d->domain, d->zone.domain, &d->zone.domain_size, err, errlen);
    if (rc < 0)
        goto fail;
    if (getrandom(&d->rng, sizeof d->rng, 0) != sizeof d->rng || !d->rng)
        d->rng = (uint64_t)uv_hrtime() | 1;
    /* The SOA's serial: when this agent started, so that a restart shows. */
    d->zone.serial = (uint32_t)time(NULL);
    d->n_listen = o->n_listen;
    d->listeners = calloc(o->n_listen ? o->n_listen : 1, sizeof *d->listeners);
    rc = DA_ENOMEM;
    if (!d->listeners)
        goto fail;
    for (size_t i = 0; i < o->n_listen; i++) {
        struct dns_listener *l = &d->listeners[i];
        l->d = d;
        snprintf(l->addr, sizeof l->addr, "%s", o->listen[i]);
        if ((rc = parse_listen(o->listen[i], &l->sa, err, errlen)) < 0)
            goto fail;
    }
    d->forward_ms = o->forward_ms;
    d->max_forwards = o->max_forwards;
    if ((rc = parse_recursors(d, o, err, errlen)) < 0)
        goto fail;
    uv_timer_init(loop, &d->wait_timer);
    d->wait_timer.data = d;
    d->open_handles = 1;
    *out = d;
    return 0;
fail:
    dns_engine_free(d->engine);
    free(d->udp_buf);
    free(d->listeners);
    free(d->domain);
    free(d);
    return rc;
}

static void close_listeners(dns_server *d);

int dns_start(dns_server *d, char *err, size_t errlen)
{
    int rc = 0;

    for (size_t i = 0; i < d->n_listen; i++) {
        struct dns_listener *l = &d->listeners[i];
        const struct sockaddr *sa = (const struct sockaddr *)&l->sa;
        const char *proto = "udp";

        /* recvmmsg: one system call reads a burst of queries. */
        uv_udp_init_ex(d->loop, &l->udp, l->sa.ss_family | UV_UDP_RECVMMSG);
        uv_tcp_init(d->loop, &l->tcp);
        l->udp.data = l->tcp.data = l;
        l->udp_open = l->tcp_open = true;
        d->open_handles += 2;
        rc = uv_udp_bind(&l->udp, sa, 0);
        if (rc == 0)
            rc = uv_udp_recv_start(&l->udp, udp_alloc, udp_recv);
        if (rc == 0) {
            proto = "tcp";
            rc = uv_tcp_bind(&l->tcp, sa, 0);
        }
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&l->tcp, 128, on_connection);
        if (rc < 0) {
            snprintf(err, errlen,
                     "dns.listen %s (%s): %s; give dns.listen a free address, or set "
                     "dns.enabled: false",
                     l->addr, proto, uv_strerror(rc));
            close_listeners(d);
            return DA_EINVAL;
        }
    }
    if (d->n_recursors > 0) {
        rc = dns_fwd_new(&d->fwd, d->loop, d->recursors, d->n_recursors, d->forward_ms,
                         d->max_forwards, dns_random(&d->rng), err, errlen);
        if (rc < 0) {
            close_listeners(d);
            return rc;
        }
    }
    d->started = true;
    for (size_t i = 0; i < d->n_listen; i++)
        log_info("dns: answering for %s. on %s (udp, tcp)", d->domain, d->listeners[i].addr);
    for (size_t i = 0; i < d->n_recursors; i++)
        log_info("dns: names outside %s. go to %s", d->domain, d->recursor_text[i]);
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    struct dns_listener *l = h->data;
    dns_server *d = l->d;

    server_unref(d);
}

static void close_listeners(dns_server *d)
{
    for (size_t i = 0; i < d->n_listen; i++) {
        struct dns_listener *l = &d->listeners[i];
        if (l->udp_open) {
            l->udp_open = false;
            uv_close((uv_handle_t *)&l->udp, listener_closed);
        }
        if (l->tcp_open) {
            l->tcp_open = false;
            uv_close((uv_handle_t *)&l->tcp, listener_closed);
        }
    }
}

static void server_timer_closed(uv_handle_t *h)
{
    dns_server *d = h->data;

    server_unref(d);
}

dns_server *dns_close(dns_server *d)
{
    if (!d || d->closing)
        return NULL;
    /* Waiting queries go unanswered: the agent is stopping. */
    while (d->wait_head)
        wait_free(d->wait_head);
    /* So do forwarded ones: the forwarder drops them without calling
     * back, and their relays go with them. */
    d->fwd = dns_fwd_close(d->fwd);
    while (d->relays)
        relay_free(d->relays);
    while (d->conns)
        conn_close(d->conns);
    d->closing = true;
    close_listeners(d);
    d->engine = dns_engine_free(d->engine);
    free(d->udp_buf);
    d->udp_buf = NULL;
    free(d->domain);
    d->domain = NULL;
    uv_close((uv_handle_t *)&d->wait_timer, server_timer_closed);
    return NULL;
}

json_t *dns_status(const dns_server *d)
{
    json_t *o = json_object(), *listen = json_array(), *rc = json_object();

    if (!o || !listen || !rc) {
        json_decref(o);
        json_decref(listen);
        json_decref(rc);
        return NULL;
    }
    for (size_t i = 0; d && i < d->n_listen; i++)
        json_array_append_new(listen, json_string(d->listeners[i].addr));
    json_object_set_new(o, "enabled", json_boolean(d != NULL));
    json_object_set_new(o, "listen", listen);
    if (!d) {
        json_decref(rc);
        return o;
    }
    for (unsigned r = 0; r < RCODES; r++)
        if (d->rcodes[r])
            json_object_set_new(rc, rcode_name(r), json_integer((json_int_t)d->rcodes[r]));
    json_object_set_new(o, "domain", json_string(d->domain ? d->domain : ""));
    json_object_set_new(o, "ttl", json_integer(d->zone.ttl));
    json_object_set_new(o, "queries", json_integer((json_int_t)d->queries));
    json_object_set_new(o, "udp", json_integer((json_int_t)d->udp));
    json_object_set_new(o, "tcp", json_integer((json_int_t)d->tcp));
    json_object_set_new(o, "rcodes", rc);
    json_object_set_new(o, "truncated", json_integer((json_int_t)d->truncated));
    json_object_set_new(o, "dropped", json_integer((json_int_t)d->dropped));
    json_object_set_new(o, "waited", json_integer((json_int_t)d->waited));
    json_object_set_new(o, "waiting", json_integer((json_int_t)d->n_waiting));
    json_object_set_new(o, "tcp_connections", json_integer((json_int_t)d->n_conns));
    json_object_set_new(o, "tcp_refused", json_integer((json_int_t)d->tcp_refused));
    if (d->n_recursors > 0) {
        json_t *rec = json_array();
        for (size_t i = 0; rec && i < d->n_recursors; i++)
            json_array_append_new(rec, json_string(d->recursor_text[i]));
        json_object_set_new(o, "recursors", rec);
    }
    json_object_set_new(o, "forwarded", json_integer((json_int_t)d->forwarded));
    json_object_set_new(o, "forward_failed", json_integer((json_int_t)d->forward_failed));
    json_object_set_new(o, "forward_busy", json_integer((json_int_t)d->forward_busy));
    json_object_set_new(o, "forwarding", json_integer((json_int_t)dns_fwd_in_flight(d->fwd)));
    if (d->last_nx_reason)
        json_object_set_new(
            o, "last_nxdomain",
            json_pack("{s:s, s:s}", "name", d->last_nx_name, "reason", d->last_nx_reason));
    return o;
}
