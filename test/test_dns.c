/* The DNS server (agent/dns/): the answer engine on services of the test's
 * own (names, records, rcodes, EDNS, truncation, 0x20, bad packets), the
 * server on the loop against a real etcd (UDP, TCP, waiting for a first
 * list, staleness, caps, bind errors), and real agents asked by real
 * clients (dig). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "agentproc.h"
#include "cache.h"
#include "dns.h"
#include "dns_internal.h"
#include "error.h"
#include "etcd.h"
#include "etcd_proc.h"
#include "http.h"
#include "looptest.h"
#include "proc.h"

/* ---- queries and replies ------------------------------------------------ */

/* A query for name/type; payload > 0 adds an OPT record with it (and
 * version ver). Returns its length. */
static size_t mkq(uint8_t *buf, size_t cap, const char *name, uint16_t type, uint16_t payload,
                  uint8_t ver)
{
    knot_dname_storage_t qn;
    knot_pkt_t *p = knot_pkt_new(buf, (uint16_t)cap, NULL);
    size_t len;

    ck_assert_ptr_nonnull(p);
    knot_pkt_clear(p); /* a packet over our buffer starts with its bytes */
    ck_assert_ptr_nonnull(knot_dname_from_str(qn, name, sizeof qn));
    knot_wire_set_id(p->wire, 0x4242);
    knot_wire_set_rd(p->wire);
    ck_assert_int_eq(knot_pkt_put_question(p, qn, KNOT_CLASS_IN, type), KNOT_EOK);
    if (payload) {
        knot_rrset_t opt;
        ck_assert_int_eq(knot_edns_init(&opt, payload, 0, ver, NULL), KNOT_EOK);
        knot_pkt_begin(p, KNOT_ADDITIONAL);
        ck_assert_int_eq(knot_pkt_put(p, 0, &opt, KNOT_PF_FREE), KNOT_EOK);
    }
    len = p->size;
    knot_pkt_free(p);
    return len;
}

/* A parsed copy of a reply (free with knot_pkt_free). */
static knot_pkt_t *parse_reply(const uint8_t *r, size_t len)
{
    knot_pkt_t *p = knot_pkt_new(NULL, (uint16_t)(len > 512 ? len : 512), NULL);

    ck_assert_ptr_nonnull(p);
    memcpy(p->wire, r, len);
    p->size = len;
    ck_assert_int_eq(knot_pkt_parse(p, 0), KNOT_EOK);
    ck_assert(knot_wire_get_qr(p->wire));
    return p;
}

static size_t count_type(const knot_pkt_t *p, knot_section_t sec, uint16_t type)
{
    const knot_pktsection_t *s = knot_pkt_section(p, sec);
    size_t n = 0;

    for (uint16_t i = 0; i < s->count; i++) {
        const knot_rrset_t *rr = knot_pkt_rr(s, i);
        if (rr->type == type)
            n += rr->rrs.count;
    }
    return n;
}

/* The i-th record of the answer's rdata (records are one per RRset, but
 * a parse merges equal owner/type: walk the rdata). */
static const knot_rdata_t *answer_rdata(const knot_pkt_t *p, uint16_t type, size_t k)
{
    const knot_pktsection_t *s = knot_pkt_section(p, KNOT_ANSWER);

    for (uint16_t i = 0; i < s->count; i++) {
        const knot_rrset_t *rr = knot_pkt_rr(s, i);
        if (rr->type != type)
            continue;
        if (k < rr->rrs.count)
            return knot_rdataset_at(&rr->rrs, (uint16_t)k);
        k -= rr->rrs.count;
    }
    return NULL;
}

/* ---- the engine on services of our own ---------------------------------- */

struct fake_svc {
    const char *name;
    struct instance inst[200];
    const struct instance *view[200];
    size_t n;
    bool wait, stale;
};

static struct fake_svc fakes[8];
static size_t n_fakes;

static void fake_add(const char *svc, const char *addr, int32_t weight, const char *group)
{
    struct fake_svc *f = NULL;

    for (size_t i = 0; i < n_fakes; i++)
        if (!strcmp(fakes[i].name, svc))
            f = &fakes[i];
    if (!f) {
        f = &fakes[n_fakes++];
        memset(f, 0, sizeof *f);
        f->name = svc;
    }
    f->inst[f->n].name = (char *)svc;
    f->inst[f->n].address = strdup(addr);
    f->inst[f->n].weight = weight;
    f->inst[f->n].group = (char *)(group ? group : "");
    f->view[f->n] = &f->inst[f->n];
    f->n++;
}

static int fake_lookup(void *arg, const char *name, struct dns_svc *out)
{
    (void)arg;
    for (size_t i = 0; i < n_fakes; i++) {
        if (strcmp(fakes[i].name, name))
            continue;
        if (fakes[i].wait)
            return DNS_LOOKUP_WAIT;
        out->stale = fakes[i].stale;
        out->revision = 77;
        out->age_ms = 1234;
        out->inst = fakes[i].view;
        out->n = fakes[i].n;
        return DNS_LOOKUP_OK;
    }
    /* Known to etcd, with no instances. */
    out->stale = false;
    out->revision = 77;
    out->age_ms = 0;
    out->inst = NULL;
    out->n = 0;
    return DNS_LOOKUP_OK;
}

static struct dns_zone zone;
static dns_engine *engine;
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static void engine_setup(void)
{
    char err[256];

    n_fakes = 0;
    memset(&zone, 0, sizeof zone);
    ck_assert_int_eq(dns_domain_parse("disc", zone.domain, &zone.domain_size, err, sizeof err), 0);
    zone.ttl = 0;
    zone.max_answers = DNS_DEFAULT_MAX_ANSWERS;
    zone.serial = 7;
    zone.lookup = fake_lookup;
    ck_assert_int_eq(dns_engine_new(&engine), 0);
    fake_add("web", "10.0.0.1:80", 1, "A");
    fake_add("web", "10.0.0.2:80", 1, "B");
    fake_add("web", "10.0.0.3:8080", 98, "A");
    fake_add("six", "[2001:db8::1]:443", 1, "");
    fake_add("six", "[2001:db8::2]:443", 200000, "");
    fake_add("named", "backend.example.com:9000", 5, "");
    fake_add("mixed", "10.1.0.1:1", 1, "");
    fake_add("mixed", "10.1.0.1:2", 1, "");
    fake_add("mixed", "[::1]:3", 1, "");
}

static void engine_teardown(void)
{
    engine = dns_engine_free(engine);
    for (size_t i = 0; i < n_fakes; i++)
        for (size_t k = 0; k < fakes[i].n; k++)
            free(fakes[i].inst[k].address);
}

/* Asks the engine; returns the parsed reply (or NULL when it replies
 * nothing) and res. */
static knot_pkt_t *ask_raw(const uint8_t *q, size_t len, bool tcp, struct dns_result *res,
                           size_t *rlen)
{
    const uint8_t *reply;
    size_t n;

    dns_answer(engine, &zone, q, len, tcp, false, &rng, &reply, &n, res);
    if (rlen)
        *rlen = n;
    if (res->outcome != DNS_REPLY)
        return NULL;
    ck_assert_uint_ge(n, KNOT_WIRE_HEADER_SIZE);
    ck_assert_uint_eq(knot_wire_get_id(reply), knot_wire_get_id(q));
    if (!tcp)
        ck_assert_uint_le(n, DNS_UDP_PAYLOAD);
    return parse_reply(reply, n);
}

static knot_pkt_t *ask(const char *name, uint16_t type, struct dns_result *res)
{
    uint8_t q[512];
    size_t len = mkq(q, sizeof q, name, type, 1232, 0);
    knot_pkt_t *p = ask_raw(q, len, false, res, NULL);

    ck_assert_ptr_nonnull(p);
    return p;
}

static const knot_dname_t *lower_name(knot_dname_storage_t n, const char *s)
{
    ck_assert_ptr_nonnull(knot_dname_from_str(n, s, KNOT_DNAME_MAXLEN));
    knot_dname_to_lower(n);
    return n;
}

START_TEST(test_names)
{
    struct dns_name nm;
    knot_dname_storage_t n;

#define NAME(s) lower_name(n, s)
    dns_name_parse(&zone, NAME("web.service.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_SERVICE);
    ck_assert_str_eq(nm.service, "web");
    ck_assert(!nm.has_group);
    dns_name_parse(&zone, NAME("A.user-server.Service.DISC."), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_SERVICE);
    ck_assert_str_eq(nm.service, "user-server");
    ck_assert_str_eq(nm.group, "a");
    dns_name_parse(&zone, NAME("_user_server._tcp.service.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_SRV);
    ck_assert_str_eq(nm.service, "user_server");
    dns_name_parse(&zone, NAME("0a000005.addr.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_ADDR);
    ck_assert_int_eq(nm.family, AF_INET);
    ck_assert_int_eq(nm.ip[3], 5);
    dns_name_parse(&zone, NAME("20010db8000000000000000000000001.addr.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_ADDR);
    ck_assert_int_eq(nm.family, AF_INET6);
    dns_name_parse(&zone, NAME("disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_APEX);
    dns_name_parse(&zone, NAME("service.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_EMPTY);
    dns_name_parse(&zone, NAME("example.com"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_OUTSIDE);
    dns_name_parse(&zone, NAME("discx"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_OUTSIDE);
    dns_name_parse(&zone, NAME("a\\.b.service.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_NONE);
    ck_assert_ptr_nonnull(nm.reason);
    dns_name_parse(&zone, NAME("x.y.z.service.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_NONE);
    dns_name_parse(&zone, NAME("zz.addr.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_NONE);
    dns_name_parse(&zone, NAME("web.other.disc"), &nm);
    ck_assert_int_eq(nm.kind, DNS_NAME_NONE);
#undef NAME
    ck_assert(dns_label_is_service((const uint8_t *)"user-server_2", 13));
    ck_assert(!dns_label_is_service((const uint8_t *)"User", 4));
    ck_assert(!dns_label_is_service((const uint8_t *)"a/b", 3));

    char err[128];
    knot_dname_storage_t d;
    size_t dl;
    ck_assert_int_eq(dns_domain_parse("", d, &dl, err, sizeof err), DA_EINVAL);
    ck_assert_int_eq(dns_domain_parse(".", d, &dl, err, sizeof err), DA_EINVAL);
    ck_assert_int_eq(dns_domain_parse("Consul.Local.", d, &dl, err, sizeof err), 0);
    ck_assert_uint_eq(dl, 14);
}
END_TEST

/* A: every IPv4 address once, in a weighted random order: the 98-weight
 * instance comes first in about 98% of answers. */
START_TEST(test_a_weighted)
{
    struct dns_result res;
    int first3 = 0, rounds = 2000;

    for (int i = 0; i < rounds; i++) {
        knot_pkt_t *p = ask("web.service.disc", KNOT_RRTYPE_A, &res);
        ck_assert_int_eq(res.rcode, KNOT_RCODE_NOERROR);
        ck_assert(knot_wire_get_aa(p->wire));
        ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 3);
        const knot_rdata_t *rd = answer_rdata(p, KNOT_RRTYPE_A, 0);
        ck_assert_ptr_nonnull(rd);
        if (rd->data[3] == 3)
            first3++;
        knot_pkt_free(p);
    }
    ck_assert_int_gt(first3, rounds * 93 / 100);
    ck_assert_int_lt(first3, rounds);
}
END_TEST

START_TEST(test_aaaa_srv_txt)
{
    struct dns_result res;
    knot_pkt_t *p;
    const knot_rdata_t *rd;

    p = ask("six.service.disc", KNOT_RRTYPE_AAAA, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_AAAA), 2);
    knot_pkt_free(p);
    /* No IPv4 address: NODATA, the SOA in authority. */
    p = ask("six.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOERROR);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 0);
    ck_assert_uint_eq(count_type(p, KNOT_AUTHORITY, KNOT_RRTYPE_SOA), 1);
    knot_pkt_free(p);

    /* SRV: one per instance, weight clamped, targets with their AAAA. */
    p = ask("six.service.disc", KNOT_RRTYPE_SRV, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SRV), 2);
    ck_assert_uint_eq(count_type(p, KNOT_ADDITIONAL, KNOT_RRTYPE_AAAA), 2);
    rd = answer_rdata(p, KNOT_RRTYPE_SRV, 0);
    bool clamped = false;
    for (size_t k = 0; k < 2; k++) {
        rd = answer_rdata(p, KNOT_RRTYPE_SRV, k);
        ck_assert_uint_eq(knot_wire_read_u16(rd->data), 0);       /* priority */
        ck_assert_uint_eq(knot_wire_read_u16(rd->data + 4), 443); /* port */
        if (knot_wire_read_u16(rd->data + 2) == 65535)
            clamped = true;
        char t[256];
        knot_dname_to_str(t, rd->data + 6, sizeof t);
        ck_assert_ptr_nonnull(strstr(t, ".addr.disc."));
    }
    ck_assert(clamped);
    knot_pkt_free(p);

    /* The RFC 2782 form, and a host-name target. */
    p = ask("_named._tcp.service.disc", KNOT_RRTYPE_SRV, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SRV), 1);
    rd = answer_rdata(p, KNOT_RRTYPE_SRV, 0);
    char t[256];
    knot_dname_to_str(t, rd->data + 6, sizeof t);
    ck_assert_str_eq(t, "backend.example.com.");
    ck_assert_uint_eq(knot_wire_read_u16(rd->data + 2), 5);
    ck_assert_uint_eq(knot_wire_read_u16(rd->data + 4), 9000);
    knot_pkt_free(p);
    /* A host name has no A here: NODATA. */
    p = ask("named.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOERROR);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 0);
    knot_pkt_free(p);

    /* TXT: freshness. */
    p = ask("web.service.disc", KNOT_RRTYPE_TXT, &res);
    rd = answer_rdata(p, KNOT_RRTYPE_TXT, 0);
    ck_assert_ptr_nonnull(rd);
    ck_assert(memmem(rd->data, rd->len, "revision=77", 11));
    ck_assert(memmem(rd->data, rd->len, "stale=false", 11));
    ck_assert(memmem(rd->data, rd->len, "age_ms=1234", 11));
    ck_assert(memmem(rd->data, rd->len, "instances=3", 11));
    knot_pkt_free(p);
    fakes[0].stale = true;
    p = ask("web.service.disc", KNOT_RRTYPE_TXT, &res);
    rd = answer_rdata(p, KNOT_RRTYPE_TXT, 0);
    ck_assert(memmem(rd->data, rd->len, "stale=true", 10));
    knot_pkt_free(p);
    /* A stale list is still answered. */
    p = ask("web.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 3);
    knot_pkt_free(p);

    /* The address names SRV targets use. */
    p = ask("0A000005.addr.disc", KNOT_RRTYPE_A, &res);
    rd = answer_rdata(p, KNOT_RRTYPE_A, 0);
    ck_assert(rd && rd->data[0] == 10 && rd->data[3] == 5);
    knot_pkt_free(p);

    /* Two instances on one IP give one A record. */
    p = ask("mixed.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 1);
    knot_pkt_free(p);
    p = ask("mixed.service.disc", KNOT_RRTYPE_ANY, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 1);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_AAAA), 1);
    knot_pkt_free(p);
}
END_TEST

START_TEST(test_groups)
{
    struct dns_result res;
    knot_pkt_t *p;

    /* Groups compare without case: "a" finds group "A". */
    p = ask("a.web.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 2);
    knot_pkt_free(p);
    p = ask("B.web.service.disc", KNOT_RRTYPE_SRV, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SRV), 1);
    knot_pkt_free(p);
    p = ask("c.web.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NXDOMAIN);
    ck_assert_str_eq(res.reason, "no instances in that group");
    knot_pkt_free(p);
}
END_TEST

START_TEST(test_negative)
{
    struct dns_result res;
    knot_pkt_t *p;

    /* Unknown service: NXDOMAIN with the SOA, TTL and minimum the ttl. */
    p = ask("nobody.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NXDOMAIN);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NXDOMAIN);
    ck_assert_uint_eq(count_type(p, KNOT_AUTHORITY, KNOT_RRTYPE_SOA), 1);
    ck_assert_str_eq(res.reason, "no instances");
    knot_pkt_free(p);
    /* A name that is no service label. */
    p = ask("no\\!pe.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NXDOMAIN);
    ck_assert_ptr_nonnull(strstr(res.reason, "not a service name"));
    knot_pkt_free(p);
    /* Outside the domain: REFUSED, not authoritative. */
    p = ask("www.example.com", KNOT_RRTYPE_A, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_REFUSED);
    ck_assert(!knot_wire_get_aa(p->wire));
    knot_pkt_free(p);
    zone.forward = true;
    uint8_t q[512];
    size_t len = mkq(q, sizeof q, "www.example.com", KNOT_RRTYPE_A, 0, 0);
    ck_assert_ptr_null(ask_raw(q, len, false, &res, NULL));
    ck_assert_int_eq(res.outcome, DNS_FORWARD);
    zone.forward = false;
    /* When no recursor answers: SERVFAIL, with the question and the OPT
     * the client sent. */
    {
        const uint8_t *fr;
        size_t frlen;
        len = mkq(q, sizeof q, "WWW.example.com", KNOT_RRTYPE_AAAA, 1232, 0);
        dns_answer_rcode(engine, q, len, false, KNOT_RCODE_SERVFAIL, &fr, &frlen, &res);
        ck_assert_int_eq(res.outcome, DNS_REPLY);
        ck_assert_int_eq(res.rcode, KNOT_RCODE_SERVFAIL);
        p = parse_reply(fr, frlen);
        ck_assert_uint_eq(knot_wire_get_id(p->wire), 0x4242);
        ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_SERVFAIL);
        ck_assert_uint_eq(knot_pkt_qtype(p), KNOT_RRTYPE_AAAA);
        ck_assert(knot_pkt_has_edns(p));
        ck_assert_uint_eq(knot_wire_get_ancount(p->wire), 0);
        knot_pkt_free(p);
    }
    /* Zone transfers and meta types. */
    p = ask("disc", KNOT_RRTYPE_AXFR, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_REFUSED);
    knot_pkt_free(p);
    p = ask("web.service.disc", KNOT_RRTYPE_IXFR, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_REFUSED);
    knot_pkt_free(p);
    p = ask("web.service.disc", 253 /* MAILB */, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOTIMPL);
    knot_pkt_free(p);
    /* Other types: NODATA. The apex has its SOA. */
    p = ask("web.service.disc", KNOT_RRTYPE_MX, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOERROR);
    ck_assert_uint_eq(count_type(p, KNOT_AUTHORITY, KNOT_RRTYPE_SOA), 1);
    knot_pkt_free(p);
    p = ask("DISC", KNOT_RRTYPE_SOA, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SOA), 1);
    knot_pkt_free(p);
    /* A list not there yet: wait, and SERVFAIL once waited. */
    fakes[0].wait = true;
    len = mkq(q, sizeof q, "web.service.disc", KNOT_RRTYPE_A, 0, 0);
    ck_assert_ptr_null(ask_raw(q, len, false, &res, NULL));
    ck_assert_int_eq(res.outcome, DNS_WAIT);
    ck_assert_str_eq(res.service, "web");
    const uint8_t *reply;
    size_t rlen;
    dns_answer(engine, &zone, q, len, false, true, &rng, &reply, &rlen, &res);
    ck_assert_int_eq(res.outcome, DNS_REPLY);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_SERVFAIL);
}
END_TEST

/* Bad packets: each gets its rcode, or nothing. */
START_TEST(test_bad_packets)
{
    struct dns_result res;
    uint8_t q[8192];
    size_t len;
    knot_pkt_t *p;

    /* Shorter than a header, and responses: nothing. */
    ck_assert_ptr_null(ask_raw((const uint8_t *)"\x12\x34\x01", 3, false, &res, NULL));
    ck_assert_int_eq(res.outcome, DNS_DROP);
    len = mkq(q, sizeof q, "web.service.disc", KNOT_RRTYPE_A, 0, 0);
    knot_wire_set_qr(q);
    ck_assert_ptr_null(ask_raw(q, len, false, &res, NULL));
    ck_assert_int_eq(res.outcome, DNS_DROP);

    /* Truncated inside the name: FORMERR, header only. */
    len = mkq(q, sizeof q, "web.service.disc", KNOT_RRTYPE_A, 0, 0);
    p = ask_raw(q, 20, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    ck_assert_uint_eq(knot_wire_get_qdcount(p->wire), 0);
    knot_pkt_free(p);
    /* Trailing bytes. */
    memset(q + len, 0, 5);
    p = ask_raw(q, len + 5, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    /* QDCOUNT 2, and 0. */
    knot_wire_set_qdcount(q, 2);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    knot_wire_set_qdcount(q, 0);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    knot_wire_set_qdcount(q, 1);
    /* A query that carries an answer. */
    knot_wire_set_ancount(q, 1);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    knot_wire_set_ancount(q, 0);
    /* Opcodes other than QUERY. */
    knot_wire_set_opcode(q, KNOT_OPCODE_UPDATE);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOTIMPL);
    knot_pkt_free(p);
    knot_wire_set_opcode(q, KNOT_OPCODE_QUERY);
    /* Class CH. */
    knot_wire_write_u16(q + len - 2, KNOT_CLASS_CH);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_REFUSED);
    knot_pkt_free(p);
    /* A compression pointer to itself as the question name. */
    static const uint8_t loop[] = {0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                                   0x00, 0x00, 0x00, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01};
    p = ask_raw(loop, sizeof loop, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    /* Over the size cap. */
    memset(q + len, 0, sizeof q - len);
    p = ask_raw(q, DNS_MAX_QUERY + 1, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_FORMERR);
    knot_pkt_free(p);
    /* EDNS version 1: BADVERS, in the OPT record. */
    len = mkq(q, sizeof q, "web.service.disc", KNOT_RRTYPE_A, 1232, 1);
    p = ask_raw(q, len, false, &res, NULL);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_BADVERS);
    ck_assert_ptr_nonnull(p->opt_rr);
    ck_assert_uint_eq(knot_pkt_ext_rcode(p), KNOT_RCODE_BADVERS);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 0);
    knot_pkt_free(p);
}
END_TEST

/* EDNS, truncation, TCP, max_answers. */
START_TEST(test_sizes)
{
    struct dns_result res;
    uint8_t q[512];
    size_t len, rlen;
    knot_pkt_t *p;
    char addr[32];

    for (int i = 0; i < 150; i++) {
        snprintf(addr, sizeof addr, "10.9.%d.%d:80", i / 200, i % 200 + 1);
        fake_add("big", addr, 1, "");
    }
    /* A: max_answers, whatever the room. */
    p = ask("big.service.disc", KNOT_RRTYPE_A, &res);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), DNS_DEFAULT_MAX_ANSWERS);
    ck_assert(!knot_wire_get_tc(p->wire));
    ck_assert_ptr_nonnull(p->opt_rr);
    ck_assert_uint_eq(knot_edns_get_payload(p->opt_rr), DNS_UDP_PAYLOAD);
    knot_pkt_free(p);
    zone.max_answers = 1000;
    /* Without EDNS: 512 bytes at most, TC set. */
    len = mkq(q, sizeof q, "big.service.disc", KNOT_RRTYPE_A, 0, 0);
    p = ask_raw(q, len, false, &res, &rlen);
    ck_assert_uint_le(rlen, 512);
    ck_assert(knot_wire_get_tc(p->wire));
    ck_assert(res.truncated);
    ck_assert_ptr_null(p->opt_rr);
    knot_pkt_free(p);
    /* EDNS 4096 asked: our 1232 at most, TC set, OPT kept. */
    len = mkq(q, sizeof q, "big.service.disc", KNOT_RRTYPE_A, 4096, 0);
    p = ask_raw(q, len, false, &res, &rlen);
    ck_assert_uint_le(rlen, DNS_UDP_PAYLOAD);
    ck_assert_uint_gt(rlen, 1000);
    ck_assert(knot_wire_get_tc(p->wire));
    ck_assert_ptr_nonnull(p->opt_rr);
    knot_pkt_free(p);
    /* EDNS under 512 counts as 512. */
    len = mkq(q, sizeof q, "big.service.disc", KNOT_RRTYPE_A, 100, 0);
    p = ask_raw(q, len, false, &res, &rlen);
    ck_assert_uint_le(rlen, 512);
    ck_assert_uint_gt(rlen, 400);
    knot_pkt_free(p);
    /* TCP: everything, and every A record's owner is a pointer to the
     * question (compression). */
    p = ask_raw(q, len, true, &res, &rlen);
    ck_assert(!knot_wire_get_tc(p->wire));
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 150);
    ck_assert_uint_lt(rlen, 12 + 22 + 150 * 16 + 11 + 1);
    knot_pkt_free(p);
    len = mkq(q, sizeof q, "_big._tcp.service.disc", KNOT_RRTYPE_SRV, 0, 0);
    p = ask_raw(q, len, true, &res, &rlen);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SRV), 150);
    ck_assert_uint_eq(count_type(p, KNOT_ADDITIONAL, KNOT_RRTYPE_A), 150);
    knot_pkt_free(p);
    p = ask_raw(q, len, false, &res, &rlen);
    ck_assert(knot_wire_get_tc(p->wire));
    knot_pkt_free(p);
}
END_TEST

/* 0x20: the question comes back as asked, and answers point at it. */
START_TEST(test_case_preserved)
{
    struct dns_result res;
    uint8_t q[512];
    size_t len = mkq(q, sizeof q, "wEb.SeRvIcE.dIsC", KNOT_RRTYPE_A, 0, 0), rlen;
    const uint8_t *reply;

    dns_answer(engine, &zone, q, len, false, false, &rng, &reply, &rlen, &res);
    ck_assert_int_eq(res.rcode, KNOT_RCODE_NOERROR);
    ck_assert_int_eq(memcmp(reply + 12, q + 12, len - 12), 0);
    /* The first answer's owner: a pointer to offset 12. */
    ck_assert_uint_eq(reply[len], 0xc0);
    ck_assert_uint_eq(reply[len + 1], 0x0c);
}
END_TEST

/* ---- the server on the loop, against a real etcd -------------------------- */

struct fx {
    struct etcd_cluster *cluster;
    uv_loop_t loop;
    http_client *http;
    etcd_client *etcd;
    cache *cache;
    dns_server *dns;
    int port;
    char listen[64];
};

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* The server with options of the test's (recursors, caps) and its own
 * listener, cluster and cache. */
static void fx_start_opts(struct fx *f, struct dns_options o)
{
    struct etcd_cluster_opts co = {.members = 1};
    struct etcd_options eo = {0};
    struct cache_options cao = {.prefix = "/micro"};
    const char *ep, *listen[1];
    char err[512];

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    ep = etcd_member_url(f->cluster, 0);
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    eo.endpoints = &ep;
    eo.n_endpoints = 1;
    eo.timeout_ms = 1000;
    ck_assert_int_eq(etcd_client_new(&f->etcd, &f->loop, f->http, &eo), 0);
    ck_assert_int_eq(cache_new(&f->cache, &f->loop, f->etcd, &cao), 0);
    f->port = free_port();
    snprintf(f->listen, sizeof f->listen, "127.0.0.1:%d", f->port);
    listen[0] = f->listen;
    o.listen = listen;
    o.n_listen = 1;
    o.tcp_idle_ms = 300;
    ck_assert_msg(dns_new(&f->dns, &f->loop, f->cache, &o, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(dns_start(f->dns, err, sizeof err) == 0, "%s", err);
}

static void fx_start(struct fx *f, size_t max_conns)
{
    struct dns_options o = {0};

    o.tcp_max_conns = max_conns;
    fx_start_opts(f, o);
}

static void fx_stop(struct fx *f)
{
    f->dns = dns_close(f->dns);
    f->cache = cache_close(f->cache);
    f->etcd = etcd_client_free(f->etcd);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
    etcd_cluster_stop(f->cluster);
}

static void put(struct fx *f, const char *svc, const char *addr, int weight)
{
    char key[256], val[512], out[256];
    const char *args[] = {"put", key, val, NULL};

    snprintf(key, sizeof key, "/micro/%s/%s", svc, addr);
    snprintf(val, sizeof val, "{\"Name\":\"%s\",\"Address\":\"%s\",\"Weight\":%d,\"Group\":\"\"}",
             svc, addr, weight);
    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
}

struct rx {
    int fd;
    uint8_t buf[65536];
    ssize_t n;
};

static bool rx_ready(void *arg)
{
    struct rx *r = arg;

    r->n = recv(r->fd, r->buf, sizeof r->buf, MSG_DONTWAIT);
    return r->n > 0;
}

static int udp_socket(struct fx *f)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* One query over UDP, the loop run until its reply. */
static knot_pkt_t *udp_ask(struct fx *f, const char *name, uint16_t type, int timeout_ms)
{
    static struct rx r;
    uint8_t q[512];
    size_t len = mkq(q, sizeof q, name, type, 1232, 0);

    r.fd = udp_socket(f);
    ck_assert_int_eq(send(r.fd, q, len, 0), (ssize_t)len);
    bool ok = loop_until_fn(&f->loop, rx_ready, &r, timeout_ms);
    close(r.fd);
    return ok ? parse_reply(r.buf, (size_t)r.n) : NULL;
}

static int tcp_connect(struct fx *f)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

struct tcp_rx {
    int fd;
    uint8_t buf[1 << 17];
    size_t have;
    size_t want; /* complete frames wanted */
    bool eof;
};

static size_t frames(const struct tcp_rx *r)
{
    size_t n = 0, off = 0;

    while (r->have - off >= 2 && r->have - off >= 2u + knot_wire_read_u16(r->buf + off)) {
        off += 2u + knot_wire_read_u16(r->buf + off);
        n++;
    }
    return n;
}

static bool tcp_ready(void *arg)
{
    struct tcp_rx *r = arg;
    ssize_t n;

    while ((n = recv(r->fd, r->buf + r->have, sizeof r->buf - r->have, MSG_DONTWAIT)) > 0)
        r->have += (size_t)n;
    if (n == 0)
        r->eof = true;
    return r->eof || frames(r) >= r->want;
}

START_TEST(test_server_udp_tcp)
{
    struct fx f;
    knot_pkt_t *p;

    fx_start(&f, 2);
    put(&f, "web", "10.0.0.1:80", 1);
    put(&f, "web", "10.0.0.2:81", 3);
    /* The first query waits for the list, then gets it. */
    p = udp_ask(&f, "web.service.disc", KNOT_RRTYPE_A, 5000);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NOERROR);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 2);
    knot_pkt_free(p);
    p = udp_ask(&f, "_web._tcp.service.disc", KNOT_RRTYPE_SRV, 5000);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_SRV), 2);
    knot_pkt_free(p);
    /* A put shows in the next answer. */
    put(&f, "web", "10.0.0.3:82", 1);
    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) {
        p = udp_ask(&f, "web.service.disc", KNOT_RRTYPE_A, 5000);
        seen = count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A) == 3;
        knot_pkt_free(p);
        if (!seen)
            loop_for(&f.loop, 20);
    }
    ck_assert(seen);
    /* Unknown service: NXDOMAIN once etcd said so. */
    p = udp_ask(&f, "nobody.service.disc", KNOT_RRTYPE_A, 5000);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NXDOMAIN);
    knot_pkt_free(p);

    /* TCP: three queries in one write, three replies. */
    static struct tcp_rx r;
    uint8_t q[3][600];
    size_t ql[3], tot = 0;
    uint8_t out[2000];
    const char *names[3] = {"web.service.disc", "_web._tcp.service.disc", "web.service.disc"};
    uint16_t types[3] = {KNOT_RRTYPE_A, KNOT_RRTYPE_SRV, KNOT_RRTYPE_TXT};
    for (int i = 0; i < 3; i++) {
        ql[i] = mkq(q[i] + 2, sizeof q[i] - 2, names[i], types[i], 0, 0);
        knot_wire_write_u16(q[i], (uint16_t)ql[i]);
        memcpy(out + tot, q[i], ql[i] + 2);
        tot += ql[i] + 2;
    }
    memset(&r, 0, sizeof r);
    r.fd = tcp_connect(&f);
    r.want = 3;
    ck_assert_int_eq(send(r.fd, out, tot, 0), (ssize_t)tot);
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &r, 5000));
    ck_assert_uint_eq(frames(&r), 3);
    /* Idle: the server closes it. */
    r.want = 4;
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &r, 5000));
    ck_assert(r.eof);
    close(r.fd);

    /* A slow client (half a length) and a half-open one are closed after
     * the idle time; past the cap, a connection is closed at once. */
    struct tcp_rx a = {0}, b = {0}, c = {0};
    a.fd = tcp_connect(&f);
    b.fd = tcp_connect(&f);
    ck_assert_int_eq(send(a.fd, "\x00", 1, 0), 1);
    loop_for(&f.loop, 50);
    c.fd = tcp_connect(&f);
    c.want = 1;
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &c, 2000));
    ck_assert(c.eof);
    a.want = b.want = 1;
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &a, 3000));
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &b, 3000));
    ck_assert(a.eof && b.eof);
    close(a.fd);
    close(b.fd);
    close(c.fd);
    /* A frame longer than any query: closed. */
    memset(&a, 0, sizeof a);
    a.fd = tcp_connect(&f);
    ck_assert_int_eq(send(a.fd, "\xff\xff", 2, 0), 2);
    a.want = 1;
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &a, 2000));
    ck_assert(a.eof);
    close(a.fd);

    json_t *st = dns_status(f.dns);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "queries")), 6);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "tcp_refused")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(st, "rcodes"), "NXDOMAIN")),
                     1);
    ck_assert_str_eq(
        json_string_value(json_object_get(json_object_get(st, "last_nxdomain"), "reason")),
        "no instances");
    json_decref(st);
    fx_stop(&f);
}
END_TEST

/* etcd away: the known list is still answered, the TXT says stale; a
 * service never seen waits and gets SERVFAIL. */
START_TEST(test_server_stale)
{
    struct fx f;
    knot_pkt_t *p;
    const knot_rdata_t *rd;

    fx_start(&f, 0);
    put(&f, "api", "10.0.1.1:80", 1);
    p = udp_ask(&f, "api.service.disc", KNOT_RRTYPE_A, 5000);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 1);
    knot_pkt_free(p);
    ck_assert_int_eq(etcd_member_kill(f.cluster, 0), 0);
    bool stale = false;
    for (int i = 0; i < 200 && !stale; i++) {
        p = udp_ask(&f, "api.service.disc", KNOT_RRTYPE_TXT, 5000);
        rd = answer_rdata(p, KNOT_RRTYPE_TXT, 0);
        stale = rd && memmem(rd->data, rd->len, "stale=true", 10);
        knot_pkt_free(p);
        if (!stale)
            loop_for(&f.loop, 50);
    }
    ck_assert(stale);
    p = udp_ask(&f, "api.service.disc", KNOT_RRTYPE_A, 5000);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NOERROR);
    ck_assert_uint_eq(count_type(p, KNOT_ANSWER, KNOT_RRTYPE_A), 1);
    knot_pkt_free(p);
    p = udp_ask(&f, "never.service.disc", KNOT_RRTYPE_A, DNS_WAIT_MS + 3000);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_SERVFAIL);
    knot_pkt_free(p);
    fx_stop(&f);
}
END_TEST

/* An address in use stops the start, naming it and the fix. */
START_TEST(test_server_bind_error)
{
    struct fx f;
    dns_server *d2;
    struct dns_options o = {0};
    const char *listen[1];
    char err[512];

    fx_start(&f, 0);
    listen[0] = f.listen;
    o.listen = listen;
    o.n_listen = 1;
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), 0);
    ck_assert_int_lt(dns_start(d2, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, f.listen));
    ck_assert_ptr_nonnull(strstr(err, "dns.enabled: false"));
    d2 = dns_close(d2);
    listen[0] = "localhost:53";
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "IP address"));
    o.n_listen = 0;
    o.domain = "bad..domain";
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), DA_EINVAL);
    /* A recursor that is one of our listeners: every forwarded query
     * would come back. */
    const char *rec[1] = {f.listen};
    o.domain = NULL;
    listen[0] = "0.0.0.0:53";
    o.n_listen = 1;
    rec[0] = "127.0.0.1";
    o.recursors = rec;
    o.n_recursors = 1;
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), DA_EINVAL);
    ck_assert_msg(strstr(err, "own dns.listen"), "%s", err);
    rec[0] = "127.0.0.1:54";
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), 0);
    d2 = dns_close(d2);
    rec[0] = "resolver.example";
    ck_assert_int_eq(dns_new(&d2, &f.loop, f.cache, &o, err, sizeof err), DA_EINVAL);
    ck_assert_msg(strstr(err, "IP address"), "%s", err);
    fx_stop(&f);
}
END_TEST

/* ---- forwarding, the test playing the recursors ------------------------- */

/* A recursor of the test's: a UDP socket and a TCP listener on one port of
 * 127.0.0.1, and the last datagram it got. */
struct rec {
    int udp, tcp;
    char addr[32];
    uint8_t buf[4096];
    ssize_t n;
    struct sockaddr_storage from;
    socklen_t fromlen;
};

static void rec_open(struct rec *r)
{
    for (int i = 0; i < 50; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof sa;
        int one = 1;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        r->udp = socket(AF_INET, SOCK_DGRAM, 0);
        r->tcp = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert(r->udp >= 0 && r->tcp >= 0);
        setsockopt(r->tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        ck_assert_int_eq(bind(r->udp, (struct sockaddr *)&sa, sizeof sa), 0);
        ck_assert_int_eq(getsockname(r->udp, (struct sockaddr *)&sa, &len), 0);
        /* Non-blocking: the test accepts between turns of the loop. */
        fcntl(r->tcp, F_SETFL, O_NONBLOCK);
        if (bind(r->tcp, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(r->tcp, 8) == 0) {
            snprintf(r->addr, sizeof r->addr, "127.0.0.1:%d", ntohs(sa.sin_port));
            return;
        }
        close(r->udp);
        close(r->tcp);
    }
    ck_abort_msg("no port free for both UDP and TCP");
}

static bool rec_ready(void *arg)
{
    struct rec *r = arg;

    r->fromlen = sizeof r->from;
    r->n = recvfrom(r->udp, r->buf, sizeof r->buf, MSG_DONTWAIT, (struct sockaddr *)&r->from,
                    &r->fromlen);
    return r->n > 0;
}

/* Reads what came to the recursor; true if nothing had. */
static bool rec_quiet(struct rec *r)
{
    bool quiet = true;

    while (rec_ready(r))
        quiet = false;
    return quiet;
}

/* The recursor's reply to the query q: its question and an A record of
 * 10.9.8.7, or (tc) no record and TC set. Returns its length. */
static size_t rec_reply(const uint8_t *q, size_t len, bool tc, uint8_t *out, size_t cap)
{
    static const uint8_t ip[4] = {10, 9, 8, 7};
    knot_pkt_t *qp = knot_pkt_new(NULL, 4096, NULL), *rp = knot_pkt_new(out, (uint16_t)cap, NULL);
    union {
        knot_rdata_t rd;
        uint8_t b[16];
    } rd;
    knot_rrset_t rr;
    size_t n;

    ck_assert(qp && rp);
    memcpy(qp->wire, q, len);
    qp->size = len;
    ck_assert_int_eq(knot_pkt_parse(qp, 0), KNOT_EOK);
    knot_pkt_clear(rp);
    ck_assert_int_eq(knot_pkt_init_response(rp, qp), KNOT_EOK);
    if (tc) {
        knot_wire_set_tc(rp->wire);
    } else {
        knot_rrset_init(&rr, (knot_dname_t *)knot_pkt_qname(qp), KNOT_RRTYPE_A, KNOT_CLASS_IN, 60);
        knot_rdata_init(&rd.rd, 4, ip);
        rr.rrs.count = 1;
        rr.rrs.size = (uint32_t)knot_rdata_size(4);
        rr.rrs.rdata = &rd.rd;
        knot_pkt_begin(rp, KNOT_ANSWER);
        ck_assert_int_eq(knot_pkt_put(rp, KNOT_COMPR_HINT_QNAME, &rr, 0), KNOT_EOK);
    }
    n = rp->size;
    knot_pkt_free(rp);
    knot_pkt_free(qp);
    return n;
}

static bool has_a(const knot_pkt_t *p, const char *ip)
{
    const knot_rdata_t *rd = answer_rdata(p, KNOT_RRTYPE_A, 0);
    uint8_t want[4];

    ck_assert_int_eq(inet_pton(AF_INET, ip, want), 1);
    return rd && rd->len == 4 && !memcmp(rd->data, want, 4);
}

/* A TCP connection the forwarder opened to the recursor, and the query
 * framed on it. */
struct rec_conn {
    struct rec *r;
    int fd;
    uint8_t buf[4096];
    size_t have;
};

static bool rec_conn_ready(void *arg)
{
    struct rec_conn *c = arg;
    ssize_t n;

    if (c->fd < 0 && (c->fd = accept(c->r->tcp, NULL, NULL)) < 0)
        return false;
    while ((n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, MSG_DONTWAIT)) > 0)
        c->have += (size_t)n;
    return c->have >= 2 && c->have >= 2u + knot_wire_read_u16(c->buf);
}

/* Forwarding against recursors the test plays: the next recursor after a
 * silent one, replies under the client's ID, forged replies ignored, TC
 * relayed, TCP forwarded over TCP, SERVFAIL when none answers or past the
 * cap, and names of the domain never forwarded. */
START_TEST(test_server_forward)
{
    static struct rec a, b;
    static struct rx c;
    static struct tcp_rx t;
    static struct rec_conn rc;
    struct dns_options o = {0};
    const char *recs[2];
    uint8_t q[512], out[4096];
    size_t len, n;
    struct fx f;
    knot_pkt_t *p;
    int x;

    rec_open(&a);
    rec_open(&b);
    recs[0] = a.addr;
    recs[1] = b.addr;
    o.recursors = recs;
    o.n_recursors = 2;
    o.forward_ms = 300;
    o.max_forwards = 2;
    fx_start_opts(&f, o);

    /* The first recursor is silent: the second is asked, with the same
     * query, and its reply comes back under the client's ID. */
    c.fd = udp_socket(&f);
    len = mkq(q, sizeof q, "www.Example.com", KNOT_RRTYPE_A, 1232, 0);
    ck_assert_int_eq(send(c.fd, q, len, 0), (ssize_t)len);
    ck_assert(loop_until_fn(&f.loop, rec_ready, &a, 5000));
    ck_assert(loop_until_fn(&f.loop, rec_ready, &b, 5000));
    ck_assert_uint_eq((size_t)b.n, len);
    ck_assert(!memcmp(b.buf + 2, q + 2, len - 2)); /* all but the ID */
    ck_assert_uint_eq(knot_wire_get_id(b.buf), knot_wire_get_id(a.buf));
    /* A reply from an address the query did not go to is ignored. */
    n = rec_reply(b.buf, (size_t)b.n, true, out, sizeof out);
    x = socket(AF_INET, SOCK_DGRAM, 0);
    ck_assert_int_eq(sendto(x, out, n, 0, (struct sockaddr *)&b.from, b.fromlen), (ssize_t)n);
    close(x);
    loop_for(&f.loop, 100);
    ck_assert(!rx_ready(&c));
    n = rec_reply(b.buf, (size_t)b.n, false, out, sizeof out);
    ck_assert_int_eq(sendto(b.udp, out, n, 0, (struct sockaddr *)&b.from, b.fromlen), (ssize_t)n);
    ck_assert(loop_until_fn(&f.loop, rx_ready, &c, 5000));
    p = parse_reply(c.buf, (size_t)c.n);
    ck_assert_uint_eq(knot_wire_get_id(p->wire), 0x4242);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NOERROR);
    ck_assert(has_a(p, "10.9.8.7"));
    knot_pkt_free(p);

    /* A truncated reply is relayed as it is: the client retries over TCP. */
    len = mkq(q, sizeof q, "big.example", KNOT_RRTYPE_TXT, 0, 0);
    ck_assert_int_eq(send(c.fd, q, len, 0), (ssize_t)len);
    ck_assert(loop_until_fn(&f.loop, rec_ready, &a, 5000));
    n = rec_reply(a.buf, (size_t)a.n, true, out, sizeof out);
    ck_assert_int_eq(sendto(a.udp, out, n, 0, (struct sockaddr *)&a.from, a.fromlen), (ssize_t)n);
    ck_assert(loop_until_fn(&f.loop, rx_ready, &c, 5000));
    p = parse_reply(c.buf, (size_t)c.n);
    ck_assert(knot_wire_get_tc(p->wire));
    ck_assert_uint_eq(knot_wire_get_id(p->wire), 0x4242);
    knot_pkt_free(p);
    /* That retry goes to the recursor over TCP. */
    memset(&t, 0, sizeof t);
    t.fd = tcp_connect(&f);
    t.want = 1;
    len = mkq(q + 2, sizeof q - 2, "big.example", KNOT_RRTYPE_TXT, 0, 0);
    knot_wire_write_u16(q, (uint16_t)len);
    ck_assert_int_eq(send(t.fd, q, len + 2, 0), (ssize_t)(len + 2));
    rc.r = &a;
    rc.fd = -1;
    ck_assert(loop_until_fn(&f.loop, rec_conn_ready, &rc, 5000));
    n = rec_reply(rc.buf + 2, knot_wire_read_u16(rc.buf), false, out + 2, sizeof out - 2);
    knot_wire_write_u16(out, (uint16_t)n);
    ck_assert_int_eq(send(rc.fd, out, n + 2, 0), (ssize_t)(n + 2));
    ck_assert(loop_until_fn(&f.loop, tcp_ready, &t, 5000));
    ck_assert_uint_eq(frames(&t), 1);
    p = parse_reply(t.buf + 2, knot_wire_read_u16(t.buf));
    ck_assert_uint_eq(knot_wire_get_id(p->wire), 0x4242);
    ck_assert(has_a(p, "10.9.8.7"));
    knot_pkt_free(p);
    close(rc.fd);
    close(t.fd);

    /* Names of the domain never reach a recursor. */
    p = udp_ask(&f, "nobody.service.disc", KNOT_RRTYPE_A, 5000);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_NXDOMAIN);
    knot_pkt_free(p);
    ck_assert(rec_quiet(&a) && rec_quiet(&b));

    /* Both silent: SERVFAIL. */
    p = udp_ask(&f, "silent.example", KNOT_RRTYPE_A, 5000);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(knot_wire_get_rcode(p->wire), KNOT_RCODE_SERVFAIL);
    knot_pkt_free(p);
    ck_assert(!rec_quiet(&a) && !rec_quiet(&b));

    /* Past the cap (2 in flight), SERVFAIL at once: the third query's
     * answer comes before the two others, which wait for the recursors. */
    for (uint16_t id = 1; id <= 3; id++) {
        len = mkq(q, sizeof q, id == 3 ? "third.example" : "first.example", KNOT_RRTYPE_A, 0, 0);
        knot_wire_set_id(q, id);
        ck_assert_int_eq(send(c.fd, q, len, 0), (ssize_t)len);
    }
    ck_assert(loop_until_fn(&f.loop, rx_ready, &c, 5000));
    ck_assert_uint_eq(knot_wire_get_id(c.buf), 3);
    ck_assert_int_eq(knot_wire_get_rcode(c.buf), KNOT_RCODE_SERVFAIL);

    json_t *st = dns_status(f.dns);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "forward_busy")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "forward_failed")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "forwarded")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "forwarding")), 2);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(st, "recursors"), 0)),
                     a.addr);
    json_decref(st);
    /* Stopping with queries in flight leaks nothing (fx_stop checks). */
    close(c.fd);
    fx_stop(&f);
    close(a.udp);
    close(a.tcp);
    close(b.udp);
    close(b.tcp);
}
END_TEST

/* ---- real agents, real clients ------------------------------------------ */

struct cx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    int port;
    char dir[512];
};

static void cx_start(struct cx *x, const char *services_yaml)
{
    struct etcd_cluster_opts co = {.members = 1};
    char yaml[2048];

    memset(x, 0, sizeof *x);
    x->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(x->cluster);
    snprintf(x->dir, sizeof x->dir, "%s/agent", etcd_cluster_dir(x->cluster));
    ck_assert_int_eq(mkdir(x->dir, 0700), 0);
    x->port = free_port();
    snprintf(yaml, sizeof yaml, "dns:\n  listen: [127.0.0.1:%d]\n%s", x->port,
             services_yaml ? services_yaml : "");
    ck_assert_int_eq(
        agentp_config(&x->agent, x->dir, etcd_member_url(x->cluster, 0), 5, 2000, yaml), 0);
    ck_assert_int_eq(agentp_start(&x->agent), 0);
}

static void cx_stop(struct cx *x)
{
    ck_assert_int_eq(agentp_free(&x->agent), 0);
    etcd_cluster_stop(x->cluster);
}

/* dig @agent with options; its stdout in out. */
static int dig(struct cx *x, char *out, size_t len, const char *a1, const char *a2, const char *a3,
               const char *a4)
{
    char port[16];
    const char *argv[] = {"dig", "@127.0.0.1", "-p", port, "+time=5", "+tries=1",
                          a1,    a2,           a3,   a4,   NULL};

    snprintf(port, sizeof port, "%d", x->port);
    return proc_run(out, len, 20000, argv);
}

static size_t lines(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void cx_put(struct cx *x, const char *svc, const char *addr, int weight, const char *group)
{
    char key[256], val[512], out[256];
    const char *args[] = {"put", key, val, NULL};

    snprintf(key, sizeof key, "/micro/%s/%s", svc, addr);
    snprintf(val, sizeof val, "{\"Name\":\"%s\",\"Address\":\"%s\",\"Weight\":%d,\"Group\":\"%s\"}",
             svc, addr, weight, group);
    ck_assert_int_eq(etcdctl(x->cluster, out, sizeof out, args), 0);
}

static void cx_del(struct cx *x, const char *svc, const char *addr)
{
    char key[256], out[256];
    const char *args[] = {"del", key, NULL};

    snprintf(key, sizeof key, "/micro/%s/%s", svc, addr);
    ck_assert_int_eq(etcdctl(x->cluster, out, sizeof out, args), 0);
}

/* dig for every record type, against a real agent and etcd. */
START_TEST(test_dig)
{
    struct cx x;
    static char out[65536];

    cx_start(&x, "services:\n  - name: web\n    address: 127.0.0.1:8080\n    weight: 70000\n"
                 "    group: A\n");
    cx_put(&x, "web", "10.0.0.2:8081", 2, "B");
    cx_put(&x, "web", "[2001:db8::7]:8082", 3, "A");
    cx_put(&x, "web", "backend.example.com:8083", 4, "B");

    /* The configured instance is in etcd once the agent registered it:
     * its first answer may wait for the list. */
    bool all = false;
    for (int i = 0; i < 50 && !all; i++) {
        ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "web.service.disc", "A", NULL), 0);
        all = strstr(out, "127.0.0.1") && strstr(out, "10.0.0.2");
        if (!all)
            usleep(100000);
    }
    ck_assert_msg(all, "dig A: %s", out);
    ck_assert_uint_eq(lines(out), 2);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "WEB.service.disc", "AAAA", NULL), 0);
    ck_assert_str_eq(out, "2001:db8::7\n");
    ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "_web._tcp.service.disc", "SRV", NULL), 0);
    ck_assert_uint_eq(lines(out), 4);
    ck_assert_msg(strstr(out, "0 65535 8080 7f000001.addr.disc."), "%s", out);
    ck_assert_msg(strstr(out, "0 4 8083 backend.example.com."), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "7f000001.addr.disc", "A", NULL), 0);
    ck_assert_str_eq(out, "127.0.0.1\n");
    ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "b.web.service.disc", "SRV", NULL), 0);
    ck_assert_uint_eq(lines(out), 2);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "web.service.disc", "TXT", NULL), 0);
    ck_assert_msg(strstr(out, "\"stale=false\"") && strstr(out, "\"instances=4\""), "%s", out);
    /* SRV with the targets' addresses in the additional section. */
    ck_assert_int_eq(dig(&x, out, sizeof out, "+noall", "+additional", "web.service.disc", "SRV"),
                     0);
    ck_assert_msg(strstr(out, "7f000001.addr.disc.") && strstr(out, "A\t127.0.0.1"), "%s", out);
    /* Negative answers. */
    ck_assert_int_eq(dig(&x, out, sizeof out, "nobody.service.disc", "A", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: NXDOMAIN") && strstr(out, "SOA"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "www.example.com", "A", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: REFUSED"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "disc", "AXFR", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "Transfer failed"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "web.service.disc", "TYPE65", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: NOERROR") && strstr(out, "ANSWER: 0"), "%s", out);
    /* Over TCP, and without EDNS. */
    ck_assert_int_eq(dig(&x, out, sizeof out, "+tcp", "+short", "web.service.disc", "SRV"), 0);
    ck_assert_uint_eq(lines(out), 4);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+noedns", "+short", "web.service.disc", "A"), 0);
    ck_assert_uint_eq(lines(out), 2);

    /* agentctl status shows the listener and the counts. */
    char ctl[64], sock[700];
    snprintf(ctl, sizeof ctl, "%s/agentctl", BUILD_DIR);
    snprintf(sock, sizeof sock, "%s", x.agent.sock);
    const char *argv[] = {ctl, "-s", sock, "status", NULL};
    ck_assert_int_eq(proc_run(out, sizeof out, 10000, argv), 0);
    ck_assert_msg(strstr(out, "dns            disc. on 127.0.0.1:") && strstr(out, "NXDOMAIN 1") &&
                      strstr(out, "REFUSED"),
                  "%s", out);
    cx_stop(&x);
}
END_TEST

/* ---- forwarding to a real recursor -------------------------------------- */

static bool file_has(const char *path, const char *text)
{
    static char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, text) != NULL;
}

/* dns.recursors with a real recursor: dnsmasq on a free port of 127.0.0.1
 * answers outside.example and a TXT set that does not fit 512 bytes, and
 * logs every query it gets. dig through the agent gets its answers (the
 * truncated one over TCP), names of the domain never reach it, and once
 * it is stopped the agent answers SERVFAIL. */
START_TEST(test_dig_forward)
{
    struct cx x;
    static char out[65536];
    char extra[256], dm_port[32], dm_logf[700], dm_log[600], txt[12][128], url[64];
    const char *dm_argv[32];
    int dport = free_port(), hport = free_port(), k = 0;
    bool ok = false;

    snprintf(extra, sizeof extra, "  recursors: [127.0.0.1:%d]\nhttp:\n  listen: [127.0.0.1:%d]\n",
             dport, hport);
    cx_start(&x, extra);
    snprintf(dm_log, sizeof dm_log, "%s/dnsmasq.log", x.dir);
    snprintf(dm_logf, sizeof dm_logf, "--log-facility=%s", dm_log);
    snprintf(dm_port, sizeof dm_port, "--port=%d", dport);
    const char *fixed[] = {
        "dnsmasq",    "--keep-in-foreground", "--no-resolv",
        "--no-hosts", "--bind-interfaces",    "--listen-address=127.0.0.1",
        dm_port,      "--user=root",          "--pid-file=",
        dm_logf,      "--log-queries",        "--address=/outside.example/10.9.8.7"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        dm_argv[k++] = fixed[i];
    for (int i = 0; i < 12; i++) {
        snprintf(txt[i], sizeof txt[i],
                 "--txt-record=big.example,record %d of a set that needs more than 512 bytes", i);
        dm_argv[k++] = txt[i];
    }
    dm_argv[k] = NULL;
    struct proc *dm = proc_spawn(dm_argv, NULL, NULL);
    ck_assert_ptr_nonnull(dm);

    /* Names of the domain first: answered by the agent alone. */
    ck_assert_int_eq(dig(&x, out, sizeof out, "nobody.service.disc", "A", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: NXDOMAIN"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "disc", "SOA", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: NOERROR"), "%s", out);

    /* dnsmasq may still be starting: SERVFAIL until it answers. */
    for (int i = 0; i < 50 && !ok; i++) {
        ck_assert_int_eq(dig(&x, out, sizeof out, "+short", "outside.example", "A", NULL), 0);
        ok = !strcmp(out, "10.9.8.7\n");
        if (!ok)
            usleep(100000);
    }
    ck_assert_msg(ok, "dig outside.example: %s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+tcp", "+short", "OUTSIDE.example", "A"), 0);
    ck_assert_str_eq(out, "10.9.8.7\n");
    /* Without EDNS the TXT set does not fit: TC is relayed, and dig's
     * retry over TCP is forwarded over TCP, whole. */
    ck_assert_int_eq(dig(&x, out, sizeof out, "+noedns", "+ignore", "big.example", "TXT"), 0);
    ck_assert_msg(strstr(out, " tc") && strstr(out, "status: NOERROR"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+noedns", "+short", "big.example", "TXT"), 0);
    ck_assert_msg(lines(out) == 12, "%s", out);

    /* The recursor saw the outside names, and never one of the domain. */
    ok = false;
    for (int i = 0; i < 50 && !ok; i++) {
        ok = file_has(dm_log, "query[TXT] big.example");
        if (!ok)
            usleep(100000);
    }
    ck_assert_msg(ok && file_has(dm_log, "query[A] outside.example"), "dnsmasq log lacks queries");
    ck_assert(!file_has(dm_log, "disc"));

    /* Status and /metrics count what went out. */
    char ctl[64], sock[700];
    snprintf(ctl, sizeof ctl, "%s/agentctl", BUILD_DIR);
    snprintf(sock, sizeof sock, "%s", x.agent.sock);
    const char *st_argv[] = {ctl, "-s", sock, "status", NULL};
    ck_assert_int_eq(proc_run(out, sizeof out, 10000, st_argv), 0);
    ck_assert_msg(strstr(out, "dns forwarded  ") && strstr(out, "to 127.0.0.1:"), "%s", out);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", hport);
    const char *curl[] = {"curl", "-sS", "--max-time", "10", url, NULL};
    ck_assert_int_eq(proc_run(out, sizeof out, 15000, curl), 0);
    ck_assert_msg(strstr(out, "discovery_agent_dns_forwarded_total ") &&
                      !strstr(out, "discovery_agent_dns_forwarded_total 0\n") &&
                      strstr(out, "discovery_agent_dns_forward_failures_total{reason=\"busy\"} 0"),
                  "%s", out);

    /* The recursor stopped: SERVFAIL, within dig's 5 s. */
    proc_free(dm);
    ck_assert_int_eq(dig(&x, out, sizeof out, "outside.example", "A", NULL, NULL), 0);
    ck_assert_msg(strstr(out, "status: SERVFAIL"), "%s", out);
    ck_assert_int_eq(dig(&x, out, sizeof out, "+tcp", "outside.example", "A", NULL), 0);
    ck_assert_msg(strstr(out, "status: SERVFAIL"), "%s", out);
    ck_assert_int_eq(proc_run(out, sizeof out, 15000, curl), 0);
    ck_assert_msg(strstr(out, "discovery_agent_dns_forward_failures_total{reason=\"unanswered\"} "),
                  "%s", out);
    ck_assert_msg(
        !strstr(out, "discovery_agent_dns_forward_failures_total{reason=\"unanswered\"} 0\n"), "%s",
        out);
    cx_stop(&x);
}
END_TEST

/* ---- HAProxy ------------------------------------------------------------ */

/* HAProxy's runtime API: one command, its whole answer. */
static void haproxy_cmd(const char *sock, const char *cmd, char *out, size_t len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    size_t have = 0;
    ssize_t n;

    out[0] = '\0';
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    ck_assert_int_eq(write(fd, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    while (have + 1 < len && (n = read(fd, out + have, len - have - 1)) > 0)
        have += (size_t)n;
    out[have] = '\0';
    close(fd);
}

/* "ADDR:PORT/WEIGHT ..." of the servers HAProxy has in backend be, from
 * "show servers state" (fields: srv_addr 4, srv_uweight 7, srv_port 18),
 * sorted; servers without an address are left out. */
static void haproxy_servers(const char *sock, char *buf, size_t len)
{
    static char out[16384];
    char rows[32][96];
    size_t n = 0, o = 0;

    haproxy_cmd(sock, "show servers state be\n", out, sizeof out);
    for (char *line = strtok(out, "\n"); line && n < 32; line = strtok(NULL, "\n")) {
        char *f[24];
        int k = 0;
        if (line[0] == '#' || !strchr(line, ' '))
            continue;
        for (char *t = strtok_r(line, " ", &line); t && k < 24; t = strtok_r(NULL, " ", &line))
            f[k++] = t;
        if (k < 19 || !strcmp(f[4], "-") || !strcmp(f[4], "0.0.0.0"))
            continue;
        snprintf(rows[n++], sizeof rows[0], "%s:%s/%s", f[4], f[18], f[7]);
    }
    qsort(rows, n, sizeof rows[0], (int (*)(const void *, const void *))strcmp);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? " " : "", rows[i]);
}

struct hx {
    struct cx *x;
    char sock[600];
    const char *want;
    char got[2048];
};

static bool haproxy_has(struct hx *h)
{
    for (int i = 0; i < 150; i++) {
        haproxy_servers(h->sock, h->got, sizeof h->got);
        if (!strcmp(h->got, h->want))
            return true;
        usleep(100000);
    }
    return false;
}

/* HAProxy with resolvers and server-template on the SRV name follows
 * instances as they are put in and deleted from etcd, with their weights
 * (HAProxy takes an SRV weight w as w / 256, at least 1). */
START_TEST(test_haproxy)
{
    struct cx x;
    struct hx h = {0};
    char cfg[600], log[600], text[2048];
    FILE *f;

    cx_start(&x, NULL);
    h.x = &x;
    snprintf(h.sock, sizeof h.sock, "%s/haproxy.sock", x.dir);
    snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", x.dir);
    snprintf(log, sizeof log, "%s/haproxy.log", x.dir);
    snprintf(text, sizeof text,
             "global\n  stats socket %s mode 600 level admin\n"
             "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n"
             "  timeout server 5s\n"
             "resolvers agent\n  nameserver dns1 127.0.0.1:%d\n  accepted_payload_size 1232\n"
             "  hold valid 100ms\n  hold obsolete 0s\n  timeout resolve 100ms\n"
             "  timeout retry 100ms\n"
             "backend be\n  balance roundrobin\n"
             "  server-template s 5 _api._tcp.service.disc resolvers agent init-addr none\n"
             "listen fe\n  bind 127.0.0.1:%d\n  server x 127.0.0.1:1\n",
             h.sock, x.port, free_port());
    f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    cx_put(&x, "api", "127.0.0.10:9001", 512, "");
    cx_put(&x, "api", "127.0.0.11:9002", 2560, "");
    const char *argv[] = {"haproxy", "-db", "-f", cfg, NULL};
    struct proc *hp = proc_spawn(argv, NULL, log);
    ck_assert_ptr_nonnull(hp);

    h.want = "127.0.0.10:9001/2 127.0.0.11:9002/10";
    ck_assert_msg(haproxy_has(&h), "haproxy has: %s", h.got);
    cx_put(&x, "api", "127.0.0.12:9003", 256, "");
    h.want = "127.0.0.10:9001/2 127.0.0.11:9002/10 127.0.0.12:9003/1";
    ck_assert_msg(haproxy_has(&h), "haproxy has: %s", h.got);
    cx_del(&x, "api", "127.0.0.10:9001");
    h.want = "127.0.0.11:9002/10 127.0.0.12:9003/1";
    ck_assert_msg(haproxy_has(&h), "haproxy has: %s", h.got);
    proc_free(hp);
    cx_stop(&x);
}
END_TEST

/* ---- the system resolver: dnsmasq, getent, curl ------------------------- */

/* dnsmasq forwards the disc domain to the agent; getent and curl run in a
 * private mount namespace whose /etc/resolv.conf names that dnsmasq, so
 * the machine's own resolver is never touched. glibc asks port 53 only:
 * dnsmasq listens there on an address of 127/8 chosen from our pid, so
 * that tests running at once do not meet. Needs root (port 53, unshare). */
START_TEST(test_system_resolver)
{
    struct cx x;
    char ip[32], dm_log[600], resolv[600], http_port[16], addr[64], server[64], url[128];
    char script[1024];
    static char out[8192];
    FILE *f;
    int hport;

    if (geteuid() != 0) {
        fprintf(stderr, "test_system_resolver: skipped: needs root for port 53 and unshare\n");
        return;
    }
    cx_start(&x, NULL);
    snprintf(ip, sizeof ip, "127.77.%d.%d", (getpid() >> 8) & 255, (getpid() & 254) | 1);
    snprintf(dm_log, sizeof dm_log, "%s/dnsmasq.log", x.dir);
    snprintf(resolv, sizeof resolv, "%s/resolv.conf", x.dir);
    snprintf(server, sizeof server, "--server=/disc/127.0.0.1#%d", x.port);
    char listen[64], logf[640];
    snprintf(listen, sizeof listen, "--listen-address=%s", ip);
    snprintf(logf, sizeof logf, "--log-facility=%s", dm_log);
    const char *dm_argv[] = {"dnsmasq",
                             "--keep-in-foreground",
                             "--no-resolv",
                             "--no-hosts",
                             "--bind-interfaces",
                             listen,
                             "--port=53",
                             server,
                             "--user=root",
                             "--pid-file=",
                             logf,
                             "--log-queries",
                             NULL};
    struct proc *dm = proc_spawn(dm_argv, NULL, NULL);
    ck_assert_ptr_nonnull(dm);
    f = fopen(resolv, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "nameserver %s\noptions timeout:2 attempts:2\n", ip);
    fclose(f);

    /* A real HTTP server, registered as "web". */
    hport = free_port();
    snprintf(http_port, sizeof http_port, "%d", hport);
    const char *http_argv[] = {"python3",   "-m",          "http.server", http_port, "--bind",
                               "127.0.0.1", "--directory", x.dir,         NULL};
    struct proc *http = proc_spawn(http_argv, NULL, NULL);
    ck_assert_ptr_nonnull(http);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", hport);
    cx_put(&x, "web", addr, 1, "");
    snprintf(url, sizeof url, "http://web.service.disc:%d/resolv.conf", hport);

    snprintf(script, sizeof script,
             "mount --bind %s /etc/resolv.conf && getent hosts web.service.disc && "
             "curl -sS --max-time 10 %s",
             resolv, url);
    const char *sh[] = {"unshare", "-m", "sh", "-c", script, NULL};
    int rc = -1;
    for (int i = 0; i < 50 && rc != 0; i++) {
        rc = proc_run(out, sizeof out, 30000, sh);
        if (rc != 0)
            usleep(200000);
    }
    ck_assert_msg(rc == 0, "getent/curl: exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "127.0.0.1       web.service.disc"), "%s", out);
    ck_assert_msg(strstr(out, "nameserver 127.77."), "curl did not fetch the file: %s", out);
    /* An unknown name fails the same way as any unknown host. */
    snprintf(script, sizeof script,
             "mount --bind %s /etc/resolv.conf && getent hosts nobody.service.disc", resolv);
    ck_assert_int_eq(proc_run(out, sizeof out, 30000, sh), 2);
    proc_free(http);
    proc_free(dm);
    cx_stop(&x);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("dns");
    TCase *eng = tcase_create("engine");
    TCase *srv = tcase_create("server");
    TCase *cli = tcase_create("clients");

    tcase_add_checked_fixture(eng, engine_setup, engine_teardown);
    tcase_add_test(eng, test_names);
    tcase_add_test(eng, test_a_weighted);
    tcase_add_test(eng, test_aaaa_srv_txt);
    tcase_add_test(eng, test_groups);
    tcase_add_test(eng, test_negative);
    tcase_add_test(eng, test_bad_packets);
    tcase_add_test(eng, test_sizes);
    tcase_add_test(eng, test_case_preserved);
    suite_add_tcase(s, eng);
    tcase_set_timeout(srv, 60);
    tcase_add_test(srv, test_server_udp_tcp);
    tcase_add_test(srv, test_server_stale);
    tcase_add_test(srv, test_server_bind_error);
    tcase_add_test(srv, test_server_forward);
    suite_add_tcase(s, srv);
    tcase_set_timeout(cli, 120);
    tcase_add_test(cli, test_dig);
    tcase_add_test(cli, test_dig_forward);
    tcase_add_test(cli, test_haproxy);
    tcase_add_test(cli, test_system_resolver);
    suite_add_tcase(s, cli);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
