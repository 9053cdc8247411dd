#include "session.h"

#include <stdlib.h>

#include "backoff.h"
#include "defaults.h"
#include "error.h"
#include "log.h"
#include "metrics.h"

#define RETRY_MIN_MS 200
#define RETRY_MAX_MS 5000

struct session {
    uv_loop_t *loop;
    etcd_client *etcd;
    int64_t ttl_s;
    session_cb cb;
    void *arg;

    int64_t lease;
    uint64_t last_ok; /* uv_now of the last grant or keep-alive */
    int64_t last_ttl; /* TTL etcd reported then */
    uint64_t grants;
    uint64_t ka_sent_ns; /* uv_hrtime() of the keep-alive in flight */
    struct backoff backoff;
    bool stopping;
    etcd_call *call;
    uv_timer_t timer; /* next keep-alive, or next grant attempt */
    void (*stop_done)(void *);
    void *stop_arg;
};

static void grant(session *s);
static void keepalive(session *s);

static void timer_fired(uv_timer_t *t)
{
    session *s = t->data;

    if (s->lease)
        keepalive(s);
    else
        grant(s);
}

static void schedule(session *s, uint64_t ms)
{
    uv_timer_start(&s->timer, timer_fired, ms, 0);
}

/* Backoff with full jitter for grants and failed keep-alives. The
 * keep-alive retry is capped below a sixth of the TTL so that several
 * tries fit in it. */
static uint64_t next_backoff(session *s, bool inside_ttl)
{
    uint32_t cap = RETRY_MAX_MS;

    if (inside_ttl && (uint32_t)(s->ttl_s * 1000 / 6) < cap)
        cap = (uint32_t)(s->ttl_s * 1000 / 6);
    s->backoff.cap_ms = cap;
    return backoff_next(&s->backoff);
}

static void granted(int err, const struct etcd_result *r, void *arg)
{
    session *s = arg;

    s->call = NULL;
    if (err || r->lease_id == 0 || r->ttl <= 0) {
        uint64_t ms = next_backoff(s, false);
        log_warn("session: cannot get a lease: %s (%s); retrying in %llu ms",
                 err ? da_strerror(err) : "no lease in reply", etcd_client_last_error(s->etcd),
                 (unsigned long long)ms);
        schedule(s, ms);
        return;
    }
    s->lease = r->lease_id;
    s->last_ttl = r->ttl;
    s->last_ok = uv_now(s->loop);
    backoff_reset(&s->backoff);
    s->grants++;
    metrics.lease_grants++;
    log_info("session: lease %llx granted (ttl %lld s)", (unsigned long long)s->lease,
             (long long)r->ttl);
    schedule(s, (uint64_t)s->ttl_s * 1000 / 3);
    s->cb(s, s->lease, s->arg);
}

static void grant(session *s)
{
    int rc;

    if (s->stopping || s->call)
        return;
    rc = etcd_lease_grant(s->etcd, s->ttl_s, granted, s, &s->call);
    if (rc < 0)
        schedule(s, next_backoff(s, false));
}

static void kept(int err, const struct etcd_result *r, void *arg)
{
    session *s = arg;

    s->call = NULL;
    if (!err && r->ttl > 0) {
        metrics_observe(&metrics.keepalive_latency, metrics_since(s->ka_sent_ns, uv_hrtime()));
        s->last_ok = uv_now(s->loop);
        s->last_ttl = r->ttl;
        backoff_reset(&s->backoff);
        schedule(s, (uint64_t)s->ttl_s * 1000 / 3);
        return;
    }
    if (!err || err == DA_ELEASE) {
        /* etcd answered, and the lease is not there: expired (we were cut
         * off or frozen past the TTL), revoked, or etcd lost its data. */
        log_warn("session: lease %llx is gone; getting a new one and registering again",
                 (unsigned long long)s->lease);
        metrics.lease_losses++;
        s->lease = 0;
        backoff_reset(&s->backoff);
        s->cb(s, 0, s->arg);
        grant(s);
        return;
    }
    uint64_t ms = next_backoff(s, true);
    log_warn("session: keep-alive of lease %llx failed: %s (%s); retrying in %llu ms",
             (unsigned long long)s->lease, da_strerror(err), etcd_client_last_error(s->etcd),
             (unsigned long long)ms);
    schedule(s, ms);
}

static void keepalive(session *s)
{
    int rc;

    if (s->stopping || s->call)
        return;
    s->ka_sent_ns = uv_hrtime();
    rc = etcd_lease_keepalive(s->etcd, s->lease, kept, s, &s->call);
    if (rc < 0)
        schedule(s, next_backoff(s, true));
}

int session_new(session **out, uv_loop_t *loop, etcd_client *etcd, int64_t ttl_s, session_cb cb,
                void *arg)
{
    session *s = calloc(1, sizeof *s);

    if (!s)
        return DA_ENOMEM;
    s->loop = loop;
    s->etcd = etcd;
    s->ttl_s = ttl_s > 0 ? ttl_s : DA_DEFAULT_SESSION_TTL_MS / 1000;
    s->cb = cb;
    s->arg = arg;
    s->backoff = BACKOFF_INIT(RETRY_MIN_MS, RETRY_MAX_MS);
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    *out = s;
    return 0;
}

void session_start(session *s)
{
    grant(s);
}

void session_check(session *s)
{
    if (s->lease && !s->call && !s->stopping) {
        uv_timer_stop(&s->timer);
        keepalive(s);
    }
}

int64_t session_lease(const session *s)
{
    return s->lease;
}
int64_t session_ttl(const session *s)
{
    return s->ttl_s;
}
uint64_t session_grants(const session *s)
{
    return s->grants;
}

int64_t session_since_keepalive(const session *s)
{
    return s->last_ok ? (int64_t)(uv_now(s->loop) - s->last_ok) : -1;
}

int64_t session_remaining_ms(const session *s)
{
    if (!s->lease)
        return 0;
    return s->last_ttl * 1000 - (int64_t)(uv_now(s->loop) - s->last_ok);
}

static void revoked(int err, const struct etcd_result *r, void *arg)
{
    session *s = arg;

    (void)r;
    s->call = NULL;
    if (err && err != DA_ELEASE)
        log_warn("session: revoking lease %llx failed: %s; its keys go when its TTL ends",
                 (unsigned long long)s->lease, da_strerror(err));
    else
        log_info("session: lease %llx revoked", (unsigned long long)s->lease);
    s->lease = 0;
    if (s->stop_done)
        s->stop_done(s->stop_arg);
}

void session_stop(session *s, void (*done)(void *arg), void *arg)
{
    s->stopping = true;
    s->stop_done = done;
    s->stop_arg = arg;
    uv_timer_stop(&s->timer);
    etcd_call_cancel(s->call);
    s->call = NULL;
    if (!s->lease || etcd_lease_revoke(s->etcd, s->lease, revoked, s, &s->call) < 0) {
        if (done)
            done(arg);
    }
}

static void closed(uv_handle_t *h)
{
    free(h->data);
}

session *session_close(session *s)
{
    if (!s)
        return NULL;
    etcd_call_cancel(s->call);
    uv_close((uv_handle_t *)&s->timer, closed);
    return NULL;
}
