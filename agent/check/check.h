/* Health checks of registered instances: one checker per instance, probing
 * it every interval (grpc, tcp, http, exec) or waiting for the application's
 * own reports (ttl), with flap damping: an instance becomes healthy after
 * `rise` consecutive passes and unhealthy after `fall` consecutive failures.
 *
 * Everything here runs on the loop's thread. Probes are asynchronous and
 * each has its own timeout, so a probe that never answers delays neither
 * the loop nor other checkers; gRPC probes run on C-core's completion queue
 * in one thread shared by all checkers, which hands results to the loop
 * through a uv_async_t. */
#ifndef DA_CHECK_H
#define DA_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "check_spec.h"
#include "http.h"

/* ---- the context shared by every checker ---------------------------------- */

struct check_ctx; /* shared by all checkers: the loop, the http client, the gRPC probing thread */

/* loop and http are borrowed and must outlive the context (free it before
 * http_client_close(), which would drop running http probes). The gRPC thread
 * (and grpc_init(), in the gRPC module that it loads: grpc_module.h) starts
 * with the first gRPC checker. Returns 0 or
 * DA_ENOMEM. */
int check_ctx_new(struct check_ctx **out, uv_loop_t *loop, http_client *http, bool exec_enabled);
/* For a reload: applies to checkers started afterwards (running exec
 * checkers are left to their owner to stop). */
void check_ctx_set_exec_enabled(struct check_ctx *ctx, bool exec_enabled);
/* Stops every checker still running (without callbacks), joins the gRPC
 * thread, and closes the context's handles: the loop must run once more
 * (uv_run) before uv_loop_close(). Blocks only for the gRPC thread to see
 * its cancelled calls end (milliseconds). NULL-safe. */
void check_ctx_free(struct check_ctx *ctx);

/* ---- checkers --------------------------------------------------------------- */

typedef struct checker checker;

/* Called when the instance's health changes (after rise passes / fall
 * failures), never twice with the same value. The callback may stop any
 * checker, its own included. */
typedef void (*checker_cb)(checker *k, bool healthy, void *arg);

/* Starts checking the instance at address (host:port; tcp and grpc probe it,
 * the default http URL uses it; exec and ttl do not need it and accept
 * NULL). A grpc address may also be a full C-core target ("ipv4:...",
 * "unix:..."). spec, address and err are borrowed (copied as needed).
 * A new checker starts UNHEALTHY and runs its first probe at once (on the
 * next loop turn, never inside this call), then every interval; a ttl
 * checker waits for checker_pass(). Returns 0, DA_EINVAL (bad spec, exec
 * when exec checks are disabled: message in err), DA_ENOMEM; on error cb is
 * never called. */
int checker_start(checker **out, struct check_ctx *ctx, const struct check_spec *spec,
                  const char *address, checker_cb cb, void *arg, char *err, size_t errlen);

/* Names the checker in its log lines ("check: NAME ADDRESS is now
 * healthy"), usually the service name. label is copied. Returns 0 or
 * DA_ENOMEM (the old label stays). */
int checker_set_label(checker *k, const char *label);

/* No callback after this; a running probe is abandoned (an exec probe's
 * process group is killed). The memory is freed by the loop. NULL-safe. */
void checker_close(checker *k);

/* ttl: the application says "pass" (counts as a passing probe; the ttl
 * timer restarts); other types: ignored. The change callback, when this
 * makes one, runs before checker_pass() returns (likewise checker_fail). */
void checker_pass(checker *k);
/* ttl: explicit failure (counts as a failing probe with why as its output,
 * NULL: "failed"; the ttl timer restarts, as it measures silence); other
 * types: ignored. */
void checker_fail(checker *k, const char *why);

struct check_state {
    bool healthy;
    int passes, failures; /* consecutive */
    char output
        [256]; /* last probe's result: "SERVING", "HTTP 500", "connect: Connection refused", "exit 1: <first line of output>", "timed out after 2000 ms", "ttl expired" */
    uint64_t changed_at_ms; /* uv_now of the last health change (0: never) */
    uint64_t last_run_ms;   /* uv_now when the last probe's result came (0: none yet) */
    uint64_t probes;        /* results counted so far (passes and failures) */
};
void checker_state(const checker *k, struct check_state *out);

/* The checker's spec with defaults applied; borrowed, valid until
 * checker_close(). */
const struct check_spec *checker_spec(const checker *k);

#endif
