/* The one bridge from a gRPC completion queue to the libuv loop, used by
 * the xDS server and by grpc health checks; see grpcmod_internal.h.
 *
 * The thread is a pthread with every signal blocked, and the hand-over is
 * a list under a pthread mutex plus uv_async_send(), which libuv allows
 * from any thread and coalesces: one wake-up may carry many tags.
 *
 * The end: whoever shuts the queue down, the thread sees
 * GRPC_QUEUE_SHUTDOWN after the last completion, marks the bridge done and
 * wakes the loop one last time. gm__bridge_run() takes the list and the
 * mark together, so the list it takes with the mark is the last one; it
 * runs it, joins the thread (which has returned or is returning), calls
 * on_end, destroys the queue, and closes the handle, whose callback frees
 * the bridge and drops its reference to gRPC. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include <grpc/support/time.h>

#include "error.h"
#include "grpcmod_internal.h"

struct gm__bridge {
    grpc_completion_queue *cq;
    pthread_t thread;
    pthread_mutex_t mu;
    uv_async_t async;
    struct gm__tag *head, *tail; /* completed, for the loop; under mu */
    bool done;                   /* the thread has seen the queue's end; under mu */
    bool shut;                   /* grpc_completion_queue_shutdown() called */
    bool joined;                 /* pthread_join() done */
    bool ended;                  /* on_end has run */
    void (*on_end)(void *arg);
    void *arg;
};

static void *bridge_thread(void *arg)
{
    struct gm__bridge *b = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(b->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        bool end = ev.type == GRPC_QUEUE_SHUTDOWN;

        if (!end && ev.type != GRPC_OP_COMPLETE)
            continue;
        pthread_mutex_lock(&b->mu);
        if (end) {
            b->done = true;
        } else {
            struct gm__tag *t = ev.tag;
            t->ok = ev.success != 0;
            t->next = NULL;
            if (b->tail)
                b->tail->next = t;
            else
                b->head = t;
            b->tail = t;
        }
        pthread_mutex_unlock(&b->mu);
        uv_async_send(&b->async);
        if (end)
            return NULL;
    }
}

static void bridge_closed(uv_handle_t *h)
{
    struct gm__bridge *b = h->data;

    pthread_mutex_destroy(&b->mu);
    free(b);
    /* The bridge's reference, taken in gm__bridge_new(): the last one
     * ends C-core's threads (1.51 joins them, from a thread of ours). */
    grpc_shutdown();
}

static void bridge_end(struct gm__bridge *b)
{
    if (b->ended)
        return;
    b->ended = true;
    if (!b->joined)
        pthread_join(b->thread, NULL);
    b->joined = true;
    if (b->on_end)
        b->on_end(b->arg);
    grpc_completion_queue_destroy(b->cq);
    uv_close((uv_handle_t *)&b->async, bridge_closed);
}

void gm__bridge_run(struct gm__bridge *b)
{
    struct gm__tag *list;
    bool done;

    if (b->ended)
        return;
    pthread_mutex_lock(&b->mu);
    list = b->head;
    b->head = b->tail = NULL;
    done = b->done;
    pthread_mutex_unlock(&b->mu);
    while (list) {
        struct gm__tag *t = list;
        list = t->next;
        t->fn(t, t->ok);
    }
    if (done)
        bridge_end(b);
}

static void on_async(uv_async_t *h)
{
    gm__bridge_run(h->data);
}

int gm__bridge_new(struct gm__bridge **out, uv_loop_t *loop, void (*on_end)(void *arg), void *arg)
{
    struct gm__bridge *b = calloc(1, sizeof *b);
    sigset_t all, old;
    int rc;

    *out = NULL;
    if (!b)
        return DA_ENOMEM;
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        free(b);
        return DA_ENOMEM;
    }
    b->on_end = on_end;
    b->arg = arg;
    grpc_init();
    if (!(b->cq = grpc_completion_queue_create_for_next(NULL)))
        goto fail;
    if (uv_async_init(loop, &b->async, on_async) < 0) {
        grpc_completion_queue_destroy(b->cq);
        goto fail;
    }
    b->async.data = b;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&b->thread, NULL, bridge_thread, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        grpc_completion_queue_shutdown(b->cq);
        grpc_completion_queue_destroy(b->cq);
        b->ended = true;
        uv_close((uv_handle_t *)&b->async, bridge_closed); /* frees b, grpc_shutdown() */
        return DA_ENOMEM;
    }
    *out = b;
    return 0;
fail:
    pthread_mutex_destroy(&b->mu);
    free(b);
    grpc_shutdown();
    return DA_ENOMEM;
}

grpc_completion_queue *gm__bridge_queue(const struct gm__bridge *b)
{
    return b->cq;
}

bool gm__bridge_is_shut(const struct gm__bridge *b)
{
    return b->shut;
}

void gm__bridge_shutdown(struct gm__bridge *b)
{
    if (b->shut)
        return;
    b->shut = true;
    grpc_completion_queue_shutdown(b->cq);
}

void gm__bridge_shutdown_sync(struct gm__bridge *b)
{
    gm__bridge_shutdown(b);
    if (b->ended)
        return;
    /* The thread returns once the queue is drained: C-core completes the
     * cancelled calls without waiting for a peer. */
    pthread_join(b->thread, NULL);
    b->joined = true;
    gm__bridge_run(b);
}
