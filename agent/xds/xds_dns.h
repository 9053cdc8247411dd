/* xds_dns: host names of registered addresses, resolved to IP literals
 * for the xDS server (gRPC clients NACK a host name in an endpoint).
 *
 * Lookups run on libuv's thread pool (uv_getaddrinfo), never on the loop.
 * Answers are kept: a known name answers at once, and is looked up again
 * in the background once its answer is older than XDNS_REFRESH_MS (or
 * XDNS_RETRY_MS for a name that did not resolve). The callback runs on the
 * loop whenever a name gets its first answer or a different one, so that
 * the caller rebuilds what used it.
 *
 * One address per name: the first IPv4 address, or else the first IPv6
 * one, so that an instance counts once however many addresses its name
 * has (its weight stays its weight), and a server listening on 0.0.0.0 is
 * reached however the resolver orders the answers. */
#ifndef DA_XDS_DNS_H
#define DA_XDS_DNS_H

#include <uv.h>

#define XDNS_REFRESH_MS 30000
#define XDNS_RETRY_MS 5000
/* Names kept at most; past it, names not used for 10 minutes go first. */
#define XDNS_MAX_NAMES 4096

typedef struct xdns xdns;
typedef void (*xdns_cb)(void *arg);

/* 0 or DA_ENOMEM. cb and arg are borrowed for the life of d. */
int xdns_new(xdns **out, uv_loop_t *loop, xdns_cb cb, void *arg);

/* 1: ip (room for 46 bytes or more) holds the address; 0: the name is
 * being looked up and cb follows; -1: it does not resolve (or too many
 * names are kept). Never calls cb itself. */
int xdns_lookup(xdns *d, const char *host, char *ip);

/* Stops: lookups in flight are cancelled, cb is not called again. The
 * memory goes when the last of them returns (run the loop). Accepts NULL;
 * returns NULL. */
xdns *xdns_close(xdns *d);

#endif
