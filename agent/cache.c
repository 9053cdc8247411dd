#include "cache.h"

#include <stdlib.h>
#include <string.h>

#include "cache_disk.h"
#include "defaults.h"
#include "error.h"
#include "etcd_parse.h"
#include "log.h"
#include "metrics.h"
#include "validate.h"

/* One key under the service's prefix, as etcd holds it. */
struct entry {
    char *suffix; /* the key after "<prefix>/<name>/" */
    size_t slen;
    char *value;
    size_t vlen;
    int64_t lease;
    bool valid; /* value parsed into inst */
    struct instance inst;
};

struct cache_sub {
    service *svc;
    cache_cb cb;
    void *arg;
    bool dead; /* unsubscribed while its service was notifying */
    struct cache_sub *next;
};

struct service {
    cache *c;
    char *name;
    char *key; /* "<prefix>/<name>/" */
    size_t klen;
    struct entry *entries; /* sorted by suffix */
    size_t n, cap;
    const struct instance **sorted; /* valid instances by address */
    size_t n_sorted;
    size_t skipped;
    int64_t revision;
    uint64_t updated; /* uv_now when its list last changed (for DNS TXT) */
    bool ready, stale, dirty;
    bool on_disk; /* its file is in cache.dir (loaded or saved) */
    etcd_watch *watch;
    uint64_t last_used;
    struct cache_sub *subs;
    size_t n_subs;
    int notifying;
    bool notify_pending;  /* queued for the next loop turn */
    uint64_t change_ns;   /* uv_hrtime() of the first change queued, for
                            * the delivery delay metric */
    uint64_t stale_since; /* uv_now() when it last became stale */
    struct service *notify_next;
    etcd_call *confirm; /* range read after a reconnect (see watch_cb) */
    /* The traffic policy (policy.h). Instances removed from entries since
     * the last change are moved to gone (stolen, not copied); while the
     * guard holds a drop, they stay in kept and are still served. */
    struct instance *gone, *kept;
    size_t n_gone, cap_gone, n_kept, cap_kept;
    const struct policy_protection *protection;
    struct policy_state pstate;
    struct policy_plan plan;
    bool fresh_read;    /* this change is a range read's (confirms a drop) */
    etcd_call *recheck; /* the read that confirms a held drop */
    void *derived;      /* see service_set_derived() */
    void (*derived_free)(void *derived);
    struct service *hnext; /* hash chain */
};

struct cache {
    uv_loop_t *loop;
    etcd_client *etcd;
    char *prefix;
    char *dir;
    uint64_t idle_ms, save_delay_ms;
    uint64_t started; /* uv_now when the cache was made */
    size_t n_files;   /* saved lists in dir, as of the last sweep */
    bool full_warned; /* "too many files" was logged since that sweep */
    struct service **buckets;
    size_t n_buckets, n_services;
    uv_timer_t save_timer;   /* coalesced disk writes */
    uv_timer_t idle_timer;   /* drops idle services */
    uv_timer_t notify_timer; /* runs queued notifications on the next turn */
    uv_timer_t policy_timer; /* held drops and thinning sizes that expire */
    const struct policy_config *policy;
    struct service *notify_head;
    int closing;
};

/* ---- entries ------------------------------------------------------------ */

static void entry_clear(struct entry *e)
{
    free(e->suffix);
    free(e->value);
    instance_clear(&e->inst);
    memset(e, 0, sizeof *e);
}

static int cmp_suffix(const char *a, size_t alen, const char *b, size_t blen)
{
    int r = memcmp(a, b, alen < blen ? alen : blen);
    return r ? r : (alen > blen) - (alen < blen);
}

/* Binary search: the index of suffix, or where it would go (*found false). */
static size_t entry_find(const service *s, const char *suffix, size_t slen, bool *found)
{
    size_t lo = 0, hi = s->n;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int r = cmp_suffix(s->entries[mid].suffix, s->entries[mid].slen, suffix, slen);
        if (r == 0) {
            *found = true;
            return mid;
        }
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static int entry_fill(struct entry *e, const char *value, size_t vlen, int64_t lease)
{
    char *v = malloc(vlen + 1);

    if (!v)
        return DA_ENOMEM;
    memcpy(v, value, vlen);
    v[vlen] = '\0';
    free(e->value);
    instance_clear(&e->inst);
    e->value = v;
    e->vlen = vlen;
    e->lease = lease;
    e->valid = instance_from_value(v, vlen, &e->inst) == 0;
    return 0;
}

static int entry_put(service *s, const char *suffix, size_t slen, const char *value, size_t vlen,
                     int64_t lease)
{
    bool found;
    size_t i = entry_find(s, suffix, slen, &found);

    if (!found) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 8;
            struct entry *e = realloc(s->entries, cap * sizeof *e);
            if (!e)
                return DA_ENOMEM;
            s->entries = e;
            s->cap = cap;
        }
        memmove(&s->entries[i + 1], &s->entries[i], (s->n - i) * sizeof *s->entries);
        memset(&s->entries[i], 0, sizeof s->entries[i]);
        s->n++;
        s->entries[i].suffix = malloc(slen + 1);
        if (!s->entries[i].suffix) {
            memmove(&s->entries[i], &s->entries[i + 1], (s->n - i - 1) * sizeof *s->entries);
            s->n--;
            return DA_ENOMEM;
        }
        memcpy(s->entries[i].suffix, suffix, slen);
        s->entries[i].suffix[slen] = '\0';
        s->entries[i].slen = slen;
    }
    return entry_fill(&s->entries[i], value, vlen, lease);
}

/* Moves a removed entry's instance to gone, for the guard (policy.h) to
 * keep or free at the change. Without memory, it is freed: that one
 * instance is then not protected. */
static void entry_gone(service *s, struct entry *e)
{
    if (!e->valid)
        return;
    if (s->n_gone == s->cap_gone) {
        size_t cap = s->cap_gone ? s->cap_gone * 2 : 8;
        struct instance *g = realloc(s->gone, cap * sizeof *g);
        if (!g)
            return;
        s->gone = g;
        s->cap_gone = cap;
    }
    s->gone[s->n_gone++] = e->inst;
    memset(&e->inst, 0, sizeof e->inst);
    e->valid = false;
}

static void entry_delete(service *s, const char *suffix, size_t slen)
{
    bool found;
    size_t i = entry_find(s, suffix, slen, &found);

    if (!found)
        return;
    entry_gone(s, &s->entries[i]);
    entry_clear(&s->entries[i]);
    memmove(&s->entries[i], &s->entries[i + 1], (s->n - i - 1) * sizeof *s->entries);
    s->n--;
}

static void entries_clear(service *s)
{
    for (size_t i = 0; i < s->n; i++)
        entry_clear(&s->entries[i]);
    s->n = 0;
}

/* Clears the entries and makes room for exactly n: a list read whole
 * (snapshot, confirming read) knows its size, and doubling from 8 left a
 * 10-instance service with room for 16 (1,000 such services: 0.7 MB). */
static void entries_reset(service *s, size_t n)
{
    for (size_t i = 0; i < s->n; i++)
        entry_gone(s, &s->entries[i]);
    entries_clear(s);
    if (n > 0 && n != s->cap) {
        struct entry *e = realloc(s->entries, n * sizeof *e);
        if (e) {
            s->entries = e;
            s->cap = n;
        }
    }
}

static int by_address(const void *a, const void *b)
{
    const struct instance *x = *(const struct instance *const *)a;
    const struct instance *y = *(const struct instance *const *)b;
    return strcmp(x->address, y->address);
}

/* Rebuilds the sorted view and the skipped count after a change. */
static void policy_tick(uv_timer_t *t);

/* The policy tick has work only while a service holds instances back or
 * has a recent size that will expire; it runs only then, so that an agent
 * at rest does not wake every second to walk every service (issue 18). */
static bool policy_pending(const service *s)
{
    return s->pstate.guard.held || policy_plan_decaying(&s->plan);
}

static void policy_arm(service *s)
{
    cache *c = s->c;

    if (policy_pending(s) && !uv_is_active((uv_handle_t *)&c->policy_timer)) {
        uv_timer_start(&c->policy_timer, policy_tick, 1000, 1000);
        uv_unref((uv_handle_t *)&c->policy_timer);
    }
}

static void rebuild(service *s)
{
    const struct instance **v = realloc(s->sorted, (s->n + s->n_kept + 1) * sizeof *v);
    size_t k = 0, bad = 0;

    if (!v)
        return; /* keep the old view; the next change tries again */
    s->sorted = v;
    for (size_t i = 0; i < s->n; i++) {
        if (s->entries[i].valid)
            v[k++] = &s->entries[i].inst;
        else
            bad++;
    }
    for (size_t i = 0; i < s->n_kept; i++)
        v[k++] = &s->kept[i];
    qsort(v, k, sizeof *v, by_address);
    s->n_sorted = k;
    if (policy_plan_build(s->c->policy, &s->pstate, v, k, uv_now(s->c->loop), &s->plan) == 0) {
        s->plan.protected_ = s->pstate.guard.held;
        s->plan.held = (uint32_t)s->n_kept;
        s->plan.held_since = s->pstate.guard.held_since;
        s->plan.hold_ms = s->protection ? s->protection->hold_ms : 0;
    }
    policy_arm(s);
    if (bad != s->skipped && bad > s->skipped)
        log_warn("cache: %s: %zu value(s) under %.*s are not service instances; skipped", s->name,
                 bad, (int)s->klen, s->key);
    s->skipped = bad;
}

/* ---- notifications ------------------------------------------------------ */

static void notify(service *s)
{
    struct cache_sub **pp;

    s->notifying++;
    for (struct cache_sub *sub = s->subs; sub; sub = sub->next)
        if (!sub->dead)
            sub->cb(s, sub->arg);
    s->notifying--;
    if (s->n_subs && s->change_ns)
        metrics_observe(&metrics.delivery_delay, metrics_since(s->change_ns, uv_hrtime()));
    s->change_ns = 0;
    if (s->notifying)
        return;
    /* Unsubscriptions made during the callbacks are finished now. */
    for (pp = &s->subs; *pp;) {
        if ((*pp)->dead) {
            struct cache_sub *d = *pp;
            *pp = d->next;
            free(d);
        } else {
            pp = &(*pp)->next;
        }
    }
}

static void save_service(service *s)
{
    struct etcd_kv *kvs;
    int rc;

    s->dirty = false;
    /* A service's first file would pass the cap: the sweeps make room as
     * files of services nobody follows grow old (see idle_check). */
    if (!s->on_disk && s->c->n_files >= CACHE_DISK_FILES) {
        if (!s->c->full_warned)
            log_warn("cache: %s holds %zu saved lists, the most it may; %s and other new "
                     "services are not saved until older ones are removed",
                     s->c->dir, s->c->n_files, s->name);
        s->c->full_warned = true;
        return;
    }
    kvs = calloc(s->n ? s->n : 1, sizeof *kvs);
    if (!kvs)
        return;
    for (size_t i = 0; i < s->n; i++) {
        kvs[i].key = s->entries[i].suffix;
        kvs[i].key_len = s->entries[i].slen;
        kvs[i].value = s->entries[i].value;
        kvs[i].value_len = s->entries[i].vlen;
        kvs[i].lease = s->entries[i].lease;
    }
    rc = cache_disk_save(s->c->dir, s->name, s->revision, kvs, s->n);
    if (rc < 0)
        log_warn("cache: cannot save %s in %s: %s", s->name, s->c->dir, da_strerror(rc));
    else if (!s->on_disk) {
        s->on_disk = true;
        s->c->n_files++;
    }
    free(kvs);
}

static void save_due(uv_timer_t *t)
{
    cache *c = t->data;

    for (size_t b = 0; b < c->n_buckets; b++)
        for (service *s = c->buckets[b]; s; s = s->hnext)
            if (s->dirty)
                save_service(s);
}

/* Subscribers hear of a service's changes once per loop turn, however
 * many watch responses the turn brought: a burst of a thousand changes
 * read in one go is one notification (each subscriber renders the whole
 * list, so per-event notifications stalled the loop for seconds). */
static void notify_due(uv_timer_t *t)
{
    cache *c = t->data;

    while (c->notify_head) {
        service *s = c->notify_head;
        c->notify_head = s->notify_next;
        s->notify_next = NULL;
        s->notify_pending = false;
        notify(s);
    }
}

static void drop_derived(service *s)
{
    void *d = s->derived;

    if (!d)
        return;
    s->derived = NULL;
    s->derived_free(d);
}

/* Every change of a service's list, revision, staleness or readiness comes
 * through here, so what users derived from the old list goes now, before
 * anyone (a resolve in this same turn) can be answered from it. */
static void schedule_notify(service *s)
{
    cache *c = s->c;

    drop_derived(s);
    if (s->notify_pending)
        return;
    s->notify_pending = true;
    s->change_ns = uv_hrtime();
    s->notify_next = c->notify_head;
    c->notify_head = s;
    if (!uv_is_active((uv_handle_t *)&c->notify_timer))
        uv_timer_start(&c->notify_timer, notify_due, 0, 0);
}

static void unschedule_notify(service *s)
{
    if (!s->notify_pending)
        return;
    for (service **pp = &s->c->notify_head; *pp; pp = &(*pp)->notify_next)
        if (*pp == s) {
            *pp = s->notify_next;
            break;
        }
    s->notify_pending = false;
}

/* ---- the guard (policy.h) ----------------------------------------------- */

static bool is_live(const service *s, const char *address)
{
    bool found;
    size_t i = entry_find(s, address, strlen(address), &found);

    return found && s->entries[i].valid;
}

static void kept_clear(service *s)
{
    for (size_t i = 0; i < s->n_kept; i++)
        instance_clear(&s->kept[i]);
    s->n_kept = 0;
}

static void gone_clear(service *s)
{
    for (size_t i = 0; i < s->n_gone; i++)
        instance_clear(&s->gone[i]);
    s->n_gone = 0;
}

/* Decides, at each change, whether the instances removed are still
 * served: the rule is policy_guard_check()'s. */
static void guard(service *s)
{
    struct policy_guard *g = &s->pstate.guard;
    uint32_t n_live = 0;
    bool was = g->held, fresh = s->fresh_read;
    enum policy_verdict v;

    s->fresh_read = false;
    for (size_t i = 0; i < s->n; i++)
        n_live += s->entries[i].valid;
    v = policy_guard_check(s->protection, g, n_live, fresh, uv_now(s->c->loop));
    if (v == POLICY_HOLD && !was)
        metrics.protection_holds++;
    if (v == POLICY_APPLY && was && n_live < g->base)
        metrics.protection_applied++;
    if (v == POLICY_APPLY) {
        if (was)
            log_info("cache: %s: protection released (%s); serving %u instance(s)", s->name,
                     n_live >= g->base ? "the instances are back"
                                       : "the drop persisted and a fresh read confirms it",
                     n_live);
        kept_clear(s);
        gone_clear(s);
        return;
    }
    /* Held: what came back is live again, what went is kept. */
    for (size_t i = 0; i < s->n_kept;) {
        if (is_live(s, s->kept[i].address)) {
            instance_clear(&s->kept[i]);
            s->kept[i] = s->kept[--s->n_kept];
        } else {
            i++;
        }
    }
    for (size_t i = 0; i < s->n_gone; i++) {
        struct instance *in = &s->gone[i];
        bool dup = is_live(s, in->address);
        for (size_t k = 0; !dup && k < s->n_kept; k++)
            dup = !strcmp(s->kept[k].address, in->address);
        if (!dup && s->n_kept == s->cap_kept) {
            size_t cap = s->cap_kept ? s->cap_kept * 2 : 8;
            struct instance *nk = realloc(s->kept, cap * sizeof *nk);
            if (nk) {
                s->kept = nk;
                s->cap_kept = cap;
            } else {
                dup = true; /* no memory: this one goes */
            }
        }
        if (dup)
            instance_clear(in);
        else
            s->kept[s->n_kept++] = *in;
    }
    s->n_gone = 0;
    if (!was)
        log_warn("cache: %s: %u of %u instance(s) gone at once; holding the last list for %llu "
                 "ms (traffic.protection)",
                 s->name, g->base - (n_live < g->base ? n_live : g->base), g->base,
                 (unsigned long long)s->protection->hold_ms);
}

static void changed(service *s)
{
    cache *c = s->c;

    s->updated = uv_now(c->loop);
    guard(s);
    rebuild(s);
    if (c->dir) {
        s->dirty = true;
        if (!uv_is_active((uv_handle_t *)&c->save_timer))
            uv_timer_start(&c->save_timer, save_due, c->save_delay_ms, 0);
    }
    schedule_notify(s);
}

/* ---- the watch ---------------------------------------------------------- */

static void confirmed(int err, const struct etcd_result *r, void *arg)
{
    service *s = arg;

    s->confirm = NULL;
    if (err)
        return; /* still stale; the watch reports when it is down again */
    s->fresh_read = true;
    if (r->revision > s->revision) {
        entries_reset(s, r->n_kvs);
        for (size_t i = 0; i < r->n_kvs; i++) {
            const struct etcd_kv *kv = &r->kvs[i];
            if (kv->key_len > s->klen)
                entry_put(s, kv->key + s->klen, kv->key_len - s->klen, kv->value, kv->value_len,
                          kv->lease);
        }
        s->revision = r->revision;
    }
    s->stale = false;
    changed(s);
}

static void confirm(service *s)
{
    char end[1024];
    size_t elen;

    if (s->confirm || s->klen >= sizeof end)
        return;
    elen = etcd_prefix_end(s->key, s->klen, end);
    if (etcd_range(s->c->etcd, s->key, s->klen, end, elen, 0, 0, confirmed, s, &s->confirm) < 0)
        s->confirm = NULL;
}

static void watch_cb(etcd_watch *w, const struct etcd_watch_update *u, void *arg)
{
    service *s = arg;
    size_t i;

    (void)w;
    switch (u->kind) {
    case ETCD_WATCH_SNAPSHOT:
        entries_reset(s, u->n_kvs);
        for (i = 0; i < u->n_kvs; i++) {
            const struct etcd_kv *kv = &u->kvs[i];
            if (kv->key_len <= s->klen)
                continue;
            entry_put(s, kv->key + s->klen, kv->key_len - s->klen, kv->value, kv->value_len,
                      kv->lease);
        }
        s->revision = u->revision;
        s->ready = true;
        s->stale = false;
        changed(s);
        break;
    case ETCD_WATCH_EVENTS:
        if (u->revision <= s->revision && s->ready)
            break; /* a confirming range read showed these already */
        for (i = 0; i < u->n_events; i++) {
            const struct etcd_kv *kv = &u->events[i].kv;
            if (kv->key_len <= s->klen || kv->mod_revision <= s->revision)
                continue;
            if (u->events[i].type == ETCD_EVENT_PUT)
                entry_put(s, kv->key + s->klen, kv->key_len - s->klen, kv->value, kv->value_len,
                          kv->lease);
            else
                entry_delete(s, kv->key + s->klen, kv->key_len - s->klen);
        }
        s->revision = u->revision;
        s->stale = false;
        changed(s);
        break;
    case ETCD_WATCH_DOWN:
        if (!s->stale) {
            s->stale = true;
            s->stale_since = uv_now(s->c->loop);
            log_debug("cache: %s is stale: %s", s->name, da_strerror(u->err));
            schedule_notify(s);
        }
        break;
    case ETCD_WATCH_UP:
        /* The stream is back, but etcd sends the changes we missed (or a
         * compaction notice) only after it: the list is not live until it
         * has caught up with the revision etcd had when the stream came
         * back. A range read tells that at once. */
        if (s->stale && s->ready) {
            if (u->revision > 0 && s->revision >= u->revision) {
                s->stale = false;
                schedule_notify(s);
            } else {
                confirm(s);
            }
        }
        break;
    }
}

/* A held drop's hold is over: read the range again, and let the guard
 * decide on what etcd says now. */
static void rechecked(int err, const struct etcd_result *r, void *arg)
{
    service *s = arg;

    s->recheck = NULL;
    if (err)
        return; /* etcd away: the hold goes on; the next tick tries again */
    if (r->revision > s->revision) {
        entries_reset(s, r->n_kvs);
        for (size_t i = 0; i < r->n_kvs; i++) {
            const struct etcd_kv *kv = &r->kvs[i];
            if (kv->key_len > s->klen)
                entry_put(s, kv->key + s->klen, kv->key_len - s->klen, kv->value, kv->value_len,
                          kv->lease);
        }
        s->revision = r->revision;
    }
    s->fresh_read = true;
    changed(s);
}

static void policy_tick_service(service *s, void *arg)
{
    uint64_t now = uv_now(s->c->loop);
    char end[1024];
    size_t elen;

    (void)arg;
    if (policy_guard_due(s->protection, &s->pstate.guard, now) && !s->recheck &&
        s->klen < sizeof end) {
        elen = etcd_prefix_end(s->key, s->klen, end);
        if (etcd_range(s->c->etcd, s->key, s->klen, end, elen, 0, 0, rechecked, s, &s->recheck) < 0)
            s->recheck = NULL;
    }
    /* A recent size past its window: the loads may change with no event. */
    if (s->ready && policy_plan_decaying(&s->plan)) {
        double before[POLICY_RANKS];
        memcpy(before, s->plan.load, sizeof before);
        rebuild(s);
        if (memcmp(before, s->plan.load, sizeof before))
            schedule_notify(s);
    }
}

/* ---- services ----------------------------------------------------------- */

/* The same hash names the service's file, so that a sweep of cache.dir
 * finds whether a file's service is followed in the file's bucket. */
static uint64_t hash(const char *s)
{
    return cache_disk_hash(s);
}

static service *lookup(cache *c, const char *name)
{
    for (service *s = c->buckets[hash(name) & (c->n_buckets - 1)]; s; s = s->hnext)
        if (!strcmp(s->name, name))
            return s;
    return NULL;
}

static void grow(cache *c)
{
    size_t n = c->n_buckets * 2;
    struct service **b = calloc(n, sizeof *b);

    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->n_buckets; i++) {
        for (service *s = c->buckets[i], *next; s; s = next) {
            next = s->hnext;
            s->hnext = b[hash(s->name) & (n - 1)];
            b[hash(s->name) & (n - 1)] = s;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->n_buckets = n;
}

static void load_from_disk(service *s)
{
    struct etcd_kv *kvs;
    size_t n;
    int64_t rev;
    int rc;

    if (!s->c->dir)
        return;
    rc = cache_disk_load(s->c->dir, s->name, &rev, &kvs, &n);
    if (rc == -ENOENT)
        return;
    if (rc < 0) {
        log_warn("cache: ignoring the saved list of %s: %s", s->name, da_strerror(rc));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        entry_put(s, kvs[i].key, kvs[i].key_len, kvs[i].value, kvs[i].value_len, kvs[i].lease);
        etcd_kv_clear(&kvs[i]);
    }
    free(kvs);
    s->on_disk = true;
    s->revision = rev;
    s->ready = true;
    s->stale = true;
    s->updated = uv_now(s->c->loop);
    rebuild(s);
    log_info("cache: %s: serving %zu saved instance(s) at revision %lld until etcd answers",
             s->name, s->n_sorted, (long long)rev);
}

static void service_free(service *s)
{
    unschedule_notify(s);
    drop_derived(s);
    etcd_call_cancel(s->confirm);
    etcd_call_cancel(s->recheck);
    etcd_watch_close(s->watch);
    entries_clear(s);
    kept_clear(s);
    gone_clear(s);
    free(s->kept);
    free(s->gone);
    policy_plan_clear(&s->plan);
    free(s->entries);
    free(s->sorted);
    while (s->subs) {
        struct cache_sub *d = s->subs;
        s->subs = d->next;
        free(d);
    }
    free(s->name);
    free(s->key);
    free(s);
}

service *cache_get(cache *c, const char *name, int *err)
{
    service *s;
    char end[1024];
    size_t elen;
    int rc;

    *err = 0;
    if (!validate_name(name, NULL, 0)) {
        *err = DA_EINVAL;
        return NULL;
    }
    s = lookup(c, name);
    if (s) {
        s->last_used = uv_now(c->loop);
        return s;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    s->c = c;
    s->name = strdup(name);
    s->klen = strlen(c->prefix) + strlen(name) + 2;
    s->key = malloc(s->klen + 1);
    if (!s->name || !s->key || s->klen >= sizeof end)
        goto nomem;
    snprintf(s->key, s->klen + 1, "%s/%s/", c->prefix, name);
    s->stale = true;
    s->protection = policy_protection_of(c->policy, name);
    policy_plan_clear(&s->plan);
    s->stale_since = s->last_used = uv_now(c->loop);
    load_from_disk(s);
    elen = etcd_prefix_end(s->key, s->klen, end);
    rc = etcd_watch_start(c->etcd, s->key, s->klen, end, elen, 0, watch_cb, s, &s->watch);
    if (rc < 0) {
        *err = rc;
        service_free(s);
        return NULL;
    }
    if (c->n_services + 1 > c->n_buckets * 2)
        grow(c);
    size_t b = hash(name) & (c->n_buckets - 1);
    s->hnext = c->buckets[b];
    c->buckets[b] = s;
    c->n_services++;
    return s;
nomem:
    if (s) {
        free(s->name);
        free(s->key);
        free(s);
    }
    *err = DA_ENOMEM;
    return NULL;
}

cache_sub *cache_subscribe(service *svc, cache_cb cb, void *arg)
{
    cache_sub *sub = calloc(1, sizeof *sub);

    if (!sub)
        return NULL;
    sub->svc = svc;
    sub->cb = cb;
    sub->arg = arg;
    sub->next = svc->subs;
    svc->subs = sub;
    svc->n_subs++;
    svc->last_used = uv_now(svc->c->loop);
    return sub;
}

void cache_unsubscribe(cache_sub *sub)
{
    service *s;
    struct cache_sub **pp;

    if (!sub || sub->dead)
        return;
    s = sub->svc;
    s->n_subs--;
    s->last_used = uv_now(s->c->loop);
    if (s->notifying) {
        sub->dead = true;
        return;
    }
    for (pp = &s->subs; *pp && *pp != sub; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = sub->next;
    free(sub);
}

static bool followed(uint64_t h, void *arg)
{
    cache *c = arg;

    for (service *s = c->buckets[h & (c->n_buckets - 1)]; s; s = s->hnext)
        if (hash(s->name) == h)
            return true;
    return false;
}

/* Files of services this process does not follow: those not written for
 * idle_ms go, once the process itself has run that long (so a restart
 * after a long outage, etcd still down, serves every list its clients ask
 * for in time), and beyond CACHE_DISK_FILES the oldest go at once. A
 * sweep reads only the folder and unlinks; it opens no file. */
static void sweep(cache *c)
{
    uint64_t now = uv_now(c->loop);
    int rc;

    rc = cache_disk_sweep(c->dir, now - c->started >= c->idle_ms ? c->idle_ms : 0, CACHE_DISK_FILES,
                          followed, c, &c->n_files);
    if (rc < 0)
        log_debug("cache: cannot sweep %s: %s", c->dir, da_strerror(rc));
    if (c->n_files < CACHE_DISK_FILES)
        c->full_warned = false;
}

/* Drops services that nobody subscribes to and nobody asked about for
 * idle_ms; their files go too, so a restart does not serve them. */
static void idle_check(uv_timer_t *t)
{
    cache *c = t->data;
    uint64_t now = uv_now(c->loop);

    for (size_t b = 0; b < c->n_buckets; b++) {
        for (service **pp = &c->buckets[b]; *pp;) {
            service *s = *pp;
            if (s->n_subs == 0 && !s->notifying && !s->notify_pending &&
                now - s->last_used >= c->idle_ms) {
                log_info("cache: dropping %s: unused for %llu s", s->name,
                         (unsigned long long)(now - s->last_used) / 1000);
                *pp = s->hnext;
                c->n_services--;
                if (c->dir)
                    cache_disk_remove(c->dir, s->name);
                if (s->on_disk && c->n_files)
                    c->n_files--;
                service_free(s);
            } else {
                pp = &s->hnext;
            }
        }
    }
    if (c->dir)
        sweep(c);
}

/* ---- accessors ---------------------------------------------------------- */

const char *service_name(const service *s)
{
    return s->name;
}
int64_t service_revision(const service *s)
{
    return s->revision;
}
bool service_ready(const service *s)
{
    return s->ready;
}
bool service_stale(const service *s)
{
    return s->stale;
}
uint64_t service_updated(const service *s)
{
    return s->updated;
}
uint64_t service_stale_since(const service *s)
{
    return s->stale ? s->stale_since : 0;
}
size_t service_skipped(const service *s)
{
    return s->skipped;
}
size_t service_subscribers(const service *s)
{
    return s->n_subs;
}
void *service_derived(const service *s)
{
    return s->derived;
}
const struct policy_plan *service_plan(const service *s)
{
    return &s->plan;
}
const struct policy_guard *service_guard(const service *s)
{
    return &s->pstate.guard;
}

void service_set_derived(service *s, void *derived, void (*free_fn)(void *derived))
{
    drop_derived(s);
    s->derived = derived;
    s->derived_free = free_fn;
}

const struct instance *const *service_instances(const service *s, size_t *n)
{
    *n = s->n_sorted;
    return s->sorted;
}

bool service_entry(const service *s, const char *address, const char **value, size_t *vlen,
                   int64_t *lease)
{
    bool found;
    size_t i = entry_find(s, address, strlen(address), &found);

    if (!found)
        return false;
    *value = s->entries[i].value;
    *vlen = s->entries[i].vlen;
    *lease = s->entries[i].lease;
    return true;
}

void cache_foreach(cache *c, void (*fn)(service *svc, void *arg), void *arg)
{
    for (size_t b = 0; b < c->n_buckets; b++)
        for (service *s = c->buckets[b], *next; s; s = next) {
            next = s->hnext;
            fn(s, arg);
        }
}

size_t cache_skipped_total(const cache *c)
{
    size_t n = 0;

    for (size_t b = 0; b < c->n_buckets; b++)
        for (service *s = c->buckets[b]; s; s = s->hnext)
            n += s->skipped;
    return n;
}

static void policy_tick_pending(service *s, void *arg)
{
    *(bool *)arg |= policy_pending(s);
}

static void policy_tick(uv_timer_t *t)
{
    bool pending = false;

    cache_foreach(t->data, policy_tick_service, NULL);
    cache_foreach(t->data, policy_tick_pending, &pending);
    if (!pending)
        uv_timer_stop(t); /* policy_arm() starts it again */
}

/* ---- lifetime ----------------------------------------------------------- */

int cache_new(cache **out, uv_loop_t *loop, etcd_client *etcd, const struct cache_options *o)
{
    cache *c = calloc(1, sizeof *c);
    uint64_t every;

    if (!c)
        return DA_ENOMEM;
    c->loop = loop;
    c->etcd = etcd;
    c->started = uv_now(loop);
    c->idle_ms = o->idle_ms ? o->idle_ms : DA_DEFAULT_CACHE_IDLE_MS;
    c->save_delay_ms = o->save_delay_ms ? o->save_delay_ms : 200;
    c->policy = o->policy;
    c->n_buckets = 64;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    c->prefix = strdup(o->prefix ? o->prefix : DA_DEFAULT_ETCD_PREFIX);
    c->dir = o->dir ? strdup(o->dir) : NULL;
    if (!c->buckets || !c->prefix || (o->dir && !c->dir)) {
        free(c->buckets);
        free(c->prefix);
        free(c->dir);
        free(c);
        return DA_ENOMEM;
    }
    if (c->dir) {
        int rc = cache_disk_prepare(c->dir);
        if (rc < 0)
            log_warn("cache: cannot create %s: %s; lists will not survive a restart", c->dir,
                     da_strerror(rc));
        else
            sweep(c);
    }
    uv_timer_init(loop, &c->save_timer);
    uv_timer_init(loop, &c->idle_timer);
    uv_timer_init(loop, &c->notify_timer);
    uv_timer_init(loop, &c->policy_timer);
    c->policy_timer.data = c;
    c->save_timer.data = c;
    c->idle_timer.data = c;
    c->notify_timer.data = c;
    every = c->idle_ms / 4 > 1000 ? c->idle_ms / 4 : 1000;
    uv_timer_start(&c->idle_timer, idle_check, every, every);
    /* The idle check alone must not keep the loop alive. */
    uv_unref((uv_handle_t *)&c->idle_timer);
    /* Once a second while some service needs it (policy_arm): holds whose
     * time is over, recent sizes that expire. */
    uv_unref((uv_handle_t *)&c->policy_timer);
    *out = c;
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    cache *c = h->data;

    if (++c->closing == 4)
        free(c);
}

cache *cache_close(cache *c)
{
    if (!c)
        return NULL;
    /* Pending writes go to disk now: they are the lists a restart serves. */
    if (c->dir)
        save_due(&c->save_timer);
    for (size_t b = 0; b < c->n_buckets; b++)
        for (service *s = c->buckets[b], *next; s; s = next) {
            next = s->hnext;
            service_free(s);
        }
    free(c->buckets);
    free(c->prefix);
    free(c->dir);
    c->notify_head = NULL;
    uv_close((uv_handle_t *)&c->save_timer, timer_closed);
    uv_close((uv_handle_t *)&c->idle_timer, timer_closed);
    uv_close((uv_handle_t *)&c->notify_timer, timer_closed);
    uv_close((uv_handle_t *)&c->policy_timer, timer_closed);
    return NULL;
}
