/* dns: the agent as a DNS server on the host (UDP and TCP), answering from
 * the same watch cache as the socket and xDS (docs/dns.md).
 *
 * Names, with the domain "disc":
 *   NAME.service.disc          A/AAAA of the instances (weighted random
 *                              order, at most max_answers), SRV (one per
 *                              instance), TXT (the list's freshness)
 *   GROUP.NAME.service.disc    the same for one group's instances
 *   _NAME._tcp.service.disc    SRV (RFC 2782)
 *   HEX.addr.disc              A/AAAA of an IP literal (SRV targets)
 * An unknown service is NXDOMAIN with the SOA; a name outside the domain
 * is REFUSED, or forwarded to the recursors when there are some.
 *
 * Asking about a service makes the agent watch it (cache_get), as a socket
 * resolve does; a query for a service whose first list has not come waits
 * for it up to DNS_WAIT_MS, then gets SERVFAIL. Everything runs on the
 * loop. */
#ifndef DA_DNS_H
#define DA_DNS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cache.h"
#include "dns_rules.h"

typedef struct dns_server dns_server;

/* How long a query for a service not yet cached waits for etcd: well
 * under the 5 s after which stub resolvers (glibc, dig) give up. */
#define DNS_WAIT_MS 2000

struct dns_options {
    const char *const *listen; /* "host:port" each, UDP and TCP */
    size_t n_listen;
    const char *domain;           /* "disc"; NULL: the default */
    uint32_t ttl;                 /* seconds, answers and negative answers */
    size_t max_answers;           /* A/AAAA records per answer; 0: the default */
    const char *const *recursors; /* dns.recursors: "IP:port" or "IP" (port
                                   * 53), at most DNS_MAX_RECURSORS; none:
                                   * names outside the domain are REFUSED */
    size_t n_recursors;
    uint64_t wait_ms;     /* 0: DNS_WAIT_MS */
    uint64_t forward_ms;  /* each recursor's time; 0: DNS_FORWARD_MS */
    size_t max_forwards;  /* in flight; 0: DNS_MAX_FORWARDS */
    uint64_t tcp_idle_ms; /* 0: DNS_TCP_IDLE_MS (tests shorten it) */
    size_t tcp_max_conns; /* 0: DNS_TCP_MAX_CONNS */
};

/* Creates the server's state; nothing listens yet. Strings are copied; c
 * is borrowed and must outlive d. 0, DA_EINVAL with the reason in err (a
 * bad domain, listen or recursor address, a recursor that is one of the
 * listen addresses), or DA_ENOMEM. */
int dns_new(dns_server **out, uv_loop_t *loop, cache *c, const struct dns_options *o, char *err,
            size_t errlen);

/* Binds every listen address, UDP and TCP, and opens the forwarder's
 * sockets when there are recursors. 0, or a negative code with the
 * address that failed and the fix in err, nothing then listening. */
int dns_start(dns_server *d, char *err, size_t errlen);

/* Closes the listeners, connections and waiting queries at once (the cache
 * may be freed right after); the memory goes as the loop runs. Accepts
 * NULL; returns NULL. */
dns_server *dns_close(dns_server *d);

/* {"enabled","listen":[..],"domain","queries","udp","tcp","truncated",
 * "dropped","waiting","tcp_connections","tcp_refused","recursors":[..],
 * "forwarded","forward_failed","forward_busy","forwarding",
 * "rcodes":{"NOERROR":N,..},"last_nxdomain":{"name","reason"}} for the
 * status reply (new reference). "recursors" only when there are some;
 * "forwarded" counts queries sent to a recursor, "forward_failed" those
 * none answered, "forward_busy" those past the caps (both SERVFAIL). */
json_t *dns_status(const dns_server *d);

#endif
