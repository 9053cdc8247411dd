#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "validate.h"

#define RETRY_MIN_MS 500
#define RETRY_MAX_MS 10000
#define FIGHT_WINDOW_MS 60000
#define FIGHT_FREE_HEALS 3
#define FIGHT_MIN_MS 1000
#define FIGHT_MAX_MS 60000

struct waiter {
    void (*done)(int err, void *arg);
    void *arg;
    struct waiter *next;
};

struct reg {
    registry *r;
    struct instance inst;
    char *key;
    size_t klen;
    char *value;
    size_t vlen;
    uint64_t owner;
    pid_t owner_pid;       /* the owning connection's process; 0: none */
    uint64_t gen;          /* bumped on every change of value */
    uint64_t sent_gen;     /* gen of the write in flight or last done */
    int64_t lease_written; /* lease of our last successful write */
    int64_t rev_written;   /* its revision */
    unsigned rev_epoch;    /* etcd_client_epoch() when it was written */
    etcd_call *call;
    enum reg_state state;
    char error[160];
    struct backoff backoff;
    uint64_t not_before; /* uv_now before which no write is sent */
    unsigned heals;
    uint64_t heal_window;
    service *svc;
    cache_sub *sub;
    struct waiter *waiters;
    checker *chk; /* NULL: no check */
    bool healthy; /* the check's verdict (true without a check) */
    bool drained;
    bool withheld_logged;
    bool removing; /* deregistered while its write was in flight */
    void (*del_done)(int err, void *arg);
    void *del_arg;
    struct reg *next;
};

struct del;

/* The revision of our last write or delete per service, so that a client
 * that registered and then resolves sees its own change (read your
 * writes): the cache is behind until the watch event arrives. */
struct wrote {
    char *name;
    int64_t rev;
    unsigned epoch; /* etcd_client_epoch() of rev: older ones mean nothing */
    struct wrote *next;
};

struct registry {
    struct wrote *wrote;
    struct del *dels;  /* deletes in flight or waiting to be retried */
    struct reg *dying; /* removed while a write was in flight */
    uv_loop_t *loop;
    etcd_client *etcd;
    cache *cache;
    session *session;
    char *prefix;
    struct reg *regs;
    size_t n;
    int64_t lease;
    uv_timer_t timer; /* retries and backoff */
    struct check_ctx *checks;
    bool maint;
    char maint_reason[256];
    bool shutting_down;
    size_t deleting;
    void (*shutdown_done)(void *);
    void *shutdown_arg;
    const struct policy_config *locality; /* zone and region we write */
};

static void kick(struct reg *g);
static bool wanted(const struct reg *g);
static void note_write(registry *r, const char *key, size_t klen, int64_t rev);

/* A delete of one of our keys. It is retried with backoff until etcd
 * answers: a key left behind would stay under our live lease for as long
 * as the agent runs. */
struct del {
    registry *r;
    char *key;
    size_t klen;
    int64_t rev;   /* deleted only if the key is still our write of rev */
    int64_t lease; /* or, rev unknown (0), if it still carries lease */
    bool counted;  /* one of the shutdown's deletes */
    struct backoff backoff;
    uint64_t retry_at; /* 0: in flight */
    etcd_call *call;
    struct del *next;
    void (*done)(int err, void *arg);
    void *arg;
};

static void send_del(struct del *d);
static void del_free(registry *r, struct del *d);
static int start_del(registry *r, char *key, size_t klen, int64_t rev, int64_t lease,
                     void (*done)(int, void *), void *arg);
static void service_changed(service *svc, void *arg);

/* ---- helpers ------------------------------------------------------------ */

static struct reg *find(const registry *r, const char *name, const char *address)
{
    for (struct reg *g = r->regs; g; g = g->next)
        if (!strcmp(g->inst.name, name) && !strcmp(g->inst.address, address))
            return g;
    return NULL;
}

static struct reg *find_key(const registry *r, const char *key, size_t klen)
{
    for (struct reg *g = r->regs; g; g = g->next)
        if (g->klen == klen && !memcmp(g->key, key, klen))
            return g;
    return NULL;
}

/* The revision of g's last write, or 0 when it is unknown or from before
 * etcd's history restarted (wiped, or restored from a backup). */
static int64_t our_rev(const struct reg *g)
{
    return g->rev_epoch == etcd_client_epoch(g->r->etcd) ? g->rev_written : 0;
}

/* Writes and deletes of one key never overlap. etcd applies requests sent
 * on different connections in whatever order they reach it, so a delete
 * sent before a put could land after it and take the newer key away while
 * the registry believes it written. A key is busy while a delete of it, or
 * the write of an earlier registration of it (removed while in flight), is
 * unanswered; the put waits, and is kicked when that answer comes
 * (deleted()). A delete waiting to be retried is dropped instead: the put
 * replaces the key anyway. */
static bool key_busy(registry *r, const struct reg *g)
{
    struct del *d, *next;

    for (struct reg *o = r->dying; o; o = o->next)
        if (o->call && o->klen == g->klen && !memcmp(o->key, g->key, g->klen))
            return true;
    for (d = r->dels; d; d = d->next)
        if (d->call && d->klen == g->klen && !memcmp(d->key, g->key, g->klen))
            return true;
    for (d = r->dels; d; d = next) {
        next = d->next;
        if (!d->call && !d->counted && d->klen == g->klen && !memcmp(d->key, g->key, g->klen))
            del_free(r, d);
    }
    return false;
}

static void wake_waiters(struct reg *g, int err)
{
    struct waiter *w = g->waiters;

    g->waiters = NULL;
    while (w) {
        struct waiter *next = w->next;
        w->done(err, w->arg);
        free(w);
        w = next;
    }
}

static void reg_free(struct reg *g)
{
    checker_close(g->chk);
    g->chk = NULL;
    wake_waiters(g, DA_ECANCELED);
    etcd_call_cancel(g->call);
    cache_unsubscribe(g->sub);
    instance_clear(&g->inst);
    free(g->key);
    free(g->value);
    free(g);
}

static void unlink_reg(registry *r, struct reg *g)
{
    for (struct reg **pp = &r->regs; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            r->n--;
            return;
        }
}

/* Arms the shared timer for the earliest pending retry. */
static void timer_fired(uv_timer_t *t);

static void arm(registry *r)
{
    uint64_t now = uv_now(r->loop), next = UINT64_MAX;

    for (struct reg *g = r->regs; g; g = g->next)
        if (!g->call && g->not_before > now && g->not_before < next)
            next = g->not_before;
    for (struct del *d = r->dels; d; d = d->next)
        if (d->retry_at && d->retry_at < next)
            next = d->retry_at > now ? d->retry_at : now;
    if (next != UINT64_MAX)
        uv_timer_start(&r->timer, timer_fired, next - now, 0);
}

static void timer_fired(uv_timer_t *t)
{
    registry *r = t->data;
    uint64_t now = uv_now(r->loop);

    for (struct reg *g = r->regs; g; g = g->next)
        if (g->not_before && g->not_before <= now) {
            g->not_before = 0;
            kick(g);
        }
    for (struct del *d = r->dels; d; d = d->next)
        if (d->retry_at && d->retry_at <= now && !d->call)
            send_del(d);
    arm(r);
}

static void retry_later(struct reg *g)
{
    g->not_before = uv_now(g->r->loop) + backoff_next(&g->backoff);
    arm(g->r);
}

/* ---- writing ------------------------------------------------------------ */

static void written(int err, const struct etcd_result *res, void *arg)
{
    struct reg *g = arg;
    registry *r = g->r;
    int64_t lease = g->lease_written; /* stashed by kick() */

    g->call = NULL;
    if (g->removing) {
        /* Deregistered meanwhile: now that the write is answered (or
         * failed, yet may have landed), delete under the lease it used. */
        char *key = g->key;
        size_t klen = g->klen;
        bool counted = r->shutting_down;
        for (struct reg **pp = &r->dying; *pp; pp = &(*pp)->next)
            if (*pp == g) {
                *pp = g->next;
                break;
            }
        void (*done)(int, void *) = g->del_done;
        void *darg = g->del_arg;
        /* A failed write may still have landed, at a revision we do not
         * know: then only the lease tells whether the key is ours. */
        int64_t rev = err ? 0 : res->revision;
        g->key = NULL;
        reg_free(g);
        if (counted)
            r->deleting--; /* start_del counts it again */
        start_del(r, key, klen, rev, lease, done, darg);
        return;
    }
    if (err) {
        snprintf(g->error, sizeof g->error, "%s (%s)", da_strerror(err),
                 etcd_client_last_error(r->etcd));
        g->lease_written = 0;
        if (g->state != REG_FAILING)
            log_warn("registry: cannot write %s: %s; retrying", g->key, g->error);
        g->state = REG_FAILING;
        wake_waiters(g, err);
        /* A put under a lease etcd no longer has: make the session look. */
        if (err == DA_ELEASE)
            session_check(r->session);
        retry_later(g);
        return;
    }
    g->rev_written = res->revision;
    g->rev_epoch = etcd_client_epoch(r->etcd);
    note_write(r, g->key, g->klen, res->revision);
    backoff_reset(&g->backoff);
    g->error[0] = '\0';
    if (g->state != REG_REGISTERED)
        log_info("registry: registered %s/%s (lease %llx)", g->inst.name, g->inst.address,
                 (unsigned long long)lease);
    g->state = REG_REGISTERED;
    wake_waiters(g, 0);
    /* Changed while the write was in flight, the lease moved on, or the
     * instance is no longer wanted (failed its check, drained). */
    if (g->sent_gen != g->gen || g->lease_written != r->lease || !wanted(g))
        kick(g);
    else if (g->svc)
        /* Look at etcd's view again: changes to the key that arrived while
         * the write was in flight were skipped by service_changed(), and
         * nothing else would look at them. */
        service_changed(g->svc, g);
}

/* Whether g's key belongs in etcd now. */
static bool wanted(const struct reg *g)
{
    return g->healthy && !g->drained && !g->r->maint;
}

static const char *withheld_why(const struct reg *g)
{
    return g->r->maint ? "the host is in maintenance" : g->drained ? "drained" : "unhealthy";
}

/* Takes g's key out of etcd (if it may be there) and keeps it out. */
static void withhold(struct reg *g)
{
    registry *r = g->r;

    if (g->state != REG_WITHHELD || !g->withheld_logged) {
        log_info("registry: %s/%s kept out of etcd: %s", g->inst.name, g->inst.address,
                 withheld_why(g));
        g->withheld_logged = true;
    }
    g->state = REG_WITHHELD;
    wake_waiters(g, DA_EWITHHELD);
    if (g->lease_written) {
        char *key = strdup(g->key);
        int64_t lease = g->lease_written;
        g->lease_written = 0;
        if (key)
            start_del(r, key, g->klen, our_rev(g), lease, NULL, NULL);
    }
}

static void kick(struct reg *g)
{
    registry *r = g->r;
    int rc;

    if (g->call || r->shutting_down)
        return;
    if (!wanted(g)) {
        withhold(g);
        return;
    }
    g->withheld_logged = false;
    if (g->state == REG_WITHHELD)
        g->state = REG_PENDING;
    if (!r->lease)
        return;
    if (g->lease_written == r->lease && g->sent_gen == g->gen)
        return; /* up to date */
    if (g->not_before > uv_now(r->loop)) {
        arm(r);
        return;
    }
    if (key_busy(r, g))
        return; /* deleted() or written() comes back when the key is free */
    g->sent_gen = g->gen;
    /* The lease the write goes under; written() reads it back. */
    g->lease_written = r->lease;
    rc = etcd_put(r->etcd, g->key, g->klen, g->value, g->vlen, r->lease, written, g, &g->call);
    if (rc < 0) {
        g->lease_written = 0;
        snprintf(g->error, sizeof g->error, "%s", da_strerror(rc));
        g->state = REG_FAILING;
        retry_later(g);
    }
}

/* ---- healing ------------------------------------------------------------ */

/* Our service changed in etcd: is our key still there, ours, and current? */
static void service_changed(service *svc, void *arg)
{
    struct reg *g = arg;
    registry *r = g->r;
    const char *value;
    size_t vlen;
    int64_t lease;
    uint64_t now;

    if (service_stale(svc) || !r->lease || g->call || g->lease_written != r->lease ||
        service_revision(svc) < our_rev(g) || r->shutting_down || !wanted(g))
        return;
    bool present = service_entry(svc, g->inst.address, &value, &vlen, &lease);
    if (present && lease == r->lease && vlen == g->vlen && !memcmp(value, g->value, vlen))
        return;

    now = uv_now(r->loop);
    if (now - g->heal_window > FIGHT_WINDOW_MS) {
        g->heal_window = now;
        g->heals = 0;
    }
    g->heals++;
    metrics.registration_heals++;
    log_warn("registry: %s was %s by someone else; writing it again", g->key,
             present ? "overwritten" : "deleted");
    g->lease_written = 0;
    if (g->heals > FIGHT_FREE_HEALS) {
        /* Another writer keeps changing it: back off instead of fighting. */
        uint64_t ms = backoff_delay(FIGHT_MIN_MS, FIGHT_MAX_MS, g->heals - FIGHT_FREE_HEALS);
        log_warn("registry: %s changed %u times in a minute; next write in %llu ms", g->key,
                 g->heals, (unsigned long long)ms);
        g->not_before = now + ms;
        arm(r);
        return;
    }
    if (!present)
        session_check(r->session); /* the key may have gone with the lease */
    kick(g);
}

/* ---- public ------------------------------------------------------------- */

int registry_new(registry **out, uv_loop_t *loop, etcd_client *etcd, cache *cache, session *session,
                 const char *prefix, struct check_ctx *checks)
{
    registry *r = calloc(1, sizeof *r);

    if (!r || !(r->prefix = strdup(prefix))) {
        free(r);
        return DA_ENOMEM;
    }
    r->loop = loop;
    r->etcd = etcd;
    r->cache = cache;
    r->session = session;
    r->checks = checks;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    *out = r;
    return 0;
}

static int set_value(struct reg *g, const struct instance *inst)
{
    char *v = instance_to_value(inst);
    struct instance copy;

    if (!v || instance_copy(&copy, inst)) {
        free(v);
        return DA_ENOMEM;
    }
    instance_clear(&g->inst);
    free(g->value);
    g->inst = copy;
    g->value = v;
    g->vlen = strlen(v);
    g->gen++;
    return 0;
}

static void health_changed(checker *k, bool healthy, void *arg)
{
    struct reg *g = arg;

    (void)k;
    g->healthy = healthy;
    kick(g);
}

/* Starts, replaces or stops g's checker to match spec. */
static int set_check(struct reg *g, const struct check_spec *spec, char *err, size_t errlen)
{
    registry *r = g->r;
    char label[600];
    checker *k;
    int rc;

    if (!spec || spec->type == CHECK_NONE) {
        if (g->chk) {
            checker_close(g->chk);
            g->chk = NULL;
        }
        g->healthy = true;
        return 0;
    }
    if (g->chk && check_spec_equal(checker_spec(g->chk), spec))
        return 0; /* same check: keep its state across a reload */
    if (!r->checks) {
        snprintf(err, errlen, "health checks are not available");
        return DA_EINVAL;
    }
    rc = checker_start(&k, r->checks, spec, g->inst.address, health_changed, g, err, errlen);
    if (rc)
        return rc;
    snprintf(label, sizeof label, "%s %s", g->inst.name, g->inst.address);
    checker_set_label(k, label);
    checker_close(g->chk);
    g->chk = k;
    /* A new check starts unhealthy: nothing that has not passed is served. */
    g->healthy = false;
    return 0;
}

/* Whether a connection (owner, of process pid) may change or remove g:
 * its own, a persistent one, or one of another connection of the same
 * process (a client that reconnected before its old connection closed).
 * The configuration's belong to the configuration alone. */
static bool may_take(const struct reg *g, uint64_t owner, pid_t pid)
{
    if (g->owner == REG_OWNER_CONFIG)
        return owner == REG_OWNER_CONFIG;
    return g->owner == owner || g->owner == REG_OWNER_RUNTIME || (pid > 0 && g->owner_pid == pid);
}

void registry_set_locality(registry *r, const struct policy_config *p)
{
    r->locality = p;
}

static int add(registry *r, const struct instance *inst, uint64_t owner, pid_t pid,
               const struct check_spec *check, void (*done)(int err, void *arg), void *arg,
               char *err, size_t errlen);

/* Every instance this agent registers says its zone and region (those of
 * locality:, unless it gives its own), so that other hosts can rank it. */
int registry_add(registry *r, const struct instance *inst, uint64_t owner, pid_t pid,
                 const struct check_spec *check, void (*done)(int err, void *arg), void *arg,
                 char *err, size_t errlen)
{
    struct instance local;
    struct instance_meta *meta = malloc((inst->n_meta + 2) * sizeof *meta);
    int rc;

    if (!meta)
        return DA_ENOMEM;
    rc = add(r, policy_localize(r->locality, inst, &local, meta), owner, pid, check, done, arg, err,
             errlen);
    free(meta);
    return rc;
}

static int add(registry *r, const struct instance *inst, uint64_t owner, pid_t pid,
               const struct check_spec *check, void (*done)(int err, void *arg), void *arg,
               char *err, size_t errlen)
{
    struct reg *g = find(r, inst->name, inst->address);
    bool created = false;
    char why[128];
    int rc;

    /* The config loader and the socket protocol have checked both by the
     * same rules; this is the last line before a key is built from them. */
    if (!validate_name(inst->name, why, sizeof why) ||
        !validate_address(inst->address, why, sizeof why)) {
        snprintf(err, errlen, "%s", why);
        return DA_EINVAL;
    }
    if (r->shutting_down) {
        snprintf(err, errlen, "the agent is shutting down");
        return DA_ECANCELED;
    }
    if (g && g->owner == REG_OWNER_CONFIG && owner != REG_OWNER_CONFIG) {
        snprintf(err, errlen, "%s %s is registered by the configuration; change it there",
                 inst->name, inst->address);
        return DA_EACCES;
    }
    if (g && !may_take(g, owner, pid) && owner != REG_OWNER_CONFIG) {
        /* Another process's live connection has it (a second server bound
         * the same port, say): taking it over would let that one's exit
         * delete the first one's key. */
        snprintf(err, errlen,
                 "%s %s is registered by another process's connection to this agent (pid %ld); "
                 "deregister it there first",
                 inst->name, inst->address, (long)g->owner_pid);
        return DA_EACCES;
    }
    if (!g) {
        int cerr;
        g = calloc(1, sizeof *g);
        if (!g)
            return DA_ENOMEM;
        g->r = r;
        g->backoff = BACKOFF_INIT(RETRY_MIN_MS, RETRY_MAX_MS);
        g->klen = strlen(r->prefix) + strlen(inst->name) + strlen(inst->address) + 2;
        g->key = malloc(g->klen + 1);
        if (!g->key || set_value(g, inst)) {
            reg_free(g);
            return DA_ENOMEM;
        }
        snprintf(g->key, g->klen + 1, "%s/%s/%s", r->prefix, inst->name, inst->address);
        g->healthy = true;
        if ((rc = set_check(g, check, err, errlen))) {
            reg_free(g);
            return rc;
        }
        created = true;
        g->svc = cache_get(r->cache, inst->name, &cerr);
        if (g->svc)
            g->sub = cache_subscribe(g->svc, service_changed, g);
        g->next = r->regs;
        r->regs = g;
        r->n++;
    } else {
        if (!instance_equal(&g->inst, inst) && (rc = set_value(g, inst)))
            return rc;
        if ((rc = set_check(g, check, err, errlen)))
            return rc;
    }
    (void)created;
    g->owner = owner;
    g->owner_pid = owner == REG_OWNER_CONFIG || owner == REG_OWNER_RUNTIME ? 0 : pid;
    if (done) {
        struct waiter *w = calloc(1, sizeof *w);
        if (w) {
            w->done = done;
            w->arg = arg;
            w->next = g->waiters;
            g->waiters = w;
        }
    }
    if (wanted(g) && g->lease_written == r->lease && g->sent_gen == g->gen && r->lease && !g->call)
        wake_waiters(g, 0); /* nothing to write: already there */
    else
        kick(g);
    return 0;
}

int registry_drain(registry *r, const char *name, const char *address, bool on)
{
    struct reg *g = find(r, name, address);

    if (!g)
        return DA_ENOENT;
    if (g->drained != on) {
        g->drained = on;
        log_info("registry: %s/%s %s", name, address, on ? "drained" : "undrained");
        kick(g);
    }
    return 0;
}

void registry_maint(registry *r, bool on, const char *reason)
{
    snprintf(r->maint_reason, sizeof r->maint_reason, "%s", on && reason ? reason : "");
    if (r->maint == on)
        return;
    r->maint = on;
    log_warn("registry: maintenance %s%s%s", on ? "on" : "off", on && reason && *reason ? ": " : "",
             on && reason ? reason : "");
    for (struct reg *g = r->regs; g; g = g->next)
        kick(g);
}

bool registry_in_maint(const registry *r, const char **reason)
{
    if (reason)
        *reason = r->maint_reason;
    return r->maint;
}

int registry_check_report(registry *r, const char *name, const char *address, bool pass,
                          const char *why)
{
    struct reg *g = find(r, name, address);

    if (!g)
        return DA_ENOENT;
    if (!g->chk || checker_spec(g->chk)->type != CHECK_TTL)
        return DA_EINVAL;
    if (pass)
        checker_pass(g->chk);
    else
        checker_fail(g->chk, why && *why ? why : "reported failing");
    return 0;
}

static void del_free(registry *r, struct del *d)
{
    for (struct del **pp = &r->dels; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    etcd_call_cancel(d->call);
    free(d->key);
    free(d);
}

static void deleted(int err, const struct etcd_result *res, void *arg)
{
    struct del *d = arg;
    registry *r = d->r;
    bool counted = d->counted;

    (void)res;
    d->call = NULL;
    if (d->done) {
        void (*done)(int, void *) = d->done;
        d->done = NULL; /* the caller hears once; retries are ours */
        done(err, d->arg);
    }
    if (err && !r->shutting_down) {
        if (backoff_is_fresh(&d->backoff))
            log_warn("registry: cannot delete %s: %s (%s); retrying", d->key, da_strerror(err),
                     etcd_client_last_error(r->etcd));
        /* At least 1 ms: retry_at 0 means "in flight". */
        d->retry_at = uv_now(r->loop) + backoff_next(&d->backoff) + 1;
        arm(r);
        return;
    }
    if (err) {
        log_warn("registry: cannot delete %s: %s; it goes when the lease ends", d->key,
                 da_strerror(err));
    } else if (res && !res->succeeded) {
        /* The key is no longer the one we wrote: a newer write (ours or
         * someone else's) replaced it, or it is already gone. */
        log_info("registry: deregistered %s (the key had changed; left as it is)", d->key);
    } else {
        log_info("registry: deregistered %s", d->key);
        if (res)
            note_write(r, d->key, d->klen, res->revision);
    }
    struct reg *waiting = r->shutting_down ? NULL : find_key(r, d->key, d->klen);
    del_free(r, d);
    if (waiting)
        kick(waiting);
    if (counted && --r->deleting == 0 && r->shutdown_done) {
        void (*fn)(void *) = r->shutdown_done;
        r->shutdown_done = NULL;
        fn(r->shutdown_arg);
    }
}

/* The delete compares the revision of our write when it is known, so that
 * it can never remove a newer write of the key, whoever made it; a compare
 * of the lease alone would also match a newer write of ours. */
static void send_del(struct del *d)
{
    registry *r = d->r;
    struct etcd_cmp cmp = {.key = d->key, .klen = d->klen, .op = ETCD_CMP_EQUAL};
    struct etcd_op op = {.type = ETCD_OP_DELETE, .key = d->key, .klen = d->klen};
    int rc;

    cmp.target = d->rev ? ETCD_CMP_MOD : ETCD_CMP_LEASE;
    cmp.number = d->rev ? d->rev : d->lease;
    d->retry_at = 0;
    rc = etcd_txn(r->etcd, &cmp, 1, &op, 1, NULL, 0, deleted, d, &d->call);
    if (rc < 0)
        deleted(rc, NULL, d);
}

/* Starts deleting key (taken) if it is still our write of revision rev
 * (rev 0: unknown; then if it still carries lease). Returns 0, or
 * DA_ENOMEM (key freed). */
static int start_del(registry *r, char *key, size_t klen, int64_t rev, int64_t lease,
                     void (*done)(int, void *), void *arg)
{
    struct del *d = calloc(1, sizeof *d);

    if (!d) {
        free(key);
        return DA_ENOMEM;
    }
    d->r = r;
    d->backoff = BACKOFF_INIT(RETRY_MIN_MS, RETRY_MAX_MS);
    d->key = key;
    d->klen = klen;
    d->rev = rev;
    d->lease = lease;
    d->counted = r->shutting_down;
    d->done = done;
    d->arg = arg;
    d->next = r->dels;
    r->dels = d;
    if (d->counted)
        r->deleting++;
    send_del(d);
    return 0;
}

/* Takes g out of the registry and deletes its key from etcd if it may be
 * there. A write still in flight is let finish first (in written()), so
 * that it cannot land after the delete. Returns 0 (a delete follows), 1
 * (nothing was in etcd; g is gone), or DA_ENOMEM. */
static int delete_reg(registry *r, struct reg *g, void (*done)(int, void *), void *arg)
{
    int64_t lease = g->lease_written, rev = our_rev(g);
    char *key = g->key;

    unlink_reg(r, g);
    if (g->call) {
        g->removing = true;
        g->del_done = done;
        g->del_arg = arg;
        g->next = r->dying;
        r->dying = g;
        if (r->shutting_down)
            r->deleting++;
        return 0;
    }
    if (!lease) {
        reg_free(g);
        return 1;
    }
    g->key = NULL;
    reg_free(g);
    return start_del(r, key, strlen(key), rev, lease, done, arg);
}

int registry_remove(registry *r, const char *name, const char *address, uint64_t owner_check,
                    pid_t pid, void (*done)(int err, void *arg), void *arg)
{
    struct reg *g = find(r, name, address);
    int rc;

    if (!g)
        return DA_ENOENT;
    if (owner_check != REG_OWNER_CONFIG && !may_take(g, owner_check, pid))
        return DA_EACCES;
    rc = delete_reg(r, g, done, arg);
    if (rc == 1 && done)
        done(0, arg);
    return rc == 1 ? 0 : rc;
}

void registry_remove_owner(registry *r, uint64_t owner)
{
    struct reg *g = r->regs, *next;

    for (; g; g = next) {
        next = g->next;
        if (g->owner == owner && owner != REG_OWNER_CONFIG)
            delete_reg(r, g, NULL, NULL);
    }
}

static void note_write(registry *r, const char *key, size_t klen, int64_t rev)
{
    size_t plen = strlen(r->prefix) + 1;
    const char *name = key + plen, *slash;
    struct wrote *w;

    if (klen <= plen || !(slash = memchr(name, '/', klen - plen)))
        return;
    for (w = r->wrote; w; w = w->next)
        if (strlen(w->name) == (size_t)(slash - name) && !memcmp(w->name, name, slash - name))
            break;
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || !(w->name = strndup(name, (size_t)(slash - name)))) {
            free(w);
            return;
        }
        w->next = r->wrote;
        r->wrote = w;
    }
    unsigned epoch = etcd_client_epoch(r->etcd);
    if (w->epoch != epoch) {
        w->epoch = epoch;
        w->rev = rev;
    } else if (rev > w->rev) {
        w->rev = rev;
    }
}

int64_t registry_written_revision(const registry *r, const char *name)
{
    /* A floor from before etcd's history restarted would never be
     * reached: every read would wait out etcd.timeout. */
    for (const struct wrote *w = r->wrote; w; w = w->next)
        if (!strcmp(w->name, name))
            return w->epoch == etcd_client_epoch(r->etcd) ? w->rev : 0;
    return 0;
}

void registry_forget(registry *r, void *arg)
{
    for (struct reg *g = r->regs; g; g = g->next)
        for (struct waiter **pp = &g->waiters; *pp;) {
            if ((*pp)->arg == arg) {
                struct waiter *w = *pp;
                *pp = w->next;
                free(w);
            } else {
                pp = &(*pp)->next;
            }
        }
    for (struct del *d = r->dels; d; d = d->next)
        if (d->arg == arg)
            d->done = NULL;
    for (struct reg *g = r->dying; g; g = g->next)
        if (g->del_arg == arg)
            g->del_done = NULL;
}

void registry_set_lease(registry *r, int64_t lease)
{
    r->lease = lease;
    for (struct reg *g = r->regs; g; g = g->next) {
        if (!lease && g->state == REG_REGISTERED)
            g->state = REG_PENDING;
        g->not_before = 0;
        backoff_reset(&g->backoff);
        kick(g);
    }
}

bool registry_settled(const registry *r)
{
    if (!r->lease)
        return r->n == 0;
    for (struct reg *g = r->regs; g; g = g->next)
        if (wanted(g) && (g->lease_written != r->lease || g->call || g->state != REG_REGISTERED))
            return false;
    return true;
}

size_t registry_count(const registry *r)
{
    return r->n;
}

void registry_foreach(const registry *r, void (*fn)(const struct reg_info *ri, void *arg),
                      void *arg)
{
    for (struct reg *g = r->regs; g; g = g->next) {
        struct reg_info ri = {&g->inst,       g->owner,   g->state,   g->error,
                              g->rev_written, g->healthy, g->drained, g->chk};
        fn(&ri, arg);
    }
}

void registry_stop(registry *r, void (*done)(void *arg), void *arg)
{
    r->shutting_down = true;
    r->shutdown_done = done;
    r->shutdown_arg = arg;
    uv_timer_stop(&r->timer);
    r->deleting++; /* held until every delete is started */
    /* Deletes still retrying from before now count too. */
    for (struct del *d = r->dels; d; d = d->next)
        if (!d->counted) {
            d->counted = true;
            r->deleting++;
            if (d->retry_at)
                send_del(d);
        }
    while (r->regs)
        delete_reg(r, r->regs, NULL, NULL);
    if (--r->deleting == 0 && r->shutdown_done) {
        r->shutdown_done = NULL;
        done(arg);
    }
}

static void closed(uv_handle_t *h)
{
    registry *r = h->data;

    free(r->prefix);
    free(r);
}

registry *registry_close(registry *r)
{
    if (!r)
        return NULL;
    while (r->regs) {
        struct reg *g = r->regs;
        r->regs = g->next;
        reg_free(g);
    }
    while (r->dels)
        del_free(r, r->dels);
    while (r->dying) {
        struct reg *g = r->dying;
        r->dying = g->next;
        reg_free(g);
    }
    while (r->wrote) {
        struct wrote *w = r->wrote;
        r->wrote = w->next;
        free(w->name);
        free(w);
    }
    uv_close((uv_handle_t *)&r->timer, closed);
    return NULL;
}
