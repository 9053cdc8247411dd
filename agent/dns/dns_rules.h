/* The DNS server's defaults and the checks its configuration shares with
 * the server itself, so that the config loader refuses (with file:line:
 * column) exactly what dns_new() would refuse. No libuv, no libknot: the
 * config loader includes it. */
#ifndef DA_DNS_RULES_H
#define DA_DNS_RULES_H

#include <stdbool.h>
#include <stddef.h>

/* dns.listen: loopback only by default; 8600 is Consul's DNS port, which
 * operators and resolver setups already know. */
#define DNS_DEFAULT_LISTEN "127.0.0.1:8600"
#define DNS_DEFAULT_DOMAIN "disc"
/* dns.ttl: 0. Clients are on the same host, an answer costs the agent
 * microseconds, and any TTL is a window in which a resolver's cache
 * hands out an instance that is already gone. */
#define DNS_DEFAULT_TTL 0
#define DNS_MAX_TTL 86400
/* dns.max_answers: 16 AAAA records (28 bytes each with a compressed
 * owner) fit a 512-byte UDP reply without EDNS, so no client needs TCP
 * for an address answer; clients use the first address anyway. */
#define DNS_DEFAULT_MAX_ANSWERS 16
#define DNS_MAX_ANSWERS_LIMIT 1000
#define DNS_MAX_LISTEN 16

/* A domain the server can answer for ("disc", "consul.local"): a DNS name
 * that is not the root and leaves room for service names under it. */
bool dns_domain_valid(const char *domain, char *err, size_t errlen);

#endif
