/* Checkers: scheduling of probes, their timeouts, flap damping, and the
 * dispatch to the probe types (check_*.c).
 *
 * Each checker has two timers. `tick` fires every interval and starts a
 * probe unless the previous one is still running; `deadline` bounds the
 * running probe, and for a ttl checker it is the ttl timer. A probe that
 * times out is counted as a failure at once and let go (see
 * check_internal.h): it cleans up on its own, so a checker never waits for
 * a slow probe and the loop never does either. */
#include "check.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_internal.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "validate.h"

static const struct check__type *type_ops(enum check_type t)
{
    switch (t) {
    case CHECK_GRPC:
        return &check__grpc;
    case CHECK_TCP:
        return &check__tcp;
    case CHECK_HTTP:
        return &check__http;
    case CHECK_EXEC:
        return &check__exec;
    default:
        return NULL; /* ttl has no probes; none and unknown are refused */
    }
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return DA_EINVAL;
}

/* ---- small helpers for the probe types ------------------------------------ */

int check__split_address(const char *addr, char *host, size_t hostlen, int *port)
{
    struct validate_hostport hp;
    size_t n;

    /* The registry's own address rule (validate.h), so that every address
     * it accepts can be probed. */
    if (!addr || validate_hostport(addr, strlen(addr), 0, &hp, NULL, 0) != VALIDATE_OK)
        return DA_EINVAL;
    n = strlen(hp.host);
    if (n >= hostlen)
        return DA_EINVAL;
    memcpy(host, hp.host, n + 1);
    *port = hp.port;
    return 0;
}

void check__first_line(char *out, size_t outlen, const char *data, size_t len)
{
    size_t n = 0;

    if (!outlen)
        return;
    /* Skip leading blank lines: "\nerror: x" should show "error: x". */
    while (len && (*data == '\n' || *data == '\r')) {
        data++;
        len--;
    }
    for (size_t i = 0; i < len && n + 1 < outlen; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\n' || c == '\r')
            break;
        out[n++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[n] = '\0';
}

/* ---- damping ---------------------------------------------------------------- */

static void log_change(const checker *k, bool healthy, int count)
{
    const char *label = k->label ? k->label : "";
    const char *addr = k->address ? k->address : "";
    const char *sep = *label && *addr ? " " : "";

    if (healthy)
        log_info("check: %s%s%s is now healthy (%d %s)", label, sep, addr, count,
                 count == 1 ? "pass" : "passes");
    else
        log_warn("check: %s%s%s is now unhealthy (%d %s): %s", label, sep, addr, count,
                 count == 1 ? "failure" : "failures", k->st.output);
}

/* Counts one result. May run the callback, which may stop k (its memory
 * stays until the loop closes its timers): callers must not touch k's
 * probe or timers after this. */
static void record(checker *k, bool pass, const char *output)
{
    uint64_t now = uv_now(k->ctx->loop);
    bool change = false;

    if (k->stopped)
        return;
    k->st.last_run_ms = now;
    k->st.probes++;
    metrics.check_results[pass ? M_CHECK_PASS : M_CHECK_FAIL]++;
    snprintf(k->st.output, sizeof k->st.output, "%s", output);
    if (pass) {
        k->st.failures = 0;
        if (k->st.passes < INT_MAX)
            k->st.passes++;
        change = !k->st.healthy && k->st.passes >= k->spec.rise;
    } else {
        k->st.passes = 0;
        if (k->st.failures < INT_MAX)
            k->st.failures++;
        change = k->st.healthy && k->st.failures >= k->spec.fall;
    }
    log_debug("check: %s %s: %s %s", k->label ? k->label : "-", k->address ? k->address : "-",
              pass ? "pass" : "fail", k->st.output);
    if (!change)
        return;
    k->st.healthy = pass;
    metrics.check_transitions[pass ? M_CHECK_PASS : M_CHECK_FAIL]++;
    k->st.changed_at_ms = now ? now : 1;
    log_change(k, pass, pass ? k->st.passes : k->st.failures);
    if (k->cb)
        k->cb(k, pass, k->arg);
}

static void vreport(checker *k, bool pass, const char *fmt, va_list ap)
{
    char out[CHECK_OUTPUT_MAX];

    vsnprintf(out, sizeof out, fmt, ap);
    record(k, pass, out);
}

void check__detach(struct check__probe *p)
{
    if (p->k) {
        p->k->probe = NULL;
        p->k = NULL;
    }
}

void check__report(struct check__probe *p, bool pass, const char *fmt, ...)
{
    checker *k = p->k;
    bool counted;
    va_list ap;

    if (!k)
        return;
    check__detach(p);
    counted = k->reported;
    k->reported = true;
    if (counted)
        return; /* it timed out and was counted then */
    uv_timer_stop(&k->deadline);
    va_start(ap, fmt);
    vreport(k, pass, fmt, ap);
    va_end(ap);
}

void check__report_k(checker *k, bool pass, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(k, pass, fmt, ap);
    va_end(ap);
}

/* ---- scheduling ------------------------------------------------------------- */

/* The running probe is over its timeout: counted as a failure now, and
 * let go of. */
static void time_out(checker *k)
{
    struct check__probe *p = k->probe;

    if (!p || k->reported)
        return;
    k->reported = true;
    /* Let go of the probe before counting: the callback may stop k. */
    p->type->abandon(p);
    check__report_k(k, false, "timed out after %llu ms", (unsigned long long)k->spec.timeout_ms);
}

static void deadline_cb(uv_timer_t *t)
{
    checker *k = t->data;

    if (k->spec.type == CHECK_TTL) {
        record(k, false, "ttl expired");
        return;
    }
    time_out(k);
}

static void tick_cb(uv_timer_t *t)
{
    checker *k = t->data;
    struct check__probe *p;

    /* With a timeout equal to the interval, the running probe's deadline
     * is due in the same loop turn as this tick, and libuv runs the tick
     * first (it was armed first). Time the probe out here, so that the
     * next one starts on time instead of being skipped for a whole
     * interval. */
    if (k->probe && uv_is_active((uv_handle_t *)&k->deadline) &&
        !uv_timer_get_due_in(&k->deadline)) {
        uv_timer_stop(&k->deadline);
        time_out(k);
        if (k->stopped)
            return; /* the callback stopped it */
    }
    if (k->probe) {
        /* Only an exec probe whose killed process has not exited yet can
         * still be here: never run two at once. */
        log_debug("check: %s %s: previous probe still running; skipped", k->label ? k->label : "-",
                  k->address ? k->address : "-");
        return;
    }
    k->reported = false;
    p = k->type->start(k);
    if (!p)
        return; /* failed to start; already counted (and k may be stopped) */
    p->k = k;
    p->type = k->type;
    k->probe = p;
    uv_timer_start(&k->deadline, deadline_cb, k->spec.timeout_ms, 0);
}

/* ---- lifetime ----------------------------------------------------------------- */

int check_ctx_new(struct check_ctx **out, uv_loop_t *loop, http_client *http, bool exec_enabled)
{
    struct check_ctx *ctx = calloc(1, sizeof *ctx);

    if (!ctx)
        return DA_ENOMEM;
    ctx->loop = loop;
    ctx->http = http;
    ctx->exec_enabled = exec_enabled;
    *out = ctx;
    return 0;
}

void check_ctx_set_exec_enabled(struct check_ctx *ctx, bool exec_enabled)
{
    ctx->exec_enabled = exec_enabled;
}

void check_ctx_free(struct check_ctx *ctx)
{
    if (!ctx)
        return;
    while (ctx->checkers)
        checker_close(ctx->checkers);
    /* Nothing of a detached probe refers to ctx except gRPC calls, which
     * this waits for; so ctx itself can go now. */
    check__grpc_ctx_free(ctx);
    free(ctx);
}

static void checker_free_mem(checker *k)
{
    check_spec_clear(&k->spec);
    free(k->address);
    free(k->label);
    free(k);
}

static void handle_closed(uv_handle_t *h)
{
    checker *k = h->data;

    if (--k->open_handles == 0)
        checker_free_mem(k);
}

int checker_start(checker **out, struct check_ctx *ctx, const struct check_spec *spec,
                  const char *address, checker_cb cb, void *arg, char *err, size_t errlen)
{
    struct check_spec norm = *spec; /* shallow, for validation only */
    checker *k;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    rc = check_spec_normalize(&norm, ctx->exec_enabled, err, errlen);
    if (rc < 0)
        return rc;
    if (address && strlen(address) > CHECK_ADDRESS_MAX)
        return fail(err, errlen, "%s check: address too long", check_type_name(spec->type));
    if ((spec->type == CHECK_TCP || spec->type == CHECK_GRPC ||
         (spec->type == CHECK_HTTP && !spec->http_url)) &&
        (!address || !*address))
        return fail(err, errlen, "%s check: the instance has no address to probe",
                    check_type_name(spec->type));

    k = calloc(1, sizeof *k);
    if (!k)
        return DA_ENOMEM;
    if (check_spec_copy(&k->spec, &norm) < 0 || (address && !(k->address = strdup(address)))) {
        checker_free_mem(k);
        return DA_ENOMEM;
    }
    k->ctx = ctx;
    k->cb = cb;
    k->arg = arg;
    k->type = type_ops(k->spec.type);
    if (k->type) {
        rc = k->type->init(k, err, errlen);
        if (rc < 0) {
            checker_free_mem(k);
            return rc;
        }
    }

    uv_timer_init(ctx->loop, &k->tick);
    uv_timer_init(ctx->loop, &k->deadline);
    k->tick.data = k->deadline.data = k;
    k->open_handles = 2;
    if (k->spec.type == CHECK_TTL)
        uv_timer_start(&k->deadline, deadline_cb, k->spec.ttl_ms, k->spec.ttl_ms);
    else
        uv_timer_start(&k->tick, tick_cb, 0, k->spec.interval_ms);

    k->next = ctx->checkers;
    if (ctx->checkers)
        ctx->checkers->prev = k;
    ctx->checkers = k;
    *out = k;
    return 0;
}

int checker_set_label(checker *k, const char *label)
{
    char *l = label ? strdup(label) : NULL;

    if (label && !l)
        return DA_ENOMEM;
    free(k->label);
    k->label = l;
    return 0;
}

void checker_close(checker *k)
{
    struct check_ctx *ctx;

    if (!k || k->stopped)
        return;
    ctx = k->ctx;
    k->stopped = true;
    k->cb = NULL;
    if (k->prev)
        k->prev->next = k->next;
    else
        ctx->checkers = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;

    if (k->probe) {
        k->probe->type->abandon(k->probe); /* may free the probe */
        /* An exec probe stays attached while its process dies; from now on
         * it reaps the process and frees itself without us. */
        if (k->probe)
            check__detach(k->probe);
    }
    if (k->type)
        k->type->fini(k);
    uv_close((uv_handle_t *)&k->tick, handle_closed);
    uv_close((uv_handle_t *)&k->deadline, handle_closed);
}

void checker_pass(checker *k)
{
    if (!k || k->stopped || k->spec.type != CHECK_TTL)
        return;
    uv_timer_start(&k->deadline, deadline_cb, k->spec.ttl_ms, k->spec.ttl_ms);
    record(k, true, "pass");
}

void checker_fail(checker *k, const char *why)
{
    if (!k || k->stopped || k->spec.type != CHECK_TTL)
        return;
    uv_timer_start(&k->deadline, deadline_cb, k->spec.ttl_ms, k->spec.ttl_ms);
    record(k, false, why && *why ? why : "failed");
}

void checker_state(const checker *k, struct check_state *out)
{
    *out = k->st;
}

const struct check_spec *checker_spec(const checker *k)
{
    return &k->spec;
}
