/* The answer engine: one query in, one reply out, from the services the
 * lookup callback gives. libknot parses the query and writes the reply
 * (compression, truncation, EDNS); this file decides what goes in.
 *
 * What each name and type gets is in dns.h and docs/dns.md; the rcodes:
 *   FORMERR   malformed or truncated packets, QDCOUNT other than 1, a
 *             query with answer or authority records, trailing bytes,
 *             a query over DNS_MAX_QUERY bytes
 *   NOTIMP    opcodes other than QUERY, meta types (MAILA, MAILB, ...)
 *   REFUSED   classes other than IN, zone transfers (AXFR, IXFR), names
 *             outside the domain when there are no recursors
 *   BADVERS   EDNS versions above 0 (RFC 6891)
 *   SERVFAIL  a service whose first list did not come in time
 *   NXDOMAIN  no such name (with the SOA, for negative caching)
 * Responses (QR set) and packets shorter than a header get nothing, so
 * that two servers can never answer each other in a loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns_internal.h"
#include "error.h"

struct dns_engine {
    knot_pkt_t *q, *r;
    knot_rrset_t opt; /* ours: payload, DO and extended rcode */
    size_t opt_size;
    const struct instance **sel; /* the instances an answer is made of */
    struct dns_target *tgt;      /* and their addresses */
    uint64_t *w;                 /* weights for the weighted order */
    size_t *ix;                  /* and the targets they are of */
    uint32_t *pw;                /* per selected instance: the policy's weight */
    int *pp;                     /* and the SRV priority */
    size_t cap;
    bool *mask;     /* per listed instance: selected */
    uint32_t *wall; /* per listed instance: the policy's weight */
    size_t cap_all;
    uint8_t qbuf[DNS_MAX_QUERY];
    uint8_t rbuf[DNS_MAX_REPLY];
};

uint64_t dns_random(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

int dns_engine_new(dns_engine **out)
{
    dns_engine *e = calloc(1, sizeof *e);

    if (!e)
        return DA_ENOMEM;
    e->q = knot_pkt_new(e->qbuf, sizeof e->qbuf, NULL);
    e->r = knot_pkt_new(e->rbuf, sizeof e->rbuf, NULL);
    if (!e->q || !e->r || knot_edns_init(&e->opt, DNS_UDP_PAYLOAD, 0, 0, NULL) != KNOT_EOK) {
        dns_engine_free(e);
        return DA_ENOMEM;
    }
    e->opt_size = knot_edns_wire_size(&e->opt);
    *out = e;
    return 0;
}

dns_engine *dns_engine_free(dns_engine *e)
{
    if (!e)
        return NULL;
    knot_pkt_free(e->q);
    knot_pkt_free(e->r);
    knot_rrset_clear(&e->opt, NULL);
    free(e->sel);
    free(e->tgt);
    free(e->w);
    free(e->ix);
    free(e->pw);
    free(e->pp);
    free(e->mask);
    free(e->wall);
    free(e);
    return NULL;
}

static bool room_for(dns_engine *e, size_t n)
{
    if (n <= e->cap)
        return true;
    size_t cap = n < 16 ? 16 : n;
    const struct instance **sel = realloc(e->sel, cap * sizeof *sel);
    if (sel)
        e->sel = sel;
    struct dns_target *tgt = realloc(e->tgt, cap * sizeof *tgt);
    if (tgt)
        e->tgt = tgt;
    uint64_t *w = realloc(e->w, cap * sizeof *w);
    if (w)
        e->w = w;
    size_t *ix = realloc(e->ix, cap * sizeof *ix);
    if (ix)
        e->ix = ix;
    uint32_t *pw = realloc(e->pw, cap * sizeof *pw);
    if (pw)
        e->pw = pw;
    int *pp = realloc(e->pp, cap * sizeof *pp);
    if (pp)
        e->pp = pp;
    bool *mask = realloc(e->mask, cap * sizeof *mask);
    if (mask)
        e->mask = mask;
    uint32_t *wall = realloc(e->wall, cap * sizeof *wall);
    if (wall)
        e->wall = wall;
    if (!sel || !tgt || !w || !ix || !pw || !pp || !mask || !wall)
        return false;
    e->cap = cap;
    return true;
}

/* ---- writing records ---------------------------------------------------- */

/* One record as its own RRset, so that records go in in our order and a
 * full packet keeps every record that fit. knot_pkt_put() writes the wire
 * at once; the rrset and its rdata may go when it returns. */
static int put(dns_engine *e, const knot_dname_t *owner, uint16_t hint, uint16_t type, uint32_t ttl,
               const uint8_t *rdata, size_t len, uint16_t flags)
{
    union {
        knot_rdata_t rd;
        uint8_t b[2 + 512];
    } buf;
    knot_rrset_t rr;

    if (len > sizeof buf.b - 2)
        return KNOT_ESPACE;
    knot_rrset_init(&rr, (knot_dname_t *)owner, type, KNOT_CLASS_IN, ttl);
    knot_rdata_init(&buf.rd, (uint16_t)len, rdata);
    rr.rrs.count = 1;
    rr.rrs.size = (uint32_t)knot_rdata_size((uint16_t)len);
    rr.rrs.rdata = &buf.rd;
    return knot_pkt_put(e->r, hint, &rr, flags);
}

static void put_soa(dns_engine *e, const struct dns_zone *z)
{
    uint8_t rd[2 * KNOT_DNAME_MAXLEN + 20];
    size_t n = 0;
    uint32_t v[5] = {z->serial, 3600, 600, 86400, z->ttl};

    /* MNAME ns.DOMAIN, RNAME hostmaster.DOMAIN: no server answers for
     * them, but they say whose zone this is. */
    rd[n++] = 2;
    memcpy(rd + n, "ns", 2);
    n += 2;
    memcpy(rd + n, z->domain, z->domain_size);
    n += z->domain_size;
    rd[n++] = 10;
    memcpy(rd + n, "hostmaster", 10);
    n += 10;
    memcpy(rd + n, z->domain, z->domain_size);
    n += z->domain_size;
    for (int i = 0; i < 5; i++) {
        knot_wire_write_u32(rd + n, v[i]);
        n += 4;
    }
    put(e, z->domain, KNOT_COMPR_HINT_NONE, KNOT_RRTYPE_SOA, z->ttl, rd, n, KNOT_PF_NOTRUNC);
}

/* ---- choosing instances ------------------------------------------------- */

/* The instances of the name's group (all without a group), with their
 * addresses; n = how many. */
static size_t select_instances(dns_engine *e, const struct dns_name *nm, const struct dns_svc *s)
{
    const struct policy_plan *plan =
        s->plan && s->plan->zoned && s->plan->n == s->n ? s->plan : NULL;
    double load[POLICY_RANKS];
    int prio[POLICY_RANKS];
    size_t k = 0;

    if (!room_for(e, s->n))
        return 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct instance *in = s->inst[i];
        e->mask[i] = (!nm->has_group || !strcasecmp(in->group, nm->group)) &&
                     dns_target_parse(in->address, &e->tgt[k]);
        if (e->mask[i])
            k++;
    }
    /* The traffic policy (policy.h): the weight each instance gets now
     * (0: on standby) and the priority of its rank, for these instances. */
    if (plan) {
        policy_weights(plan, s->inst, e->mask, e->wall);
        policy_plan_subset(plan, e->mask, load, prio);
    }
    k = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (!e->mask[i])
            continue;
        dns_target_parse(s->inst[i]->address, &e->tgt[k]);
        e->pw[k] = plan ? e->wall[i] : (uint32_t)instance_weight(s->inst[i]);
        e->pp[k] = plan ? prio[plan->rank[i]] : 0;
        e->sel[k++] = s->inst[i];
    }
    return k;
}

/* The weight an instance is answered with: the policy's while traffic
 * goes to it, else its own (SRV records of the priorities on standby). */
static uint64_t weight_of(const dns_engine *e, size_t k)
{
    return e->pw[k] ? e->pw[k] : (uint64_t)instance_weight(e->sel[k]);
}

/* A/AAAA: the addresses of one family, each once (the weights of the
 * instances sharing it added up), in a weighted random order: each place
 * is drawn among those left in proportion to weight, so that a client
 * taking the first address spreads its connections by weight. Returns
 * how many records it wrote. */
static size_t put_addresses(dns_engine *e, const struct dns_zone *z, size_t n, size_t iplen,
                            uint16_t type, uint64_t *rng)
{
    size_t m = 0, written = 0;

    /* The cache sorts instances by address, so one host's instances are
     * next to each other: a comparison with the last kept finds them. */
    for (size_t i = 0; i < n; i++) {
        /* Only the instances the policy sends traffic to now: the local
         * zone's while it is healthy enough (docs/traffic.md). */
        if (e->tgt[i].iplen != iplen || e->pp[i] != 0)
            continue;
        if (m > 0 && !memcmp(e->tgt[e->ix[m - 1]].ip, e->tgt[i].ip, iplen)) {
            e->w[m - 1] += weight_of(e, i);
            continue;
        }
        e->ix[m] = i;
        e->w[m] = weight_of(e, i);
        m++;
    }
    for (size_t k = 0; k < m && k < z->max_answers; k++) {
        uint64_t total = 0, r;
        size_t j = k;
        for (size_t i = k; i < m; i++)
            total += e->w[i];
        r = dns_random(rng) % total;
        for (size_t i = k; i < m; i++) {
            if (r < e->w[i]) {
                j = i;
                break;
            }
            r -= e->w[i];
        }
        if (j != k) {
            size_t t = e->ix[k];
            uint64_t w = e->w[k];
            e->ix[k] = e->ix[j];
            e->w[k] = e->w[j];
            e->ix[j] = t;
            e->w[j] = w;
        }
        if (put(e, knot_pkt_qname(e->q), KNOT_COMPR_HINT_QNAME, type, z->ttl, e->tgt[e->ix[k]].ip,
                iplen, 0) != KNOT_EOK)
            break;
        written++;
    }
    return written;
}

/* SRV: one record per instance, in address order, weight clamped to
 * 65535, priority the policy's (0 for every instance without zones;
 * docs/traffic.md); targets HEX.addr.DOMAIN for IPs (their A/AAAA in the
 * additional section when they fit) or the host name. */
static size_t put_srv(dns_engine *e, const struct dns_zone *z, size_t n)
{
    uint8_t rd[6 + KNOT_DNAME_MAXLEN];
    knot_dname_storage_t target;
    size_t written = 0;

    for (size_t i = 0; i < n; i++) {
        const struct dns_target *t = &e->tgt[i];
        uint64_t w = weight_of(e, i);
        size_t tlen;

        if (t->iplen)
            tlen = dns_name_addr(z, t->ip, t->iplen, target);
        else if (knot_dname_from_str(target, t->host, sizeof target))
            tlen = knot_dname_size(target);
        else
            continue;
        if (!tlen)
            continue;
        knot_wire_write_u16(rd, (uint16_t)e->pp[i]);
        knot_wire_write_u16(rd + 2, (uint16_t)(w > 65535 ? 65535 : w));
        knot_wire_write_u16(rd + 4, t->port);
        memcpy(rd + 6, target, tlen);
        if (put(e, knot_pkt_qname(e->q), KNOT_COMPR_HINT_QNAME, KNOT_RRTYPE_SRV, z->ttl, rd,
                6 + tlen, 0) != KNOT_EOK)
            return written;
        written++;
    }
    if (!written)
        return 0;
    knot_pkt_begin(e->r, KNOT_ADDITIONAL);
    for (size_t i = 0; i < n; i++) {
        const struct dns_target *t = &e->tgt[i];
        if (!t->iplen || (i > 0 && e->tgt[i - 1].iplen == t->iplen &&
                          !memcmp(e->tgt[i - 1].ip, t->ip, t->iplen)))
            continue;
        if (!dns_name_addr(z, t->ip, t->iplen, target))
            continue;
        /* Optional: what does not fit is left out, without TC. */
        if (put(e, target, KNOT_COMPR_HINT_NONE, t->iplen == 4 ? KNOT_RRTYPE_A : KNOT_RRTYPE_AAAA,
                z->ttl, t->ip, t->iplen, KNOT_PF_NOTRUNC) != KNOT_EOK)
            break;
    }
    return written;
}

/* TXT: how fresh the list is, as key=value strings. */
static size_t put_txt(dns_engine *e, const struct dns_zone *z, const struct dns_svc *s, size_t n)
{
    uint8_t rd[256];
    char text[5][64];
    size_t len = 0, nt = 4;

    snprintf(text[0], sizeof text[0], "revision=%lld", (long long)s->revision);
    snprintf(text[1], sizeof text[1], "stale=%s", s->stale ? "true" : "false");
    snprintf(text[2], sizeof text[2], "age_ms=%llu", (unsigned long long)s->age_ms);
    snprintf(text[3], sizeof text[3], "instances=%zu", n);
    /* Only while a mass drop is held: the list keeps instances etcd no
     * longer has (docs/traffic.md). */
    if (s->plan && s->plan->protected_)
        snprintf(text[nt++], sizeof text[4], "protected=true held=%u", (unsigned)s->plan->held);
    for (size_t i = 0; i < nt; i++) {
        size_t l = strlen(text[i]);
        rd[len++] = (uint8_t)l;
        memcpy(rd + len, text[i], l);
        len += l;
    }
    return put(e, knot_pkt_qname(e->q), KNOT_COMPR_HINT_QNAME, KNOT_RRTYPE_TXT, z->ttl, rd, len,
               0) == KNOT_EOK;
}

/* ---- answering ---------------------------------------------------------- */

/* A reply of the header alone (the query could not be parsed). */
static void header_only(dns_engine *e, const uint8_t *query, uint16_t rcode, const uint8_t **reply,
                        size_t *rlen, struct dns_result *res)
{
    memcpy(e->rbuf, query, KNOT_WIRE_HEADER_SIZE);
    knot_wire_set_qr(e->rbuf);
    knot_wire_clear_tc(e->rbuf);
    knot_wire_clear_aa(e->rbuf);
    knot_wire_clear_ra(e->rbuf);
    knot_wire_clear_ad(e->rbuf);
    knot_wire_set_qdcount(e->rbuf, 0);
    knot_wire_set_ancount(e->rbuf, 0);
    knot_wire_set_nscount(e->rbuf, 0);
    knot_wire_set_arcount(e->rbuf, 0);
    knot_wire_set_rcode(e->rbuf, rcode);
    *reply = e->rbuf;
    *rlen = KNOT_WIRE_HEADER_SIZE;
    res->outcome = DNS_REPLY;
    res->rcode = rcode;
}

static bool meta_type(uint16_t t)
{
    return t == KNOT_RRTYPE_OPT || (t >= 128 && t <= 255 && t != KNOT_RRTYPE_ANY);
}

/* The records of a service name; returns the rcode. */
static uint16_t answer_service(dns_engine *e, const struct dns_zone *z, const struct dns_name *nm,
                               uint16_t qtype, bool waited, uint64_t *rng, struct dns_result *res,
                               bool *nodata)
{
    struct dns_svc s = {0}; /* a lookup that knows no plan leaves it NULL */
    size_t n, written = 0;
    int rc = z->lookup(z->arg, nm->service, &s);

    if (rc == DNS_LOOKUP_WAIT && !waited) {
        res->outcome = DNS_WAIT;
        snprintf(res->service, sizeof res->service, "%s", nm->service);
        return KNOT_RCODE_SERVFAIL;
    }
    if (rc != DNS_LOOKUP_OK)
        return KNOT_RCODE_SERVFAIL;
    n = select_instances(e, nm, &s);
    if (n == 0) {
        res->reason = s.n == 0 ? "no instances" : "no instances in that group";
        return KNOT_RCODE_NXDOMAIN;
    }
    knot_wire_set_aa(e->r->wire);
    if (nm->kind == DNS_NAME_SRV) {
        if (qtype == KNOT_RRTYPE_SRV || qtype == KNOT_RRTYPE_ANY)
            written = put_srv(e, z, n);
    } else {
        switch (qtype) {
        case KNOT_RRTYPE_A:
            written = put_addresses(e, z, n, 4, KNOT_RRTYPE_A, rng);
            break;
        case KNOT_RRTYPE_AAAA:
            written = put_addresses(e, z, n, 16, KNOT_RRTYPE_AAAA, rng);
            break;
        case KNOT_RRTYPE_ANY: /* RFC 8482: a subset will do; the addresses */
            written = put_addresses(e, z, n, 4, KNOT_RRTYPE_A, rng);
            written += put_addresses(e, z, n, 16, KNOT_RRTYPE_AAAA, rng);
            break;
        case KNOT_RRTYPE_SRV:
            written = put_srv(e, z, n);
            break;
        case KNOT_RRTYPE_TXT:
            written = put_txt(e, z, &s, n);
            break;
        }
    }
    *nodata = written == 0 && !knot_wire_get_tc(e->r->wire);
    return KNOT_RCODE_NOERROR;
}

/* The question is parsed and the reply started: fills in the sections and
 * returns the rcode. */
static uint16_t answer_question(dns_engine *e, const struct dns_zone *z, bool waited, uint64_t *rng,
                                struct dns_result *res)
{
    uint16_t qtype = knot_pkt_qtype(e->q), rcode = KNOT_RCODE_NOERROR;
    struct dns_name nm;
    bool nodata = false;

    if (knot_pkt_qclass(e->q) != KNOT_CLASS_IN)
        return KNOT_RCODE_REFUSED;
    if (qtype == KNOT_RRTYPE_AXFR || qtype == KNOT_RRTYPE_IXFR)
        return KNOT_RCODE_REFUSED;
    if (meta_type(qtype))
        return KNOT_RCODE_NOTIMPL;
    dns_name_parse(z, knot_pkt_qname(e->q), &nm);
    switch (nm.kind) {
    case DNS_NAME_OUTSIDE:
        if (z->forward)
            res->outcome = DNS_FORWARD;
        return KNOT_RCODE_REFUSED;
    case DNS_NAME_APEX:
        knot_wire_set_aa(e->r->wire);
        if (qtype == KNOT_RRTYPE_SOA || qtype == KNOT_RRTYPE_ANY) {
            knot_pkt_begin(e->r, KNOT_ANSWER);
            put_soa(e, z);
            return rcode;
        }
        nodata = true;
        break;
    case DNS_NAME_EMPTY:
        knot_wire_set_aa(e->r->wire);
        nodata = true;
        break;
    case DNS_NAME_NONE:
        knot_wire_set_aa(e->r->wire);
        res->reason = nm.reason;
        rcode = KNOT_RCODE_NXDOMAIN;
        break;
    case DNS_NAME_ADDR:
        knot_wire_set_aa(e->r->wire);
        if ((qtype == KNOT_RRTYPE_A || qtype == KNOT_RRTYPE_ANY) && nm.family == AF_INET)
            put(e, knot_pkt_qname(e->q), KNOT_COMPR_HINT_QNAME, KNOT_RRTYPE_A, z->ttl, nm.ip, 4, 0);
        else if ((qtype == KNOT_RRTYPE_AAAA || qtype == KNOT_RRTYPE_ANY) && nm.family == AF_INET6)
            put(e, knot_pkt_qname(e->q), KNOT_COMPR_HINT_QNAME, KNOT_RRTYPE_AAAA, z->ttl, nm.ip, 16,
                0);
        else
            nodata = true;
        break;
    case DNS_NAME_SERVICE:
    case DNS_NAME_SRV:
        rcode = answer_service(e, z, &nm, qtype, waited, rng, res, &nodata);
        if (res->outcome == DNS_WAIT)
            return rcode;
        break;
    }
    if (rcode == KNOT_RCODE_NXDOMAIN || nodata) {
        /* RFC 2308: the SOA tells how long to cache the absence. */
        knot_pkt_begin(e->r, KNOT_AUTHORITY);
        put_soa(e, z);
    }
    return rcode;
}

/* dns_answer(), or with z NULL the reply with the rcode forced (after the
 * same checks of the query, which may still end in FORMERR and the like). */
static void answer(dns_engine *e, const struct dns_zone *z, uint16_t forced, const uint8_t *query,
                   size_t len, bool tcp, bool waited, uint64_t *rng, const uint8_t **reply,
                   size_t *rlen, struct dns_result *res)
{
    knot_pkt_t *q = e->q, *r = e->r;
    uint16_t rcode, max;
    bool edns;
    int rc;

    memset(res, 0, sizeof *res);
    *reply = NULL;
    *rlen = 0;
    if (len < KNOT_WIRE_HEADER_SIZE || knot_wire_get_qr(query)) {
        res->outcome = DNS_DROP;
        return;
    }
    res->id = knot_wire_get_id(query);
    if (len > DNS_MAX_QUERY || knot_wire_get_qdcount(query) != 1 ||
        knot_wire_get_ancount(query) != 0 || knot_wire_get_nscount(query) != 0) {
        header_only(e, query, KNOT_RCODE_FORMERR, reply, rlen, res);
        return;
    }
    if (knot_wire_get_opcode(query) != KNOT_OPCODE_QUERY) {
        header_only(e, query, KNOT_RCODE_NOTIMPL, reply, rlen, res);
        return;
    }
    knot_pkt_clear(q);
    memcpy(q->wire, query, len);
    q->size = len;
    q->max_size = DNS_MAX_QUERY;
    q->parsed = 0; /* knot_pkt_clear() leaves it at the last query's end */
    rc = knot_pkt_parse(q, 0);
    if (rc != KNOT_EOK || q->qname_size == 0) {
        header_only(e, query, KNOT_RCODE_FORMERR, reply, rlen, res);
        return;
    }
    res->qname = knot_pkt_qname(q);

    knot_pkt_clear(r);
    r->max_size = DNS_MAX_REPLY;
    if (knot_pkt_init_response(r, q) != KNOT_EOK) {
        header_only(e, query, KNOT_RCODE_SERVFAIL, reply, rlen, res);
        return;
    }
    knot_wire_clear_aa(r->wire);
    edns = knot_pkt_has_edns(q);
    /* Over UDP: what the client's EDNS says it takes (512 without, and
     * never under 512, RFC 6891 6.2.5), at most our own payload. */
    max = DNS_MAX_REPLY;
    if (!tcp) {
        max = edns ? knot_edns_get_payload(q->opt_rr) : 512;
        if (max < 512)
            max = 512;
        if (max > DNS_UDP_PAYLOAD)
            max = DNS_UDP_PAYLOAD;
    }
    r->max_size = max;
    e->opt.ttl = 0; /* extended rcode 0, version 0, no flags */
    if (edns && knot_edns_do(q->opt_rr))
        knot_edns_set_do(&e->opt);
    res->outcome = DNS_REPLY;
    if (edns && knot_edns_get_version(q->opt_rr) != 0) {
        rcode = KNOT_RCODE_BADVERS;
    } else {
        if (edns)
            knot_pkt_reserve(r, (uint16_t)e->opt_size);
        knot_pkt_begin(r, KNOT_ANSWER);
        rcode = z ? answer_question(e, z, waited, rng, res) : forced;
        if (res->outcome != DNS_REPLY)
            return;
        if (edns)
            knot_pkt_reclaim(r, (uint16_t)e->opt_size);
    }
    if (edns) {
        knot_edns_set_ext_rcode(&e->opt, (uint8_t)(rcode >> 4));
        knot_pkt_begin(r, KNOT_ADDITIONAL);
        if (knot_pkt_put(r, KNOT_COMPR_HINT_NONE, &e->opt, KNOT_PF_NOTRUNC) != KNOT_EOK)
            edns = false; /* cannot happen: its room was reserved */
    }
    knot_wire_set_rcode(r->wire, rcode & 0xf);
    res->rcode = rcode;
    res->truncated = knot_wire_get_tc(r->wire);
    *reply = r->wire;
    *rlen = r->size;
}

void dns_answer(dns_engine *e, const struct dns_zone *z, const uint8_t *query, size_t len, bool tcp,
                bool waited, uint64_t *rng, const uint8_t **reply, size_t *rlen,
                struct dns_result *res)
{
    answer(e, z, 0, query, len, tcp, waited, rng, reply, rlen, res);
}

void dns_answer_rcode(dns_engine *e, const uint8_t *query, size_t len, bool tcp, uint16_t rcode,
                      const uint8_t **reply, size_t *rlen, struct dns_result *res)
{
    answer(e, NULL, rcode, query, len, tcp, true, NULL, reply, rlen, res);
}
