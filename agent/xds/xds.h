/* xds: the agent as an xDS management server (ADS, state of the world), so
 * that unmodified gRPC clients resolve xds:///NAME through it.
 *
 * A client's stream subscribes to names: listeners and route
 * configurations are named after a service, clusters and assignments
 * "NAME" or "NAME/GROUP". Every service named makes the agent watch it in
 * its cache (cache_get + cache_subscribe); each change of a watched list
 * is turned into resources (xds_resources.h) and pushed on every stream
 * that subscribed to it, one response per type that changed, in the order
 * listeners, routes, clusters, endpoints, and at most one response in
 * flight per stream (so a burst of changes coalesces into the latest
 * state). Requests are matched to responses by nonce: an ACK records the
 * version the client accepted, a NACK is logged and counted, a stale nonce
 * is ignored. docs/xds.md has the whole story.
 *
 * The gRPC side (xds_grpc.h) listens itself and runs C-core only while
 * clients use it (from the first connection until idle_ms after the last
 * stream); its completion queue thread only hands completions to the
 * loop, and all state here lives on the loop thread, like the cache it
 * reads.
 *
 * Resources can also be asked for through the socket ("xds" op, xds_describe()), which
 * works whether or not the server is enabled. */
#ifndef DA_XDS_H
#define DA_XDS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "cache.h"

typedef struct xds xds;
typedef struct xds_query xds_query;

struct xds_options {
    bool enabled;                        /* serve on path (and tcp) at xds_start() */
    const char *path;                    /* unix socket */
    unsigned mode;                       /* its permissions */
    const char *tcp;                     /* loopback "host:port", or NULL */
    const char *group_header;            /* "x-group" */
    bool send_host_names;                /* TEST ONLY: do not resolve host names */
    const struct policy_config *traffic; /* per-service outlier detection;
                                          * borrowed; NULL: none */
    uint64_t hold_ms;                    /* how long a listener or cluster response
                                * waits for a service's first list; 0: 5 s */
    uint64_t idle_ms;                    /* gRPC stops after this long without an
                                * ADS stream; 0: 60 s (xds_grpc.h) */
    int listen_fd;                       /* > 0: path's socket, passed by systemd; stolen
                                * by xds_start (xds_grpc.h); 0: make it */
};

/* Creates the server's state (nothing listens yet). Strings are copied;
 * c is borrowed and must outlive x. 0 or DA_ENOMEM. */
int xds_new(xds **out, uv_loop_t *loop, cache *c, const struct xds_options *o);

/* Listens and writes the bootstrap file (a failure to write it is only
 * logged). Does nothing when not enabled. 0, or a negative code with the
 * reason in err, nothing then listening. */
int xds_start(xds *x, char *err, size_t errlen);

/* Closes every stream and every subscription at once (the cache may be
 * freed right after); the rest goes as the loop runs. Accepts NULL;
 * returns NULL. */
xds *xds_close(xds *x);

/* {"enabled","path","tcp","bootstrap","grpc_running","grpc_starts",
 * "streams","nacks","clients":[...]} for the status reply (new
 * reference). */
json_t *xds_status(xds *x);

/* The bootstrap object for gRPC clients (new reference), or NULL when the
 * server is not enabled; and the file it is written to. */
json_t *xds_bootstrap(const xds *x);
const char *xds_bootstrap_path(const xds *x);

/* The resources the agent sends for service name, as JSON (see
 * xds_resource_json()), with the instances left out and why. If they are
 * known now, *now gets them (new reference) and no query is made;
 * otherwise *q is a query whose cb runs once, from the loop, when they
 * are (the query is then over: do not cancel it). Returns 0, DA_EINVAL for
 * a bad service name, or DA_ENOMEM; cb is never called from this call. */
typedef void (*xds_query_cb)(json_t *resources, void *arg);
int xds_describe(xds *x, const char *name, json_t **now, xds_query_cb cb, void *arg, xds_query **q);
/* Drops a query whose cb has not run. Accepts NULL. */
void xds_query_cancel(xds_query *q);

#endif
