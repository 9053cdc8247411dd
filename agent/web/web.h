/* The operators' HTTP listener: /metrics (Prometheus text format),
 * /healthz, /readyz, the status page at / and its data at /status.json.
 * docs/operations.md documents each endpoint and metric.
 *
 * It is built on libmicrohttpd run from the agent's libuv loop: MHD in
 * epoll mode with no thread of its own, its epoll descriptor watched by a
 * uv_poll_t and its timeouts kept by a uv_timer_t, so that every handler
 * runs on the loop thread and reads the agent's parts with no lock.
 * Read-only: GET and HEAD only (anything else gets 405 and Allow), and no
 * request changes anything.
 *
 * Ownership: every pointer in struct web_deps and struct web_options is
 * borrowed and must outlive the web; both structs are copied. */
#ifndef DA_WEB_H
#define DA_WEB_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "cache.h"
#include "dns.h"
#include "etcd.h"
#include "protocol.h"
#include "registry.h"
#include "server.h"
#include "session.h"
#include "xds.h"

typedef struct web web;

struct web_options {
    const char *const *listen; /* "127.0.0.1:8608", "[::1]:8608": IP literals */
    size_t n_listen;
    unsigned max_connections; /* at once, over every address */
    size_t max_request_bytes; /* request line and headers of one request */
    unsigned timeout_s;       /* a connection idle this long is closed */
};

/* The readiness /readyz reports: true when ready; why says what the agent
 * is waiting for, or how it serves (written into why, NUL-terminated). */
typedef bool (*web_ready_fn)(void *arg, char *why, size_t len);

struct web_deps {
    uv_loop_t *loop;
    cache *cache;
    registry *registry;
    session *session;
    etcd_client *etcd;
    xds *xds;
    proto *proto;    /* builds the status (proto_status_start) */
    server *server;  /* the socket, for its client count */
    dns_server *dns; /* NULL when DNS is off */
    web_ready_fn ready;
    void *ready_arg;
};

/* Binds every address of o and starts serving. Returns 0, or an error
 * with err naming the address and the fix (nothing is left open). */
int web_start(web **out, const struct web_options *o, const struct web_deps *d, char *err,
              size_t errlen);

/* Closes every connection and listener; the memory goes when the loop
 * runs once more. Accepts NULL; returns NULL. */
web *web_close(web *w);

/* The port the first address is bound to (the one asked, or the kernel's
 * choice for port 0); 0 when none. */
int web_port(const web *w);

#endif
