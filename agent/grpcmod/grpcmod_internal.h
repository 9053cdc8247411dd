/* Between the files of the gRPC module (agent/grpcmod/: module.c, the
 * exported struct; cq_bridge.c; xds_server.c; health.c). Nothing here is
 * seen by the daemon, which knows the module only through grpc_module.h.
 * Internal names carry the prefix gm__. */
#ifndef DA_GRPCMOD_INTERNAL_H
#define DA_GRPCMOD_INTERNAL_H

#include <grpc/grpc.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "grpc_module.h"

#define gm__container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- logging, through the daemon (module.c) ---------------------------------
 * The same levels and the same test-before-formatting as log.h, whose
 * log_level and log_write are the daemon's: the module reaches them only
 * through the host struct it was given. */
extern const struct da_grpc_host *gm__host;

enum { GM_LOG_DEBUG = 0, GM_LOG_INFO = 1, GM_LOG_WARN = 2, GM_LOG_ERROR = 3 };

#define GM_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= *gm__host->log_level)                                                       \
            gm__host->log_write((level), __VA_ARGS__);                                             \
    } while (0)
#define log_debug(...) GM_LOG(GM_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) GM_LOG(GM_LOG_INFO, __VA_ARGS__)
#define log_warn(...) GM_LOG(GM_LOG_WARN, __VA_ARGS__)
#define log_error(...) GM_LOG(GM_LOG_ERROR, __VA_ARGS__)

/* ---- the completion queue's bridge to the loop (cq_bridge.c) -------------------
 * A gRPC completion queue with one thread of ours in
 * grpc_completion_queue_next() on it. The thread does nothing but put each
 * completed tag on a mutex-protected list and wake the loop (uv_async_t);
 * the loop then runs each tag's fn. So every callback of the module runs
 * on the loop thread, and C-core calls made there (starting batches,
 * creating calls: thread-safe in C-core) need no lock of ours.
 *
 * A tag is embedded in its owner and passed to C-core as the batch's tag;
 * it carries its own link, so the thread never allocates. A tag may be
 * used again once its fn has run. */
struct gm__tag {
    void (*fn)(struct gm__tag *t, bool ok);
    bool ok;              /* the completion's success */
    struct gm__tag *next; /* on the hand-over list */
};

struct gm__bridge;

/* grpc_init(), a queue for grpc_completion_queue_next(), the async handle
 * on loop, and the thread (which takes no signals: the loop handles the
 * daemon's). on_end(arg) runs, on the loop, once the queue has been shut
 * down and every completion has run: destroy there what uses the queue
 * (a server registered on it). 0 or DA_ENOMEM, nothing left then. */
int gm__bridge_new(struct gm__bridge **out, uv_loop_t *loop, void (*on_end)(void *arg), void *arg);
grpc_completion_queue *gm__bridge_queue(const struct gm__bridge *b);
/* Whether the queue has been shut down. From then on nothing may be
 * started on it (a call's batch, a connectivity watch, a server's
 * request): C-core aborts the process (grpc_cq_begin_op) instead of
 * failing. Every starter asks this first. */
bool gm__bridge_is_shut(const struct gm__bridge *b);
/* Runs the completions the thread has handed over, now; after the queue's
 * end, ends the bridge (see on_end). */
void gm__bridge_run(struct gm__bridge *b);
/* Shuts the queue down (once): what is in flight completes, then the
 * thread ends, and on_end follows from the loop. The bridge frees itself
 * after on_end (the queue destroyed, the handle closed, grpc_shutdown()). */
void gm__bridge_shutdown(struct gm__bridge *b);
/* The same, but waits here for the thread to end (for the calls in
 * flight, cancelled beforehand, to complete) and runs the last
 * completions and on_end before it returns; the memory goes when the
 * loop runs next. */
void gm__bridge_shutdown_sync(struct gm__bridge *b);

/* ---- the two users ---------------------------------------------------------------- */

int gm__xds_start(gm_xds **out, uv_loop_t *loop, size_t max_streams, size_t max_message,
                  const struct gm_xds_callbacks *cb, void *arg);
void gm__xds_add_fd(gm_xds *x, int fd, char *peer);
void gm__xds_run(gm_xds *x);
void gm__xds_stop(gm_xds *x);
int gm__stream_send(xgrpc_stream *s, const uint8_t *data, size_t len);
void gm__stream_finish(xgrpc_stream *s, int code, const char *message);
void gm__stream_set_data(xgrpc_stream *s, void *data);
void *gm__stream_data(const xgrpc_stream *s);
const char *gm__stream_peer(const xgrpc_stream *s);

int gm__health_new(gm_health **out, uv_loop_t *loop);
void gm__health_free(gm_health *h);
int gm__health_channel_new(gm_hchan **out, gm_health *h, const char *target, const char *service,
                           int backoff_initial_ms, int backoff_max_ms);
void gm__health_channel_free(gm_hchan *c);
gm_hprobe *gm__health_probe(gm_hchan *c, uint64_t timeout_ms, gm_probe_cb cb, void *arg);
void gm__health_cancel(gm_hprobe *p);

#endif
