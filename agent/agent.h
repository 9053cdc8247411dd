/* The daemon as a whole: one of each part, wired together on one loop.
 * main.c parses the command line and hands over; agent.c starts, reloads and
 * stops the parts in order; protocol/ answers the socket (protocol.h). */
#ifndef DA_AGENT_H
#define DA_AGENT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cache.h"
#include "check.h"
#include "config.h"
#include "dns.h"
#include "etcd.h"
#include "http.h"
#include "protocol.h"
#include "registry.h"
#include "server.h"
#include "session.h"
#include "web.h"
#include "xds.h"

/* The file VERSION, passed by the Makefile as DA_VERSION. */
#define AGENT_VERSION DA_VERSION

struct agent {
    uv_loop_t *loop;
    struct config *cfg;
    http_client *http;
    etcd_client *etcd;
    session *session;
    cache *cache;
    registry *registry;
    server *server;
    xds *xds;        /* the xDS server for gRPC clients (docs/xds.md) */
    dns_server *dns; /* NULL when dns.enabled is false (docs/dns.md) */
    proto *proto;    /* answers the socket */
    web *web;        /* /metrics, /healthz, /readyz, the status page; NULL when off */
    struct check_ctx *checks;

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t ready_timer; /* READY=1 even if etcd does not answer */
    uv_timer_t watchdog;
    uv_timer_t stop_timer; /* bounds the graceful stop */
    bool ready;
    bool stopping;
    uint64_t started; /* uv_now at start */
    uint64_t reloads;
    int exit_code;
};

/* Starts every part from cfg (stolen). Returns 0, or an error with a
 * reason in err; on error the caller runs the loop once more and exits. */
int agent_start(struct agent *a, uv_loop_t *loop, struct config *cfg, char *err, size_t errlen);

/* Deregisters, revokes the lease, closes everything; the loop then ends. */
void agent_stop(struct agent *a);

/* Re-reads the configuration; on error keeps the running one. Returns 0 or
 * an error (the reason is logged). */
int agent_reload(struct agent *a);

#endif
