/* xds_grpc: the xDS server's transport: a gRPC C-core server for the one
 * bidirectional method
 *   /envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources
 * on a unix socket (and optionally a loopback TCP port), whose streams are
 * driven from the libuv loop. It knows nothing of xDS: each request
 * message goes to a callback as bytes, and the caller sends bytes back.
 *
 * gRPC runs only while it is used, and is loaded only once it is. The
 * sockets are the agent's own; the first connection that sends something
 * loads the gRPC module (grpc_module.h) if it is not yet, initializes
 * gRPC and starts the module's server (and its completion thread), and
 * every connection is handed to it. After idle_ms without an open stream
 * and without a new connection, the server is shut down and gRPC with it
 * (its threads end; the module stays mapped); the next connection starts
 * it again. Streams cut by that shutdown get on_close like any other.
 * Without the module, connections that speak are closed and the reason
 * logged ("xDS needs discovery-agent-grpc.so: ...").
 *
 * Threads. C-core delivers completions on a completion queue, which one
 * thread of the module drains; that thread only hands each completed tag
 * to the loop (the module's one bridge, cq_bridge.c) and touches nothing
 * else. Everything else, starting batches included (grpc_call_start_batch
 * is thread-safe), happens on the loop thread, so the callbacks below run
 * on the loop and the caller's state needs no locks.
 *
 * A stream has at most one message being sent: xgrpc_send() is refused
 * while one is in flight, and on_sent says when the next may go. Callers
 * that keep state of the world therefore send only their latest state.
 *
 * When on_close runs: once per opened stream, from the loop, when the
 * client ends or cancels the call or the connection breaks; and for every
 * open stream inside xgrpc_close(), before it returns, so that no callback
 * runs after xgrpc_close(). After on_close the stream pointer is invalid.
 *
 * Ownership: options are copied; message bytes passed to on_message are
 * borrowed for the call; bytes given to xgrpc_send() are copied. */
#ifndef DA_XDS_GRPC_H
#define DA_XDS_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct xgrpc xgrpc;
typedef struct xgrpc_stream xgrpc_stream;

#define XGRPC_METHOD                                                                               \
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

struct xgrpc_options {
    const char *path;   /* unix socket path; fits in sun_path */
    unsigned mode;      /* its permissions, set before clients can use it */
    const char *tcp;    /* "127.0.0.1:PORT" or NULL */
    size_t max_streams; /* default (0) 1024; past it, streams end at once
                         * with RESOURCE_EXHAUSTED */
    size_t max_message; /* largest request accepted; default (0) 1 MiB */
    uint64_t idle_ms;   /* gRPC stops after this long without a stream;
                         * default (0) 60 s */
    int listen_fd;      /* > 0: the unix socket for path, passed by systemd
                         * (listen_fds.h); stolen, even on failure; its file is
                         * never made or removed here. 0: make it */
};

struct xgrpc_callbacks {
    /* A new ADS stream; the others get UNIMPLEMENTED without a callback. */
    void (*on_open)(xgrpc_stream *s, void *arg);
    /* One request message. */
    void (*on_message)(xgrpc_stream *s, const uint8_t *data, size_t len, void *arg);
    /* The message given to xgrpc_send() has gone out; another may follow. */
    void (*on_sent)(xgrpc_stream *s, void *arg);
    /* See "When on_close runs". */
    void (*on_close)(xgrpc_stream *s, void *arg);
};

/* Checks the socket path (a live socket there: refused with -EADDRINUSE
 * "another agent is listening on PATH"; a stale one is removed; a file
 * that is no socket: -EEXIST), creates its folder if missing (0755),
 * binds with the mode already set, and listens; gRPC is not initialized
 * yet. Returns 0 with *out set, or a negative code with a reason in err
 * and nothing left listening. */
int xgrpc_start(xgrpc **out, uv_loop_t *loop, const struct xgrpc_options *o,
                const struct xgrpc_callbacks *cb, void *arg, char *err, size_t errlen);

/* Sends one message (copied). 0, DA_EBUSY-like DA_ECANCELED when the
 * stream is ending, or DA_EINVAL while a send is in flight. */
int xgrpc_send(xgrpc_stream *s, const uint8_t *data, size_t len);

/* Ends the stream with a gRPC status (code, message copied) once the
 * message in flight, if any, is out. on_close follows. */
void xgrpc_finish(xgrpc_stream *s, int code, const char *message);

void xgrpc_stream_set_data(xgrpc_stream *s, void *data);
void *xgrpc_stream_data(const xgrpc_stream *s);
/* The client's address as gRPC gives it ("unix:", "ipv4:127.0.0.1:5555"). */
const char *xgrpc_stream_peer(const xgrpc_stream *s);

/* The TCP port listened on, 0 without one. */
int xgrpc_tcp_port(const xgrpc *g);

/* Whether gRPC runs now, and how many times it was started. */
bool xgrpc_running(const xgrpc *g);
uint64_t xgrpc_starts(const xgrpc *g);

/* Stops listening (and removes the socket file if it is still ours),
 * cancels every stream (on_close for each, before this returns), and
 * shuts gRPC down if it runs; the memory goes once the loop has run the
 * last completions (keep running it). Accepts NULL. */
void xgrpc_close(xgrpc *g);

#endif
