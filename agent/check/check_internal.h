/* Between check.c (checkers, damping, scheduling) and the probe types
 * (check_tcp.c, check_http.c, check_exec.c, check_grpc.c). Internal names
 * carry the second prefix check__.
 *
 * A probe is the type's own object for one run. The checker points to the
 * running probe (k->probe) and the probe back to its checker (p->k) until
 * the probe ends or the checker lets go of it (timeout, stop); after that
 * the probe finishes on its own (closes its handles, waits for its call or
 * process) and frees itself, and its result is ignored. So a checker's
 * memory never waits for a probe, and a probe never reaches a freed
 * checker. */
#ifndef DA_CHECK_INTERNAL_H
#define DA_CHECK_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "check.h"

#define check__container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Bounds on what outside input can make us keep. */
#define CHECK_OUTPUT_MAX 256  /* == sizeof(struct check_state.output) */
#define CHECK_ADDRESS_MAX 300 /* "[v6]:port" or a 253-byte name + ":port" */

struct check__probe;

struct check__type {
    /* Prepares k's type-specific state (k->priv). Returns 0 or DA_E*. */
    int (*init)(checker *k, char *err, size_t errlen);
    /* Frees k->priv; running probes are already detached. */
    void (*fini)(checker *k);
    /* Starts one probe. Returns it, or NULL with a failure already
     * reported (check__report) when it could not start. */
    struct check__probe *(*start)(checker *k);
    /* The checker lets go of p (timed out, or stopped): stop it, detach it
     * (check__detach) and let it free itself, without reporting. An exec
     * probe stays attached until its killed process is reaped, so that the
     * next interval does not start a second one; when stopping, the
     * checker detaches it anyway. */
    void (*abandon)(struct check__probe *p);
};

struct check__probe {
    checker *k; /* NULL once detached */
    const struct check__type *type;
};

struct check_ctx {
    uv_loop_t *loop;
    http_client *http;
    bool exec_enabled;
    checker *checkers;        /* every live checker (for check_ctx_free) */
    struct check__grpc *grpc; /* the gRPC thread, started on first use */
};

struct checker {
    struct check_ctx *ctx;
    struct check_spec spec; /* owned, defaults applied */
    char *address;          /* owned, or NULL */
    char *label;            /* owned, or NULL */
    checker_cb cb;
    void *arg;
    const struct check__type *type;
    void *priv; /* the type's state */

    checker *prev, *next; /* in ctx->checkers */

    struct check_state st;
    struct check__probe *probe; /* running probe, or NULL */
    bool reported;              /* probe's result already counted (timed out) */

    uv_timer_t tick;     /* every interval: start a probe */
    uv_timer_t deadline; /* probe timeout; for ttl, the ttl timer */
    int open_handles;
    bool stopped;
};

extern const struct check__type check__tcp, check__http, check__exec, check__grpc;

/* The probe's result, when it ends by itself (also for failures to start).
 * Counts it unless it was already reported (timeout) or p is detached, and
 * detaches p. May run the checker's callback, which may stop the checker:
 * callers must not use k after this (p stays theirs). */
void check__report(struct check__probe *p, bool pass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Same, for a probe that could not be created (no probe object). */
void check__report_k(checker *k, bool pass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Breaks the link between p and its checker (idempotent). */
void check__detach(struct check__probe *p);

/* Splits an address by the registry's rule (validate_hostport()) into host
 * (brackets removed) and port. Returns 0 or DA_EINVAL. */
int check__split_address(const char *addr, char *host, size_t hostlen, int *port);

/* Copies the first line of data (up to '\r' or '\n', control bytes made
 * '?') into out, bounded. */
void check__first_line(char *out, size_t outlen, const char *data, size_t len);

/* The gRPC side of the context (check_grpc.c): the module joins its thread
 * and drops queued results; its async handle is freed by the loop. */
void check__grpc_ctx_free(struct check_ctx *ctx);

#endif
