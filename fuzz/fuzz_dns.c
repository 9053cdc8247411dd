/* Fuzz target: the DNS answer engine (agent/dns/dns_answer.c) on arbitrary
 * bytes as one query, against a few services of its own (IPv4, IPv6, a
 * host name, huge weights, many instances, one whose list is not there
 * yet). Byte 0 picks the transport and the engine's options; the rest is
 * the query. Checked besides memory errors, leaks and hangs:
 *   - nothing is answered only when the packet is shorter than a header
 *     or is a response;
 *   - every reply parses with libknot, is a response with the query's ID,
 *     fits the transport (UDP: DNS_UDP_PAYLOAD) and has a known rcode;
 *   - a query that already waited never waits again. */
#include <stdint.h>
#include <string.h>

#include "dns.h"
#include "dns_internal.h"
#include "fuzz.h"

static struct instance insts[64];
static const struct instance *view[64];
static dns_engine *engine;
static struct dns_zone zone;

static int lookup(void *arg, const char *name, struct dns_svc *out)
{
    (void)arg;
    memset(out, 0, sizeof *out);
    out->revision = 42;
    if (!strcmp(name, "pending"))
        return DNS_LOOKUP_WAIT;
    if (!strcmp(name, "broken"))
        return DNS_LOOKUP_FAIL;
    if (!strcmp(name, "web")) {
        out->inst = view;
        out->n = 64;
    } else if (!strcmp(name, "one")) {
        out->inst = view + 60;
        out->n = 4;
    }
    return DNS_LOOKUP_OK;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char addr[64][64];
    char err[128];

    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    for (int i = 0; i < 64; i++) {
        if (i % 4 == 0)
            snprintf(addr[i], sizeof addr[i], "[2001:db8::%x]:%d", i, 1000 + i);
        else if (i % 4 == 1)
            snprintf(addr[i], sizeof addr[i], "host%d.example.com:%d", i, 1000 + i);
        else
            snprintf(addr[i], sizeof addr[i], "10.0.%d.%d:%d", i / 8, i % 3, 1000 + i);
        insts[i].name = "web";
        insts[i].address = addr[i];
        insts[i].weight = i == 7 ? INT32_MAX : (int32_t)(i - 3);
        insts[i].group = i % 2 ? "A" : "b";
        view[i] = &insts[i];
    }
    FUZZ_CHECK(dns_domain_parse("disc", zone.domain, &zone.domain_size, err, sizeof err) == 0);
    zone.lookup = lookup;
    zone.serial = 1;
    FUZZ_CHECK(dns_engine_new(&engine) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint64_t rng = 1;
    struct dns_result res;
    const uint8_t *reply;
    size_t rlen;
    bool tcp, waited;

    if (size < 1)
        return 0;
    tcp = data[0] & 1;
    waited = data[0] & 2;
    zone.forward = data[0] & 4;
    zone.max_answers = data[0] & 8 ? 1 : DNS_DEFAULT_MAX_ANSWERS;
    zone.ttl = data[0] >> 4;
    data++;
    size--;

    dns_answer(engine, &zone, data, size, tcp, waited, &rng, &reply, &rlen, &res);
    switch (res.outcome) {
    case DNS_DROP:
        FUZZ_CHECK(size < KNOT_WIRE_HEADER_SIZE || knot_wire_get_qr(data));
        return 0;
    case DNS_WAIT:
        FUZZ_CHECK(!waited);
        FUZZ_CHECK(!strcmp(res.service, "pending"));
        return 0;
    case DNS_FORWARD:
        /* The reply the server sends when no recursor answers must pass
         * the same checks as any other. */
        FUZZ_CHECK(zone.forward);
        dns_answer_rcode(engine, data, size, tcp, KNOT_RCODE_SERVFAIL, &reply, &rlen, &res);
        FUZZ_CHECK(res.outcome == DNS_REPLY && res.rcode == KNOT_RCODE_SERVFAIL);
        break;
    case DNS_REPLY:
        break;
    }
    FUZZ_CHECK(size >= KNOT_WIRE_HEADER_SIZE && !knot_wire_get_qr(data));
    FUZZ_CHECK(reply && rlen >= KNOT_WIRE_HEADER_SIZE);
    FUZZ_CHECK(rlen <= (tcp ? DNS_MAX_REPLY : DNS_UDP_PAYLOAD));
    FUZZ_CHECK(knot_wire_get_id(reply) == knot_wire_get_id(data));
    FUZZ_CHECK(knot_wire_get_qr(reply));
    FUZZ_CHECK(res.rcode <= KNOT_RCODE_REFUSED || res.rcode == KNOT_RCODE_BADVERS);

    /* The reply must be a message libknot reads back whole. */
    knot_pkt_t *p = knot_pkt_new(NULL, (uint16_t)rlen, NULL);
    FUZZ_CHECK(p != NULL);
    memcpy(p->wire, reply, rlen);
    p->size = rlen;
    FUZZ_CHECK(knot_pkt_parse(p, 0) == KNOT_EOK);
    FUZZ_CHECK(knot_pkt_ext_rcode(p) == res.rcode);
    knot_pkt_free(p);
    return 0;
}
