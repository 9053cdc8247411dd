/* The DNS server's defaults and the checks its configuration shares with
 * the server itself, so that the config loader refuses (with file:line:
 * column) exactly what dns_new() would refuse. No libuv, no libknot: the
 * config loader includes it. */
#ifndef DA_DNS_RULES_H
#define DA_DNS_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

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
/* dns.recursors: at most 3, as resolv.conf(5) takes (glibc's MAXNS). A
 * query tries them one after the other, DNS_FORWARD_MS each, so more
 * would only make a failing query outlast the client's own timeout (5 s
 * for glibc and dig). Port 53 unless one is written. */
#define DNS_MAX_RECURSORS 3
#define DNS_RECURSOR_PORT 53

/* A domain the server can answer for ("disc", "consul.local"): a DNS name
 * that is not the root and leaves room for service names under it. */
bool dns_domain_valid(const char *domain, char *err, size_t errlen);

/* An IP address with a port ("127.0.0.1:8600", "[::1]:8600") into *sa;
 * with default_port other than 0, also one without ("10.0.0.2", "[::1]"),
 * which then gets that port. Host names are refused: the DNS server must
 * not need DNS to start. 0, or DA_EINVAL with the reason (a phrase
 * without the value) in why. */
int dns_addr_parse(const char *s, uint16_t default_port, struct sockaddr_storage *sa, char *why,
                   size_t whylen);

/* True when a query forwarded to recursor would come back to the agent's
 * own listener at listen, and so go round for ever: on the listener's
 * port, the same address; a loopback (or 0.0.0.0, ::) recursor and a
 * wildcard listener; or a 0.0.0.0 (::) recursor, which is this host, and
 * a loopback listener. */
bool dns_recursor_loops(const struct sockaddr_storage *recursor,
                        const struct sockaddr_storage *listen);

#endif
