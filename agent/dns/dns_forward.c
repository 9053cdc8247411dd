/* Forwarding to dns.recursors: a query for a name outside the domain goes
 * to a recursor as the client wrote it, under an ID of ours, and the reply
 * goes back to the client under its own ID (docs/dns.md, "Forwarding").
 *
 * - The transport is the client's. A UDP query goes out over UDP, from one
 *   socket per address family; its ID (random, unique among the queries in
 *   flight) tells the replies apart, and a reply counts only when it comes
 *   from a recursor the query went to and holds its question. A truncated
 *   reply (TC) is relayed as it is: the client asks again over TCP, and
 *   that query goes out over TCP, one connection for it alone.
 * - Each recursor has try_ms to answer; then the next is asked (a late
 *   UDP reply of an earlier one still counts). A recursor that cannot be
 *   reached (a refused connection, a send that fails) is passed over at
 *   once. After the last, the callback gets NULL and the server answers
 *   SERVFAIL.
 * - At most max queries are in flight, DNS_MAX_TCP_FORWARDS of them over
 *   TCP; the server answers SERVFAIL past that (dns_fwd_full).
 *
 * Everything runs on the loop; nothing here logs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dns_internal.h"
#include "dns_rules.h"
#include "error.h"
#include "validate.h"

/* ---- the rules the config loader shares (dns_rules.h) ------------------- */

int dns_addr_parse(const char *s, uint16_t default_port, struct sockaddr_storage *sa, char *why,
                   size_t whylen)
{
    struct validate_hostport hp;
    char reason[128];
    int r = validate_hostport(s, strlen(s), default_port ? VALIDATE_PORT_OPTIONAL : 0, &hp, reason,
                              sizeof reason);

    memset(sa, 0, sizeof *sa);
    if (r == VALIDATE_PORT_RANGE) {
        snprintf(why, whylen, "the port must be 1..65535");
        return DA_EINVAL;
    }
    if (r != VALIDATE_OK) {
        snprintf(why, whylen, "%s", reason);
        return DA_EINVAL;
    }
    if (hp.ipv6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(hp.port ? hp.port : default_port);
        r = inet_pton(AF_INET6, hp.host, &a->sin6_addr);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)sa;
        a->sin_family = AF_INET;
        a->sin_port = htons(hp.port ? hp.port : default_port);
        r = inet_pton(AF_INET, hp.host, &a->sin_addr);
    }
    if (r != 1) {
        memset(sa, 0, sizeof *sa);
        snprintf(why, whylen, "the host must be an IP address");
        return DA_EINVAL;
    }
    return 0;
}

static uint16_t addr_port(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)a)->sin6_port)
                                    : ntohs(((const struct sockaddr_in *)a)->sin_port);
}

/* 0.0.0.0 and :: reach this host, as loopback addresses do. */
static bool addr_local(const struct sockaddr_storage *a, bool loopback)
{
    if (a->ss_family == AF_INET6) {
        const struct in6_addr *ip = &((const struct sockaddr_in6 *)a)->sin6_addr;
        return IN6_IS_ADDR_UNSPECIFIED(ip) || (loopback && IN6_IS_ADDR_LOOPBACK(ip));
    }
    uint32_t ip = ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr);
    return ip == INADDR_ANY || (loopback && ip >> 24 == 127);
}

static bool addr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family || addr_port(a) != addr_port(b))
        return false;
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
}

bool dns_recursor_loops(const struct sockaddr_storage *recursor,
                        const struct sockaddr_storage *listen)
{
    bool listen_any = addr_local(listen, false);

    if (addr_port(recursor) != addr_port(listen))
        return false;
    if (addr_same(recursor, listen))
        return true;
    /* A listener takes its own family's datagrams; an IPv6 wildcard one
     * (libuv binds it dual-stack) IPv4's too. */
    if (recursor->ss_family != listen->ss_family && !(listen_any && listen->ss_family == AF_INET6))
        return false;
    /* A wildcard listener takes what goes to any address of the host,
     * loopback included; and 0.0.0.0 or :: as a destination is the host
     * itself, which a loopback listener answers. */
    return (listen_any && addr_local(recursor, true)) ||
           (addr_local(recursor, false) && addr_local(listen, true));
}

/* ---- the forwarder ------------------------------------------------------ */

struct fwd_tcp;

struct fwd_query {
    dns_fwd *f;
    struct fwd_query *prev, *next; /* in the order of their deadlines */
    uint64_t deadline;
    size_t tried; /* recursors asked; the last is tried - 1 */
    uint16_t id, client_id;
    bool tcp;
    dns_fwd_cb cb;
    void *arg;
    struct fwd_tcp *conn;       /* TCP: the connection of the last try */
    knot_dname_storage_t qname; /* lower case */
    uint16_t qtype, qclass;
    size_t len;
    uint8_t query[]; /* under our ID */
};

/* One connection to a recursor for one query; it may outlive the query
 * (closing), and the query never waits for it. */
struct fwd_tcp {
    dns_fwd *f;
    struct fwd_query *q; /* NULL once the query ended or went on */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    bool closing;
    uint8_t *buf; /* the reply: its length, then the message */
    size_t have, cap;
    size_t len;
    uint8_t frame[]; /* the query with its length in front */
};

struct dns_fwd {
    uv_loop_t *loop;
    struct sockaddr_storage rec[DNS_MAX_RECURSORS];
    size_t n;
    uint64_t try_ms;
    size_t max, in_flight, tcp_in_flight;
    uint64_t rng;
    uv_udp_t udp4, udp6;
    bool udp4_open, udp6_open;
    uv_timer_t timer;
    struct fwd_query *head, *tail;
    /* UDP queries by their ID: a reply finds its query in one step. The
     * 65536 pointers are allocated zeroed, and so mostly never touched. */
    struct fwd_query **by_id;
    knot_pkt_t *pkt; /* parses questions, of queries and of replies */
    int open_handles;
    bool closing;
    uint8_t udp_buf[65536];
};

static void fwd_maybe_free(dns_fwd *f)
{
    if (--f->open_handles > 0 || !f->closing)
        return;
    free(f);
}

static void handle_closed(uv_handle_t *h)
{
    fwd_maybe_free(h->data);
}

/* The question of a message (len bytes) in the parser; false if it has
 * none that parses. */
static bool parse_question(dns_fwd *f, const uint8_t *msg, size_t len)
{
    knot_pkt_t *p = f->pkt;

    if (len < KNOT_WIRE_HEADER_SIZE || len > DNS_MAX_REPLY)
        return false;
    knot_pkt_clear(p);
    p->max_size = DNS_MAX_REPLY;
    memcpy(p->wire, msg, len);
    p->size = len;
    p->parsed = 0;
    return knot_pkt_parse_question(p) == KNOT_EOK && p->qname_size > 0 &&
           knot_wire_get_qdcount(msg) == 1;
}

/* A reply to q: a response with its ID and its question. */
static bool reply_matches(dns_fwd *f, const struct fwd_query *q, const uint8_t *msg, size_t len)
{
    return len >= KNOT_WIRE_HEADER_SIZE && knot_wire_get_qr(msg) &&
           knot_wire_get_id(msg) == q->id && parse_question(f, msg, len) &&
           knot_dname_is_equal(knot_pkt_qname(f->pkt), q->qname) &&
           knot_pkt_qtype(f->pkt) == q->qtype && knot_pkt_qclass(f->pkt) == q->qclass;
}

static void unlink_query(struct fwd_query *q)
{
    dns_fwd *f = q->f;

    if (q->prev)
        q->prev->next = q->next;
    else if (f->head == q)
        f->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else if (f->tail == q)
        f->tail = q->prev;
    q->prev = q->next = NULL;
}

static void tcp_closed(uv_handle_t *h)
{
    struct fwd_tcp *t = h->data;
    dns_fwd *f = t->f;

    free(t->buf);
    free(t);
    fwd_maybe_free(f);
}

static void tcp_close(struct fwd_tcp *t)
{
    if (t->q) {
        t->q->conn = NULL;
        t->q = NULL;
        t->f->tcp_in_flight--;
    }
    if (t->closing)
        return;
    t->closing = true;
    uv_close((uv_handle_t *)&t->tcp, tcp_closed);
}

/* The query's end: the reply (under the client's ID again) or NULL. */
static void finish(struct fwd_query *q, uint8_t *reply, size_t len)
{
    dns_fwd *f = q->f;

    unlink_query(q);
    if (!q->tcp && f->by_id[q->id] == q)
        f->by_id[q->id] = NULL;
    if (q->conn)
        tcp_close(q->conn);
    f->in_flight--;
    if (reply)
        knot_wire_set_id(reply, q->client_id);
    q->cb(q->arg, reply, len);
    free(q);
}

static void timer_due(uv_timer_t *t);

/* (Re)starts q's clock: every try has the same length, so the list stays
 * in deadline order by appending. */
static void arm(struct fwd_query *q)
{
    dns_fwd *f = q->f;

    unlink_query(q);
    q->deadline = uv_now(f->loop) + f->try_ms;
    q->prev = f->tail;
    if (f->tail)
        f->tail->next = q;
    else
        f->head = q;
    f->tail = q;
    if (!uv_is_active((uv_handle_t *)&f->timer))
        uv_timer_start(&f->timer, timer_due, f->try_ms, 0);
}

static void tcp_next(struct fwd_tcp *t);

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fwd_tcp *t = h->data;

    (void)suggested;
    if (t->have == t->cap) {
        /* Grows to the reply's length once that is known, never past it. */
        size_t cap = t->cap ? t->cap * 2 : 512;
        uint8_t *b;
        if (t->have >= 2 && cap > 2 + (size_t)knot_wire_read_u16(t->buf))
            cap = 2 + (size_t)knot_wire_read_u16(t->buf);
        if (cap > 2 + DNS_MAX_REPLY)
            cap = 2 + DNS_MAX_REPLY;
        if (cap <= t->cap || !(b = realloc(t->buf, cap))) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
    *buf = uv_buf_init((char *)t->buf + t->have, (unsigned)(t->cap - t->have));
}

static void tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fwd_tcp *t = s->data;
    struct fwd_query *q = t->q;
    size_t mlen;

    (void)buf;
    if (!q)
        return;
    if (nread < 0) {
        tcp_next(t); /* closed before its reply, or a reply too long */
        return;
    }
    t->have += (size_t)nread;
    if (t->have < 2 || t->have < 2 + (mlen = knot_wire_read_u16(t->buf)))
        return;
    if (!reply_matches(t->f, q, t->buf + 2, mlen)) {
        tcp_next(t);
        return;
    }
    finish(q, t->buf + 2, mlen);
}

static void tcp_written(uv_write_t *req, int status)
{
    struct fwd_tcp *t = req->data;

    if (status < 0 && t->q)
        tcp_next(t);
}

static void tcp_connected(uv_connect_t *req, int status)
{
    struct fwd_tcp *t = req->data;
    uv_buf_t b = uv_buf_init((char *)t->frame, (unsigned)(t->len + 2));

    if (!t->q)
        return;
    if (status < 0 || uv_write(&t->write, (uv_stream_t *)&t->tcp, &b, 1, tcp_written) < 0 ||
        uv_read_start((uv_stream_t *)&t->tcp, tcp_alloc, tcp_read) < 0)
        tcp_next(t);
}

/* Asks recursor i over TCP. 0, or a negative code with nothing left open
 * for the query. */
static int tcp_send(struct fwd_query *q, size_t i)
{
    dns_fwd *f = q->f;
    struct fwd_tcp *t = calloc(1, sizeof *t + 2 + q->len);
    int rc;

    if (!t)
        return DA_ENOMEM;
    t->f = f;
    t->len = q->len;
    knot_wire_write_u16(t->frame, (uint16_t)q->len);
    memcpy(t->frame + 2, q->query, q->len);
    if (uv_tcp_init(f->loop, &t->tcp) < 0) {
        free(t);
        return DA_ENOMEM;
    }
    t->tcp.data = t->connect.data = t->write.data = t;
    f->open_handles++;
    t->q = q;
    q->conn = t;
    f->tcp_in_flight++;
    rc = uv_tcp_connect(&t->connect, &t->tcp, (const struct sockaddr *)&f->rec[i], tcp_connected);
    if (rc < 0) {
        tcp_close(t);
        return DA_ECONNREFUSED;
    }
    return 0;
}

/* Asks recursor i over UDP. */
static int udp_send(struct fwd_query *q, size_t i)
{
    dns_fwd *f = q->f;
    const struct sockaddr_storage *sa = &f->rec[i];
    uv_udp_t *u = sa->ss_family == AF_INET6 ? &f->udp6 : &f->udp4;
    uv_buf_t b = uv_buf_init((char *)q->query, (unsigned)q->len);

    /* A query the socket cannot take at once counts as a failed try: the
     * kernel's buffer is full, and a queue of ours would only add delay. */
    if (uv_udp_try_send(u, &b, 1, (const struct sockaddr *)sa) != (int)q->len)
        return DA_ECONNREFUSED;
    return 0;
}

/* Asks the recursors not yet asked, in order, until one takes the query.
 * 0 with its clock started, or the last try's code when none took it. */
static int try_next(struct fwd_query *q)
{
    int rc = DA_ECONNREFUSED;

    while (q->tried < q->f->n) {
        size_t i = q->tried++;
        rc = q->tcp ? tcp_send(q, i) : udp_send(q, i);
        if (rc == 0) {
            arm(q);
            return 0;
        }
    }
    return rc;
}

/* The TCP try failed (or its reply was not one): the next recursor. */
static void tcp_next(struct fwd_tcp *t)
{
    struct fwd_query *q = t->q;

    tcp_close(t);
    if (q && try_next(q) < 0)
        finish(q, NULL, 0);
}

static void timer_due(uv_timer_t *timer)
{
    dns_fwd *f = timer->data;
    uint64_t now = uv_now(f->loop);

    while (f->head && f->head->deadline <= now) {
        struct fwd_query *q = f->head;
        unlink_query(q);
        if (q->conn)
            tcp_close(q->conn);
        if (try_next(q) < 0)
            finish(q, NULL, 0);
    }
    if (f->head)
        uv_timer_start(&f->timer, timer_due, f->head->deadline - now, 0);
}

static void udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    dns_fwd *f = h->data;

    (void)suggested;
    *buf = uv_buf_init((char *)f->udp_buf, sizeof f->udp_buf);
}

static void udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *peer,
                     unsigned flags)
{
    dns_fwd *f = h->data;
    uint8_t *msg = (uint8_t *)buf->base;
    struct sockaddr_storage from;
    struct fwd_query *q;
    bool asked = false;

    if (nread < KNOT_WIRE_HEADER_SIZE || !peer || (flags & UV_UDP_PARTIAL))
        return;
    if (!(q = f->by_id[knot_wire_get_id(msg)]))
        return;
    memset(&from, 0, sizeof from);
    memcpy(&from, peer,
           peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    for (size_t i = 0; i < q->tried && !asked; i++)
        asked = addr_same(&from, &f->rec[i]);
    /* Anything else is ignored, not taken as a failure: a stray or forged
     * datagram must not end a query that its recursor may still answer. */
    if (asked && reply_matches(f, q, msg, (size_t)nread))
        finish(q, msg, (size_t)nread);
}

static int udp_open(dns_fwd *f, uv_udp_t *u, int family, char *err, size_t errlen)
{
    struct sockaddr_storage any;
    int rc;

    memset(&any, 0, sizeof any);
    any.ss_family = (sa_family_t)family;
    if ((rc = uv_udp_init_ex(f->loop, u, (unsigned)family)) < 0) {
        snprintf(err, errlen, "dns.recursors: a UDP socket: %s", uv_strerror(rc));
        return DA_ENOMEM;
    }
    u->data = f;
    f->open_handles++;
    if (family == AF_INET6)
        f->udp6_open = true;
    else
        f->udp4_open = true;
    /* Any address, a port of the kernel's choice: the recursors may be on
     * other hosts, and a fixed port would ease forging their replies. */
    rc = uv_udp_bind(u, (const struct sockaddr *)&any, 0);
    if (rc == 0)
        rc = uv_udp_recv_start(u, udp_alloc, udp_recv);
    if (rc < 0) {
        snprintf(err, errlen, "dns.recursors: a UDP socket for %s: %s",
                 family == AF_INET6 ? "IPv6" : "IPv4", uv_strerror(rc));
        return DA_EINVAL;
    }
    return 0;
}

int dns_fwd_new(dns_fwd **out, struct uv_loop_s *loop, const struct sockaddr_storage *recursors,
                size_t n, uint64_t try_ms, size_t max, uint64_t seed, char *err, size_t errlen)
{
    dns_fwd *f;
    bool v4 = false, v6 = false;
    int rc;

    *out = NULL;
    if (n == 0 || n > DNS_MAX_RECURSORS) {
        snprintf(err, errlen, "dns.recursors: give 1 to %d addresses", DNS_MAX_RECURSORS);
        return DA_EINVAL;
    }
    if (!(f = calloc(1, sizeof *f)))
        return DA_ENOMEM;
    f->loop = loop;
    f->n = n;
    memcpy(f->rec, recursors, n * sizeof *recursors);
    f->try_ms = try_ms ? try_ms : DNS_FORWARD_MS;
    f->max = max ? max : DNS_MAX_FORWARDS;
    f->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
    f->by_id = calloc(65536, sizeof *f->by_id);
    f->pkt = knot_pkt_new(NULL, DNS_MAX_REPLY, NULL);
    if (!f->by_id || !f->pkt) {
        free(f->by_id);
        knot_pkt_free(f->pkt);
        free(f);
        return DA_ENOMEM;
    }
    uv_timer_init(loop, &f->timer);
    f->timer.data = f;
    f->open_handles = 1;
    for (size_t i = 0; i < n; i++) {
        v6 |= recursors[i].ss_family == AF_INET6;
        v4 |= recursors[i].ss_family == AF_INET;
    }
    rc = v4 ? udp_open(f, &f->udp4, AF_INET, err, errlen) : 0;
    if (rc == 0 && v6)
        rc = udp_open(f, &f->udp6, AF_INET6, err, errlen);
    if (rc < 0) {
        dns_fwd_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

bool dns_fwd_full(const dns_fwd *f, bool tcp)
{
    return f->in_flight >= f->max || (tcp && f->tcp_in_flight >= DNS_MAX_TCP_FORWARDS);
}

size_t dns_fwd_in_flight(const dns_fwd *f)
{
    return f ? f->in_flight : 0;
}

int dns_fwd_query(dns_fwd *f, const uint8_t *query, size_t len, bool tcp, dns_fwd_cb cb, void *arg)
{
    struct fwd_query *q;
    int rc;

    if (f->closing || dns_fwd_full(f, tcp))
        return DA_ENOMEM;
    if (len > DNS_MAX_QUERY || !parse_question(f, query, len))
        return DA_EINVAL;
    if (!(q = calloc(1, sizeof *q + len)))
        return DA_ENOMEM;
    q->f = f;
    q->tcp = tcp;
    q->cb = cb;
    q->arg = arg;
    q->len = len;
    memcpy(q->query, query, len);
    memcpy(q->qname, knot_pkt_qname(f->pkt), knot_dname_size(knot_pkt_qname(f->pkt)));
    q->qtype = knot_pkt_qtype(f->pkt);
    q->qclass = knot_pkt_qclass(f->pkt);
    q->client_id = knot_wire_get_id(query);
    /* A random ID, so that an off-path sender cannot guess it, and unique
     * among the UDP queries in flight (at most 1024 of 65536 IDs). */
    do
        q->id = (uint16_t)dns_random(&f->rng);
    while (!tcp && f->by_id[q->id]);
    knot_wire_set_id(q->query, q->id);
    f->in_flight++;
    if ((rc = try_next(q)) < 0) {
        unlink_query(q);
        f->in_flight--;
        free(q);
        return rc;
    }
    if (!tcp)
        f->by_id[q->id] = q;
    return 0;
}

dns_fwd *dns_fwd_close(dns_fwd *f)
{
    if (!f || f->closing)
        return NULL;
    while (f->head) {
        struct fwd_query *q = f->head;
        unlink_query(q);
        if (q->conn)
            tcp_close(q->conn);
        free(q);
    }
    f->in_flight = 0;
    f->closing = true;
    free(f->by_id);
    f->by_id = NULL;
    knot_pkt_free(f->pkt);
    f->pkt = NULL;
    if (f->udp4_open)
        uv_close((uv_handle_t *)&f->udp4, handle_closed);
    if (f->udp6_open)
        uv_close((uv_handle_t *)&f->udp6, handle_closed);
    f->udp4_open = f->udp6_open = false;
    uv_close((uv_handle_t *)&f->timer, handle_closed);
    return NULL;
}
