/* libdiscovery's gRPC C-core shim.
 *
 * gRPC C-core (1.51) has no public API for a custom resolver, and a
 * channel's addresses are fixed when it is created. So the shim resolves
 * through the agent and keeps, per service and group, a real grpc_channel
 * whose target is the current address list ("ipv4:a:p,a:p,b:p" with
 * round_robin; weights by repetition). When the list changes it builds a new
 * channel, lets it connect, swaps it in for new calls, and retires the old
 * one once its connections have settled: calls in flight finish on the
 * channel they started on.
 *
 * A program writes the Go design's target, registry:///NAME or
 * registry:///NAME?group=G, creates calls with disc_channel_create_call(),
 * and uses plain C-core for everything else about the call.
 *
 * Thread-safety: every function here may be called from any thread; the
 * shim runs two threads of its own per channel (one follows the agent, one
 * polls C-core so that connections progress). */
#ifndef DISCOVERY_GRPC_H
#define DISCOVERY_GRPC_H

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct disc_channel disc_channel;

struct disc_channel_options {
    const char *socket_path; /* NULL: $DISCOVERY_SOCKET, then the default */
    /* Extra channel arguments (copied); they are the same on every channel
     * the shim builds, so that unchanged backends keep their connections
     * across swaps. Must not set grpc.service_config or grpc.lb_policy_name. */
    const grpc_channel_args *args;
    int max_addresses;      /* cap on the repeated address list; default 256 */
    int settle_ms;          /* a change is built at once, but changes within this long
                             * of the last build wait and leave together; default 10 */
    int connect_timeout_ms; /* a new channel not READY by then is swapped in anyway; default 2000 */
    int retire_ms;          /* a replaced channel lives this long at least; default 10000 */
    int resolve_refresh_ms; /* host names in the list are resolved again this often; default 30000 */
    int first_list_timeout_ms; /* create_call waits this long for the first list; default 5000 */
    /* After the agent went away and came back, an empty list is applied
     * only if it is still empty after this long: the servers' registrations
     * left with the old agent and come back as they reconnect; default 3000. */
    int reconnect_grace_ms;
    /* Resolve through the agent's xDS server instead: one plain C-core
     * channel to xds:///NAME, with the agent's bootstrap (asked from the
     * agent and set in GRPC_XDS_BOOTSTRAP_CONFIG unless the program set
     * GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG itself). C-core then
     * follows the registry by itself. Per-call groups are chosen by sending
     * the header "x-group: G" in the call's initial metadata (the group
     * argument of disc_channel_create_call is then ignored). See
     * docs/client.md for how the two modes compare. */
    bool use_xds;
};

/* Creates a channel for target ("registry:///NAME" or
 * "registry:///NAME?group=G"), connected to the agent; the first list is
 * asked for at once. Returns 0 and *out, or a negative DISC_E* code
 * (DISC_EINVAL for a bad target, DISC_ENOAGENT when no agent answers). */
int disc_channel_create(const char *target, const struct disc_channel_options *o,
                        disc_channel **out);

/* Creates a call as grpc_channel_create_call() does, on the channel that
 * serves group (NULL: the target's group, or every instance). The first
 * call of a group waits (up to first_list_timeout_ms) for its list. A call
 * on a service with no instances, or whose list never came, fails at once
 * with UNAVAILABLE. Returns NULL only when out of memory. */
grpc_call *disc_channel_create_call(disc_channel *ch, const char *group, grpc_call *parent,
                                    uint32_t propagation_mask, grpc_completion_queue *cq,
                                    grpc_slice method, const grpc_slice *host,
                                    gpr_timespec deadline);

/* Waits until the group's channel reflects revision min_revision or later
 * and is READY (or timeout_ms passes). Returns 0 or DISC_ETIMEDOUT. For
 * tests and for programs that want to start only once connected. */
int disc_channel_wait(disc_channel *ch, const char *group, int64_t min_revision, int timeout_ms);

struct disc_channel_info {
    int64_t revision; /* of the list the current channel was built from */
    bool stale;       /* that list was marked stale by the agent */
    int instances;    /* instances in it */
    int addresses;    /* entries in the target after weighting */
    uint64_t swaps;   /* channels swapped in so far */
    int retired;      /* replaced channels not yet destroyed */
    char target[256]; /* the current target, cut to fit */
};
/* Fills info for group (NULL as above); returns 0, or DISC_EINVAL when no
 * call or wait has asked for that group yet. */
int disc_channel_info(disc_channel *ch, const char *group, struct disc_channel_info *info);

/* Destroys every channel and stops the threads. Calls in flight fail as
 * when a grpc_channel is destroyed. Accepts NULL. */
void disc_channel_destroy(disc_channel *ch);

/* ---- server helper ------------------------------------------------------
 * Mirrors the Go design's server wrapper: bind, serve, register the bound
 * address through the agent, and on shutdown deregister first. The
 * registration belongs to the helper's connection to the agent, so if the
 * process dies the agent deregisters it at once. */

typedef struct disc_server disc_server;

struct disc_server_options {
    const char *socket_path;      /* NULL: $DISCOVERY_SOCKET, then the default */
    int32_t weight;               /* 0: 1 */
    const char *group;            /* NULL: none */
    const char *const *meta_keys; /* n_meta metadata pairs, copied */
    const char *const *meta_values;
    size_t n_meta;
    /* The host to register when listening on a wildcard (0.0.0.0, [::]);
     * NULL: 127.0.0.1 (or ::1 for [::]). */
    const char *advertise_host;
    /* How long disc_server_shutdown() waits between deregistering and
     * shutting the server down, so that clients move away first (C-core
     * cancels calls that arrive after a server's shutdown began); 0: 500. */
    int drain_ms;
};

/* Adds an insecure listening port listen_addr ("127.0.0.1:0" allowed) to
 * server, starts it, and registers NAME at the bound address. The server
 * must be created and have its completion queue registered, and not be
 * started. Returns 0 and *out, or a negative DISC_E* code (the server is
 * then not started). */
int disc_server_start(grpc_server *server, const char *name, const char *listen_addr,
                      const struct disc_server_options *o, disc_server **out);

/* The address registered ("127.0.0.1:43121"). */
const char *disc_server_address(const disc_server *s);

/* Deregisters (returns once the agent confirmed, at most ~6 s), then, on
 * the helper's thread after drain_ms, calls
 * grpc_server_shutdown_and_notify(server, cq, tag): the caller keeps
 * serving its queue, waits for tag as usual, then destroys the server and
 * calls disc_server_free. Create the server with grpc.so_reuseport = 0, so
 * that a second process cannot bind the same port and register it too. */
void disc_server_shutdown(disc_server *s, grpc_completion_queue *cq, void *tag);

/* The drain of issue 5, with a grace chosen now: deregister, wait
 * grace_ms for clients to move away (their channels follow the registry),
 * then shut down as above. */
void disc_server_drain(disc_server *s, int grace_ms, grpc_completion_queue *cq, void *tag);
disc_server *disc_server_free(disc_server *s); /* NULL-safe; returns NULL */

#ifdef __cplusplus
}
#endif

#endif
