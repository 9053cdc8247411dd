/* Private to agent/dns/: the answer engine (dns_answer.c), the name
 * mapping (dns_names.c) and the server (dns_server.c) that feeds them.
 *
 * The engine knows nothing of sockets or of the cache: it turns one query
 * into one reply, looking services up through a callback, so that the unit
 * tests and the fuzzer drive it with services of their own. */
#ifndef DA_DNS_INTERNAL_H
#define DA_DNS_INTERNAL_H

#include <libknot/libknot.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "instance.h"
#include "policy.h"

/* Our EDNS buffer size, in replies and as the most we send over UDP: the
 * 2020 DNS flag day's value, which no path fragments. */
#define DNS_UDP_PAYLOAD 1232
/* A query longer than this gets FORMERR (a question and an OPT record
 * with a few options fit in far less). */
#define DNS_MAX_QUERY 4096
#define DNS_MAX_REPLY 65535
/* Datagrams read by one recvmmsg(2). */
#define DNS_UDP_BATCH 16
/* TCP (RFC 7766): connections at once; a connection with no complete
 * query for this long is closed (a slow or half-open client holds
 * nothing longer); queries of one connection waiting for a first list;
 * reply bytes queued on one connection, past which it is not read until
 * they drain. */
#define DNS_TCP_MAX_CONNS 256
#define DNS_TCP_IDLE_MS 10000
#define DNS_TCP_MAX_WAITING 32
#define DNS_TCP_MAX_QUEUED (256 * 1024)
/* Queries waiting for a first list, all connections and UDP together. */
#define DNS_MAX_WAITING 4096
/* Forwarded queries in flight (past it a query gets SERVFAIL), of which
 * over TCP (each holds a connection, and so a descriptor); how long a
 * query waits for one recursor before the next is asked: with at most
 * DNS_MAX_RECURSORS of them, the last answer or SERVFAIL comes within
 * 4.5 s, before stub resolvers give up (5 s). */
#define DNS_MAX_FORWARDS 1024
#define DNS_MAX_TCP_FORWARDS 64
#define DNS_FORWARD_MS 1500
/* One DNS label, and so one service name or group as DNS spells it. */
#define DNS_LABEL_MAX 63

/* A service as the engine sees it; every pointer is borrowed for the
 * call. */
struct dns_svc {
    bool stale;
    int64_t revision;
    uint64_t age_ms; /* since its list last changed */
    const struct instance *const *inst;
    size_t n;
    /* The traffic policy for inst (policy.h): NULL, or a plan without a
     * zone, answers as if every instance ranked alike. */
    const struct policy_plan *plan;
};

/* The lookup callback's results. */
enum { DNS_LOOKUP_OK, DNS_LOOKUP_WAIT, DNS_LOOKUP_FAIL };
typedef int (*dns_lookup_fn)(void *arg, const char *service, struct dns_svc *out);

/* What the engine answers for. */
struct dns_zone {
    knot_dname_storage_t domain; /* lower case, wire form */
    size_t domain_size;
    uint32_t ttl;
    size_t max_answers;
    uint32_t serial;
    bool forward; /* outside the domain: DNS_FORWARD, not REFUSED */
    dns_lookup_fn lookup;
    void *arg;
};

/* ---- names (dns_names.c) ------------------------------------------------ */

enum dns_name_kind {
    DNS_NAME_OUTSIDE, /* not under the domain */
    DNS_NAME_APEX,    /* the domain itself */
    DNS_NAME_EMPTY,   /* service.DOMAIN, addr.DOMAIN: exist, hold nothing */
    DNS_NAME_SERVICE, /* [GROUP.]NAME.service.DOMAIN */
    DNS_NAME_SRV,     /* _NAME._tcp.service.DOMAIN */
    DNS_NAME_ADDR,    /* HEX.addr.DOMAIN */
    DNS_NAME_NONE,    /* under the domain, but no such name */
};

struct dns_name {
    enum dns_name_kind kind;
    char service[DNS_LABEL_MAX + 1];
    char group[DNS_LABEL_MAX + 1];
    bool has_group;
    int family; /* DNS_NAME_ADDR: AF_INET or AF_INET6 */
    uint8_t ip[16];
    const char *reason; /* DNS_NAME_NONE: why, for status */
};

/* The domain "disc" (or "disc.") in lower-case wire form. 0 or DA_EINVAL
 * with the reason in err. */
int dns_domain_parse(const char *domain, knot_dname_storage_t out, size_t *size, char *err,
                     size_t errlen);

/* Maps a lower-case query name (wire form, no compression) to what it
 * names. Never fails: a name it cannot map is DNS_NAME_NONE with a reason. */
void dns_name_parse(const struct dns_zone *z, const knot_dname_t *qname, struct dns_name *out);

/* True when the label (len bytes) is how DNS spells a service name: 1..63
 * bytes of a-z, 0-9, '-' and '_' (docs/dns.md, "Names"). */
bool dns_label_is_service(const uint8_t *label, size_t len);

/* The name HEX.addr.DOMAIN of an address (4 or 16 bytes), in wire form.
 * Returns its size, or 0 if it does not fit. */
size_t dns_name_addr(const struct dns_zone *z, const uint8_t *ip, size_t iplen,
                     knot_dname_storage_t out);

/* An instance's address split for DNS: an IP (4 or 16 bytes in ip,
 * iplen set) or a host name (host, iplen 0), and the port. false when the
 * address is neither (another writer's value, say). */
struct dns_target {
    uint8_t ip[16];
    size_t iplen;
    char host[254];
    uint16_t port;
};
bool dns_target_parse(const char *address, struct dns_target *out);

/* ---- the engine (dns_answer.c) ------------------------------------------ */

enum dns_outcome {
    DNS_REPLY,   /* send the reply */
    DNS_DROP,    /* send nothing (not a query, or too short to answer) */
    DNS_WAIT,    /* the service has no list yet: ask again when it has */
    DNS_FORWARD, /* outside the domain, and there are recursors */
};

struct dns_result {
    enum dns_outcome outcome;
    uint16_t rcode; /* with the extended bits (BADVERS is 16) */
    bool truncated;
    uint16_t id;                     /* the query's */
    char service[DNS_LABEL_MAX + 1]; /* DNS_WAIT: the service */
    const char *reason;              /* NXDOMAIN: why, for status */
    const knot_dname_t *qname;       /* lower case; owned by the engine until
                                * its next call; NULL if not parsed */
};

typedef struct dns_engine dns_engine;

/* A query and a reply buffer, each with its libknot packet, reused for
 * every query. 0 or DA_ENOMEM. */
int dns_engine_new(dns_engine **out);
dns_engine *dns_engine_free(dns_engine *e); /* NULL-safe; returns NULL */

/* Answers the query (len bytes, borrowed). tcp: the reply may take up to
 * DNS_MAX_REPLY bytes, else what the query's EDNS allows (512 without)
 * with TC set when it does not fit. waited: the query already waited for
 * its service's first list, so a service still without one is SERVFAIL
 * rather than DNS_WAIT. rng: the state for the weighted order. On
 * DNS_REPLY, *reply (owned by e, valid until its next call) holds *rlen
 * bytes. */
void dns_answer(dns_engine *e, const struct dns_zone *z, const uint8_t *query, size_t len, bool tcp,
                bool waited, uint64_t *rng, const uint8_t **reply, size_t *rlen,
                struct dns_result *res);

/* The same header and question as the query, and its OPT when it had one,
 * with the rcode: the answer to a query the engine handed on (DNS_FORWARD)
 * when no recursor answers it. The same arguments and results as
 * dns_answer(). */
void dns_answer_rcode(dns_engine *e, const uint8_t *query, size_t len, bool tcp, uint16_t rcode,
                      const uint8_t **reply, size_t *rlen, struct dns_result *res);

/* A random 64-bit number (xorshift64*) from *state, which must not be 0. */
uint64_t dns_random(uint64_t *state);

/* ---- forwarding to the recursors (dns_forward.c) ------------------------ */

typedef struct dns_fwd dns_fwd;
struct uv_loop_s;

/* A forwarded query's end: the recursor's reply (len bytes, borrowed for
 * the call, under the client's ID again), or NULL when none answered in
 * time. Called once for each query dns_fwd_query() took. */
typedef void (*dns_fwd_cb)(void *arg, const uint8_t *reply, size_t len);

/* The forwarder for n recursors (copied), each asked for try_ms (0:
 * DNS_FORWARD_MS), with at most max queries in flight (0:
 * DNS_MAX_FORWARDS). seed: a non-zero number for the IDs of forwarded
 * queries. Opens one UDP socket per address family the recursors use.
 * 0, or a negative code with the reason in err. */
int dns_fwd_new(dns_fwd **out, struct uv_loop_s *loop, const struct sockaddr_storage *recursors,
                size_t n, uint64_t try_ms, size_t max, uint64_t seed, char *err, size_t errlen);

/* True when a query over this transport would be past the caps. */
bool dns_fwd_full(const dns_fwd *f, bool tcp);

/* Sends the query (len bytes, copied; the engine has parsed it) to the
 * first recursor over UDP or TCP, as it came from the client. 0, and cb
 * gets the end later; or a negative code when it could not be sent at all
 * (past the caps: DA_ENOMEM too), and cb is never called. */
int dns_fwd_query(dns_fwd *f, const uint8_t *query, size_t len, bool tcp, dns_fwd_cb cb, void *arg);

/* Queries in flight. */
size_t dns_fwd_in_flight(const dns_fwd *f);

/* Drops every query in flight without calling back, and closes the
 * sockets; the memory goes as the loop runs. Accepts NULL; returns NULL. */
dns_fwd *dns_fwd_close(dns_fwd *f);

#endif
