/* The one home of the rules for what a registration may hold: service
 * names, groups, weights, host:port addresses and metadata. The config
 * loader, the socket protocol, the registry, the health checks, the xDS
 * resources and libdiscovery all call these functions, so that a name or an
 * address one of them accepts can never be refused by another later (an
 * etcd key the cache cannot watch, say, or one endpoint listed twice under
 * two spellings).
 *
 * Each rule is the union of what every part of the runtime needs:
 *   name     1..253 bytes of UTF-8, no '/', space, control byte or DEL, not
 *            "." or "..": one segment of an etcd key <prefix>/<name>/, a
 *            watch range of its own, and a JSON string.
 *   address  host:port. The host is an IPv4 address (digits and dots alone
 *            must be one), an IPv6 address in brackets, or a host name of
 *            letters, digits, '-' and '_' in dot-separated labels of 1..63
 *            bytes that neither start nor end with '-', 253 bytes at most.
 *            The port is 1..65535 in decimal without leading zeros. So one
 *            endpoint has one spelling, and every address is also a valid
 *            key segment.
 *   group    0..253 bytes of UTF-8, no control byte or DEL.
 *   weight   an integer in int32 range (0 or less counts as 1).
 *   metadata keys of 1..253 bytes and values of UTF-8 without NUL, together
 *            at most VALIDATE_META_MAX bytes, so that every value fits an
 *            etcd request.
 *
 * Pure functions: no allocation, no logging, no libuv. Each fills err (when
 * errlen > 0) with the reason, a phrase without the value, for the caller
 * to put in its own message (with file:line:column, or an error reply).
 * Compiled into the agent and into libdiscovery (see the Makefile), hidden
 * from the shared library's exports. */
#ifndef DA_VALIDATE_H
#define DA_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VALIDATE_HIDDEN __attribute__((visibility("hidden")))

#define VALIDATE_NAME_MAX 253
#define VALIDATE_GROUP_MAX 253
#define VALIDATE_HOST_MAX 253
#define VALIDATE_META_KEY_MAX 253
#define VALIDATE_META_MAX 32768
/* The longest address: a 253-byte host name, ':', five digits, NUL. */
#define VALIDATE_ADDRESS_MAX (VALIDATE_HOST_MAX + 7)
/* The longest etcd.prefix: with a name and an address it stays well inside
 * the cache's and the registry's key buffers (1 KiB). */
#define VALIDATE_PREFIX_MAX 256

/* validate_hostport()'s results. */
enum { VALIDATE_OK = 0, VALIDATE_BAD = -1, VALIDATE_PORT_RANGE = -2 };

/* validate_hostport()'s flags. */
#define VALIDATE_PORT_OPTIONAL 0x1 /* "host" alone is fine (port 0) */
#define VALIDATE_LISTEN                                                                            \
    0x2 /* an address to bind: an empty host
                                    * (":50051") and port 0 are fine */

struct validate_hostport {
    char host[VALIDATE_HOST_MAX + 1]; /* without brackets; "" for none */
    size_t host_len;                  /* as written, brackets included */
    uint16_t port;                    /* 0 when there is none */
    size_t port_at;                   /* offset of the port's digits, or len */
    bool ipv6;                        /* the host was written in brackets */
};

/* Parses and checks len bytes at s as host:port by the address rule above
 * (with flags relaxing it). Returns VALIDATE_OK with out filled (out may be
 * NULL), VALIDATE_PORT_RANGE for a well-formed port outside 1..65535 (out's
 * port_at still says where it is), or VALIDATE_BAD. This is the only
 * host:port parser of the agent and the library. */
VALIDATE_HIDDEN int validate_hostport(const char *s, size_t len, unsigned flags,
                                      struct validate_hostport *out, char *err, size_t errlen);

/* A registration's address: validate_hostport() without flags, on a
 * NUL-terminated string that must not hold a NUL of its own. */
VALIDATE_HIDDEN bool validate_address(const char *s, char *err, size_t errlen);

VALIDATE_HIDDEN bool validate_name(const char *s, char *err, size_t errlen);
VALIDATE_HIDDEN bool validate_group(const char *s, char *err, size_t errlen);
VALIDATE_HIDDEN bool validate_weight(long long w, char *err, size_t errlen);

/* One metadata entry (len bytes of value, which may not hold a NUL). */
VALIDATE_HIDDEN bool validate_meta_key(const char *k, char *err, size_t errlen);
VALIDATE_HIDDEN bool validate_meta_value(const char *v, size_t len, char *err, size_t errlen);
/* The whole metadata: total is the sum of every key's and value's bytes. */
VALIDATE_HIDDEN bool validate_meta_size(size_t total, char *err, size_t errlen);

/* For messages that quote a refused value: s itself when it is at most
 * VALIDATE_EXCERPT bytes, else its start, cut between two UTF-8 characters,
 * and "..." in buf (of at least VALIDATE_EXCERPT + 4 bytes), so that the
 * message stays short and stays UTF-8 (a JSON string). s is borrowed. */
#define VALIDATE_EXCERPT 64
VALIDATE_HIDDEN const char *validate_excerpt(const char *s, char *buf, size_t len);

/* len bytes at s are UTF-8 (no overlong forms, surrogates or code points
 * above U+10FFFF). */
VALIDATE_HIDDEN bool validate_utf8(const char *s, size_t len);

#endif
