/* The socket protocol: one JSON request per line, one reply per request
 * (echoing its "id"), and update lines for watches. proto/agent-protocol.md
 * is its specification; keep the two in step.
 *
 * It answers for the socket server (server.h) through the three callbacks
 * below, whose arg is the proto. It reaches the rest of the agent only
 * through struct proto_deps: the parts it reads or drives and the few
 * configuration values it needs, not the whole agent, so that each part
 * it touches is named here.
 *
 * Ownership: every pointer in struct proto_deps is borrowed and must
 * outlive the proto; the struct itself is copied by proto_new(). */
#ifndef DA_PROTOCOL_H
#define DA_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "cache.h"
#include "dns.h"
#include "etcd.h"
#include "registry.h"
#include "server.h"
#include "session.h"
#include "xds.h"

typedef struct proto proto;

/* Who may change registrations (socket.register_users / register_groups):
 * everyone unless limited; then a peer whose uid is listed, or whose
 * primary or supplementary groups include a listed gid. */
struct proto_access {
    bool limited;
    const unsigned *uids;
    size_t n_uids;
    const unsigned *gids;
    size_t n_gids;
};

/* What only the status op shows. */
struct proto_status_deps {
    session *session;
    const char *config_path;
    const char *const *endpoints; /* etcd.endpoints as configured */
    size_t n_endpoints;
    uint64_t started;                    /* uv_now() when the agent started, for uptime */
    dns_server *dns;                     /* the DNS server's counters; NULL when it is off */
    const struct policy_config *traffic; /* locality: and traffic: */
};

struct proto_deps {
    uv_loop_t *loop;
    cache *cache;        /* lists for resolve and watch */
    registry *registry;  /* register, deregister, checks, drain, maintenance */
    etcd_client *etcd;   /* the services op, and the last error in replies */
    xds *xds;            /* the xds and xds_bootstrap ops */
    const char *prefix;  /* etcd.prefix, for the services op */
    uint64_t timeout_ms; /* how long a request waits for etcd (etcd.timeout) */
    bool checks_exec;    /* a register may carry an exec check (checks.exec) */
    struct proto_access access;
    struct proto_status_deps status;
};

/* Makes a proto from d (copied; its pointers borrowed). Returns 0, or
 * DA_ENOMEM. */
int proto_new(proto **out, const struct proto_deps *d);

/* Call after server_close() of every server whose arg is p: the
 * connections' on_close must have run. Accepts NULL; returns NULL. */
proto *proto_free(proto *p);

/* A reload may change checks.exec. */
void proto_set_checks_exec(proto *p, bool on);

/* The socket's callbacks (server.h); arg is the proto. */
void proto_on_line(server *s, server_conn *c, char *line, size_t len, void *arg);
void proto_on_close(server *s, server_conn *c, void *arg);
void proto_on_eof(server *s, server_conn *c, void *arg);

/* The status op's object (what `agentctl status --json` prints, without
 * "id" and "ok"), for other readers of it: the HTTP status page. s is the
 * socket server, for its client count (NULL: none). Like the op, it asks
 * etcd for its member status first, unless etcd is known to be away.
 * Returns 0 and either stores the status in *now (new) at once, or stores
 * a query in *out and later calls cb with the status (new; NULL when out
 * of memory); or returns DA_ENOMEM and calls nothing. */
typedef struct proto_status_query proto_status_query;
typedef void (*proto_status_cb)(json_t *status, void *arg);
int proto_status_start(proto *p, server *s, json_t **now, proto_status_cb cb, void *arg,
                       proto_status_query **out);
/* Stops a query before its callback: cb is not called. NULL-safe. */
void proto_status_cancel(proto_status_query *q);

/* The server's fixed replies (server_options): to an over-long line, and
 * to a connection refused for want of descriptors. */
extern const char proto_too_long_reply[];
extern const char proto_busy_reply[];

#endif
