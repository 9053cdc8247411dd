/* grpc_module: gRPC C-core lives in a module that the daemon loads with
 * dlopen() on first use, so that an agent which serves no xDS client and
 * runs no grpc health check never maps libgrpc, abseil or libstdc++ (they
 * cost several MiB of resident memory the moment they are linked, used or
 * not: relocations, static constructors, C-core's threads).
 *
 * The module (build/discovery-agent-grpc.so, installed in
 * $(LIBDIR)/discovery-agent/; its sources are agent/grpcmod/) exports one
 * symbol, DA_GRPC_MODULE_SYMBOL: a struct da_grpc_module whose first member
 * is the interface version. The daemon looks the file up, resolves that
 * one symbol, refuses any other version, and calls the module only through
 * the struct's function pointers. The module calls the daemon only through
 * the struct da_grpc_host it is given (logging), so it links nothing of
 * the daemon's.
 *
 * Two users, each with its own part of the struct:
 *  - the xDS server (agent/xds/xds_grpc.c) listens itself and starts the
 *    module's server ("xds_*") when a client has sent its first bytes;
 *  - grpc health checks (check_grpc.c) give each checker a channel
 *    ("health_*") and run one probe per interval on it.
 * Both run their completion queue through the module's one bridge to the
 * loop (agent/grpcmod/cq_bridge.c): callbacks run on the loop thread.
 *
 * Change DA_GRPC_MODULE_VERSION whenever this file changes in a way that
 * matters to either side: a daemon and a module of different versions
 * refuse each other, clearly, instead of crashing. */
#ifndef DA_GRPC_MODULE_H
#define DA_GRPC_MODULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define DA_GRPC_MODULE_VERSION 1
#define DA_GRPC_MODULE_SYMBOL "da_grpc_module"
#define DA_GRPC_MODULE_FILE "discovery-agent-grpc.so"
/* Tried first (and alone) when set: tests and `make run`. */
#define DA_GRPC_MODULE_ENV "DISCOVERY_AGENT_MODULE_DIR"

/* What the daemon lends the module, for the life of the process. */
struct da_grpc_host {
    const int *log_level; /* the daemon's log_level */
    void (*log_write)(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
};

/* ---- the xDS server's gRPC side ------------------------------------------ */

typedef struct gm_xds gm_xds;             /* one run of C-core's server */
typedef struct xgrpc_stream xgrpc_stream; /* one ADS call (xds_grpc.h) */

struct gm_xds_callbacks {
    void (*on_open)(xgrpc_stream *s, void *arg);
    void (*on_message)(xgrpc_stream *s, const uint8_t *data, size_t len, void *arg);
    void (*on_sent)(xgrpc_stream *s, void *arg);
    void (*on_close)(xgrpc_stream *s, void *arg);
    /* After xds_stop(): the server, its queue and its thread are gone and
     * no callback follows. */
    void (*on_stopped)(void *arg);
};

/* ---- grpc health checks ----------------------------------------------------- */

typedef struct gm_health gm_health; /* the checks' completion queue and thread */
typedef struct gm_hchan gm_hchan;   /* one checker's channel */
typedef struct gm_hprobe gm_hprobe; /* one Health/Check call */

/* A probe's result, on the loop: pass (SERVING) or not, and one line
 * saying why ("SERVING", "rpc: UNAVAILABLE: ...", "timed out after N ms"). */
typedef void (*gm_probe_cb)(void *arg, bool pass, const char *output);

struct da_grpc_module {
    uint32_t version;  /* DA_GRPC_MODULE_VERSION: checked before anything else */
    const char *built; /* the DA_VERSION it was built from, for messages */
    /* Once, right after loading; host is borrowed for good. */
    void (*init)(const struct da_grpc_host *host);

    /* The xDS server (xds_grpc.h tells the whole contract). xds_start()
     * initializes gRPC and starts a server with no port: 0, or a negative
     * DA_E* code with nothing left running. cb and arg are copied/borrowed
     * until on_stopped. */
    int (*xds_start)(gm_xds **out, uv_loop_t *loop, size_t max_streams, size_t max_message,
                     const struct gm_xds_callbacks *cb, void *arg);
    /* Gives an accepted socket to the server, which owns fd and peer (a
     * malloc'd name such as "unix:" or "ipv4:1.2.3.4:5", or NULL) from here. */
    void (*xds_add_fd)(gm_xds *x, int fd, char *peer);
    /* Runs the completions already handed to the loop, now. */
    void (*xds_run)(gm_xds *x);
    /* Cancels every stream (on_close for each open one, before this
     * returns) and shuts the server down; on_stopped follows from the loop. */
    void (*xds_stop)(gm_xds *x);
    /* xgrpc_send(), xgrpc_finish() and the stream accessors of xds_grpc.h. */
    int (*stream_send)(xgrpc_stream *s, const uint8_t *data, size_t len);
    void (*stream_finish)(xgrpc_stream *s, int code, const char *message);
    void (*stream_set_data)(xgrpc_stream *s, void *data);
    void *(*stream_data)(const xgrpc_stream *s);
    const char *(*stream_peer)(const xgrpc_stream *s);

    /* Health checks. health_new() initializes gRPC and starts the queue's
     * thread: 0 or DA_ENOMEM. health_free() wants every channel freed
     * first; it blocks until the cancelled calls have ended (milliseconds)
     * and its memory goes when the loop runs next. Accepts NULL. */
    int (*health_new)(gm_health **out, uv_loop_t *loop);
    void (*health_free)(gm_health *h);
    /* A channel to target (a C-core target: "ipv4:1.2.3.4:5", "dns:///h:5")
     * asking for service (NULL or "": the server overall), reconnecting
     * after backoff_initial_ms and at most every backoff_max_ms. Strings
     * are copied. 0 or DA_ENOMEM. A channel is freed only once its probes
     * have ended or been cancelled. */
    int (*health_channel_new)(gm_hchan **out, gm_health *h, const char *target, const char *service,
                              int backoff_initial_ms, int backoff_max_ms);
    void (*health_channel_free)(gm_hchan *c);
    /* Starts one probe of at most timeout_ms: cb runs once, from the loop,
     * never from this call. NULL when it cannot start (out of memory, a
     * call refused by C-core): no cb then. */
    gm_hprobe *(*health_probe)(gm_hchan *c, uint64_t timeout_ms, gm_probe_cb cb, void *arg);
    /* No cb after this; the call is cancelled and freed by the module. */
    void (*health_cancel)(gm_hprobe *p);
};

/* The daemon's side (grpc_module.c): the module, loaded on the first call
 * and kept for the life of the process. Looks in $DISCOVERY_AGENT_MODULE_DIR
 * alone when it is set, otherwise in the folder of the running program and
 * then in DA_MODULEDIR. NULL when it cannot be had, with err saying why,
 * starting with "<what> needs discovery-agent-grpc.so" (what: "xDS", "a grpc
 * health check"); a failed load is tried again on the next call. The
 * result is borrowed; the module is never unloaded. */
const struct da_grpc_module *grpc_module_get(const char *what, char *err, size_t errlen);

/* Whether the module has been loaded (for status and tests). */
bool grpc_module_loaded(void);

#endif
