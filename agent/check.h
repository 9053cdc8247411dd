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

#include "http.h"

enum check_type { CHECK_NONE = 0, CHECK_GRPC, CHECK_TCP, CHECK_HTTP, CHECK_EXEC, CHECK_TTL };

#define CHECK_DEFAULT_INTERVAL_MS 10000
#define CHECK_DEFAULT_TIMEOUT_MS 2000
#define CHECK_DEFAULT_RISE 2
#define CHECK_DEFAULT_FALL 3

/* What to check and how often. A zero interval_ms, timeout_ms, rise or fall
 * means its default; the default timeout is 2 s, or half the interval when
 * the interval is 2 s or less. interval_ms, timeout_ms are unused by ttl. */
struct check_spec {
    enum check_type type;
    uint64_t interval_ms; /* default 10s */
    uint64_t timeout_ms;  /* default 2s, and < interval */
    int rise;             /* consecutive passes to become healthy; default 2 */
    int fall;             /* consecutive failures to become unhealthy; default 3 */
    char *grpc_service;   /* grpc: the service name asked in HealthCheckRequest; NULL/"" = server overall */
    char *http_url;       /* http: full URL; NULL = http://<address>/health */
    char **exec_argv;     /* exec: argv, NULL-terminated (run without a shell) */
    uint64_t ttl_ms;      /* ttl: the application must report pass at least this often */
};

/* Helpers for owners of specs (configuration, registry). A spec filled by
 * check_spec_copy() owns its strings; check_spec_clear() frees them and
 * zeroes the spec (any spec whose strings are heap-allocated, NULL-safe).
 * check_spec_copy returns 0 or DA_ENOMEM (dst is then cleared). */
int check_spec_copy(struct check_spec *dst, const struct check_spec *src);
void check_spec_clear(struct check_spec *s);
/* Same check once defaults are applied (a reload can keep a checker). */
bool check_spec_equal(const struct check_spec *a, const struct check_spec *b);

/* Applies the defaults to *s in place and validates it, as checker_start
 * does, without needing an address (so the configuration can refuse a bad
 * check when it is loaded). exec_enabled: whether exec checks are allowed.
 * Returns 0 or DA_EINVAL with a reason in err. */
int check_spec_normalize(struct check_spec *s, bool exec_enabled, char *err, size_t errlen);

const char *check_type_name(enum check_type t); /* "grpc", ..., "none"; static */
/* "grpc", "tcp", "http", "exec", "ttl", "none" (exact, lower case).
 * Returns 0 or DA_EINVAL. */
int check_type_parse(const char *s, enum check_type *out);

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
void checker_stop(checker *k);

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
    int passes, failures;   /* consecutive */
    char output[256];       /* last probe's result: "SERVING", "HTTP 500", "connect: Connection refused", "exit 1: <first line of output>", "timed out after 2000 ms", "ttl expired" */
    uint64_t changed_at_ms; /* uv_now of the last health change (0: never) */
    uint64_t last_run_ms;   /* uv_now when the last probe's result came (0: none yet) */
    uint64_t probes;        /* results counted so far (passes and failures) */
};
void checker_state(const checker *k, struct check_state *out);

/* The checker's spec with defaults applied, and its address (NULL if it
 * has none); borrowed, valid until checker_stop(). */
const struct check_spec *checker_spec(const checker *k);
const char *checker_address(const checker *k);

#endif
