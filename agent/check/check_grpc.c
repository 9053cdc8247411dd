/* grpc probes: grpc.health.v1.Health/Check, SERVING passes; any other
 * answer, an error status or a timeout fails.
 *
 * gRPC C-core is not in the daemon: it is in the gRPC module (grpc_module.h),
 * loaded by the first grpc checker, which also starts the module's queue
 * and the thread that drains it (the context's, kept until
 * check_ctx_free()). Here each checker gets a channel of the module, and
 * each probe one of the module's probes, whose result comes back on the
 * loop. Without the module (not installed, or of another version) a grpc
 * check cannot start: checker_start() fails with the reason, and nothing
 * else of the agent is affected.
 *
 * A probe whose checker let go of it (timeout, stop) is cancelled in the
 * module, which frees it once C-core has completed it; no result comes. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_internal.h"
#include "error.h"
#include "grpc_module.h"

/* Reconnect backoff: the channel's own retries start after at most 1 s and
 * grow to at most one interval (C-core's defaults are 1 s and 120 s), so a
 * down instance is retried at least once between probes. Each probe after
 * a failure also resets the backoff (health.c in the module). */
#define INITIAL_BACKOFF_MS 1000
#define MAX_BACKOFF_MS 120000

/* The context's gRPC side, from its first grpc checker. */
struct check__grpc {
    const struct da_grpc_module *m;
    gm_health *h;
};

struct grpc_probe {
    struct check__probe base;
    gm_hprobe *mp;
};

/* ---- the context's side ------------------------------------------------------ */

static int grpc_ctx_start(struct check_ctx *ctx, char *err, size_t errlen)
{
    struct check__grpc *g;
    const struct da_grpc_module *m = grpc_module_get("a grpc health check", err, errlen);
    int rc;

    if (!m)
        return DA_EINVAL;
    if (!(g = calloc(1, sizeof *g)))
        return DA_ENOMEM;
    if ((rc = m->health_new(&g->h, ctx->loop)) < 0) {
        free(g);
        return rc;
    }
    g->m = m;
    ctx->grpc = g;
    return 0;
}

void check__grpc_ctx_free(struct check_ctx *ctx)
{
    struct check__grpc *g = ctx->grpc;

    if (!g)
        return;
    ctx->grpc = NULL;
    /* Every checker is stopped and every call cancelled: this waits for
     * those calls to end. */
    g->m->health_free(g->h);
    free(g);
}

/* ---- the type ------------------------------------------------------------------- */

/* "ipv4:1.2.3.4:5", "ipv6:[::1]:5", "dns:///name:5"; a target that already
 * names a scheme is taken as it is. */
static int make_target(const char *address, char *out, size_t outlen)
{
    static const char *const schemes[] = {"ipv4:", "ipv6:", "unix:", "unix-abstract:", "dns:"};
    char host[CHECK_ADDRESS_MAX + 1];
    unsigned char buf[sizeof(struct in6_addr)];
    int port;

    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (!strncmp(address, schemes[i], strlen(schemes[i]))) {
            snprintf(out, outlen, "%s", address);
            return 0;
        }
    if (check__split_address(address, host, sizeof host, &port) < 0)
        return DA_EINVAL;
    if (inet_pton(AF_INET, host, buf) == 1)
        snprintf(out, outlen, "ipv4:%s:%d", host, port);
    else if (inet_pton(AF_INET6, host, buf) == 1)
        snprintf(out, outlen, "ipv6:[%s]:%d", host, port);
    else
        snprintf(out, outlen, "dns:///%s:%d", host, port);
    return 0;
}

static int grpc_init_k(checker *k, char *err, size_t errlen)
{
    char target[CHECK_ADDRESS_MAX + 32];
    gm_hchan *c;
    int backoff_max =
        k->spec.interval_ms < MAX_BACKOFF_MS ? (int)k->spec.interval_ms : MAX_BACKOFF_MS;
    int backoff_initial = backoff_max < INITIAL_BACKOFF_MS ? backoff_max : INITIAL_BACKOFF_MS;
    int rc;

    if (make_target(k->address, target, sizeof target) < 0) {
        snprintf(err, errlen, "grpc check: address \"%s\" is not host:port", k->address);
        return DA_EINVAL;
    }
    if (!k->ctx->grpc && (rc = grpc_ctx_start(k->ctx, err, errlen)) < 0)
        return rc;
    rc = k->ctx->grpc->m->health_channel_new(&c, k->ctx->grpc->h, target, k->spec.grpc_service,
                                             backoff_initial, backoff_max);
    if (rc < 0)
        return rc;
    k->priv = c;
    return 0;
}

static void grpc_fini(checker *k)
{
    if (!k->priv)
        return;
    k->ctx->grpc->m->health_channel_free(k->priv);
    k->priv = NULL;
}

/* The module's result, on the loop: the probe is still its checker's (a
 * cancelled one gets no result). */
static void probe_done(void *arg, bool pass, const char *output)
{
    struct grpc_probe *p = arg;

    check__report(&p->base, pass, "%s", output);
    free(p);
}

static struct check__probe *grpc_start(checker *k)
{
    struct grpc_probe *p = calloc(1, sizeof *p);

    if (!p) {
        check__report_k(k, false, "out of memory");
        return NULL;
    }
    p->mp = k->ctx->grpc->m->health_probe(k->priv, k->spec.timeout_ms, probe_done, p);
    if (!p->mp) {
        free(p);
        check__report_k(k, false, "rpc: cannot start the call");
        return NULL;
    }
    return &p->base;
}

static void grpc_abandon(struct check__probe *base)
{
    struct grpc_probe *p = check__container_of(base, struct grpc_probe, base);

    /* The module's context outlives every probe (check_ctx_free() stops the
     * checkers first), and no result comes after the cancel. */
    base->k->ctx->grpc->m->health_cancel(p->mp);
    check__detach(base);
    free(p);
}

const struct check__type check__grpc = {
    .init = grpc_init_k,
    .fini = grpc_fini,
    .start = grpc_start,
    .abandon = grpc_abandon,
};
