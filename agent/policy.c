/* The traffic policy's rules: see policy.h and docs/traffic.md. */
#include "policy.h"

#include <stdlib.h>
#include <string.h>

#include "defaults.h"
#include "error.h"

/* ---- settings ----------------------------------------------------------- */

void policy_config_defaults(struct policy_config *p)
{
    memset(p, 0, sizeof *p);
    p->overprovisioning = DA_DEFAULT_TRAFFIC_OVERPROVISIONING;
    p->size_window_ms = DA_DEFAULT_TRAFFIC_SIZE_WINDOW_MS;
    p->protection.enabled = DA_DEFAULT_PROTECTION_ENABLED;
    p->protection.max_drop = DA_DEFAULT_PROTECTION_MAX_DROP;
    p->protection.hold_ms = DA_DEFAULT_PROTECTION_HOLD_MS;
    p->protection.window_ms = DA_DEFAULT_PROTECTION_WINDOW_MS;
    p->protection.min_instances = DA_DEFAULT_PROTECTION_MIN_INSTANCES;
}

void policy_config_clear(struct policy_config *p)
{
    free(p->zone);
    free(p->region);
    for (size_t i = 0; p->services && i < p->n_services; i++)
        free(p->services[i].name);
    free(p->services);
    p->zone = p->region = NULL;
    p->services = NULL;
    p->n_services = 0;
}

static const struct policy_service *service_of(const struct policy_config *p, const char *name)
{
    for (size_t i = 0; p && name && i < p->n_services; i++)
        if (!strcmp(p->services[i].name, name))
            return &p->services[i];
    return NULL;
}

const struct policy_protection *policy_protection_of(const struct policy_config *p,
                                                     const char *name)
{
    static struct policy_protection defaults = {
        DA_DEFAULT_PROTECTION_ENABLED, DA_DEFAULT_PROTECTION_MAX_DROP,
        DA_DEFAULT_PROTECTION_HOLD_MS, DA_DEFAULT_PROTECTION_WINDOW_MS,
        DA_DEFAULT_PROTECTION_MIN_INSTANCES};
    const struct policy_service *s = service_of(p, name);

    return s ? &s->protection : p ? &p->protection : &defaults;
}

const struct policy_outlier *policy_outlier_of(const struct policy_config *p, const char *name)
{
    const struct policy_service *s = service_of(p, name);

    return s && s->outlier.set ? &s->outlier : NULL;
}

void policy_outlier_defaults(struct policy_outlier *o)
{
    if (!o->interval_ms)
        o->interval_ms = DA_DEFAULT_OUTLIER_INTERVAL_MS;
    if (!o->base_ejection_ms)
        o->base_ejection_ms = DA_DEFAULT_OUTLIER_BASE_EJECTION_MS;
    if (!o->max_ejection_ms)
        o->max_ejection_ms = DA_DEFAULT_OUTLIER_MAX_EJECTION_MS;
    if (!o->max_ejection_percent)
        o->max_ejection_percent = DA_DEFAULT_OUTLIER_MAX_EJECTION_PERCENT;
    if (o->success_rate) {
        if (!o->sr_stdev_factor)
            o->sr_stdev_factor = DA_DEFAULT_OUTLIER_SR_STDEV_FACTOR;
        if (!o->sr_enforcement)
            o->sr_enforcement = DA_DEFAULT_OUTLIER_SR_ENFORCEMENT;
        if (!o->sr_minimum_hosts)
            o->sr_minimum_hosts = DA_DEFAULT_OUTLIER_SR_MINIMUM_HOSTS;
        if (!o->sr_request_volume)
            o->sr_request_volume = DA_DEFAULT_OUTLIER_SR_REQUEST_VOLUME;
    }
    if (o->failure_percentage) {
        if (!o->fp_threshold)
            o->fp_threshold = DA_DEFAULT_OUTLIER_FP_THRESHOLD;
        if (!o->fp_enforcement)
            o->fp_enforcement = DA_DEFAULT_OUTLIER_FP_ENFORCEMENT;
        if (!o->fp_minimum_hosts)
            o->fp_minimum_hosts = DA_DEFAULT_OUTLIER_FP_MINIMUM_HOSTS;
        if (!o->fp_request_volume)
            o->fp_request_volume = DA_DEFAULT_OUTLIER_FP_REQUEST_VOLUME;
    }
}

/* ---- zones -------------------------------------------------------------- */

const char *policy_meta(const struct instance *i, const char *key)
{
    for (size_t k = 0; k < i->n_meta; k++)
        if (!strcmp(i->meta[k].key, key))
            return i->meta[k].value;
    return NULL;
}

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(((const struct instance_meta *)a)->key, ((const struct instance_meta *)b)->key);
}

const struct instance *policy_localize(const struct policy_config *p, const struct instance *in,
                                       struct instance *out, struct instance_meta *meta)
{
    size_t n = in->n_meta;

    *out = *in;
    if (!p || (!p->zone && !p->region))
        return in;
    memcpy(meta, in->meta, n * sizeof *meta);
    if (p->zone && !policy_meta(in, POLICY_META_ZONE))
        meta[n++] = (struct instance_meta){(char *)POLICY_META_ZONE, p->zone};
    if (p->region && !policy_meta(in, POLICY_META_REGION))
        meta[n++] = (struct instance_meta){(char *)POLICY_META_REGION, p->region};
    qsort(meta, n, sizeof *meta, meta_cmp);
    out->meta = meta;
    out->n_meta = n;
    return out;
}

static bool same(const char *a, const char *b)
{
    return a && b && *a && !strcmp(a, b);
}

int policy_rank(const struct policy_config *p, const struct instance *i)
{
    const char *zone, *region;

    if (!p || !p->zone)
        return 0;
    zone = policy_meta(i, POLICY_META_ZONE);
    region = policy_meta(i, POLICY_META_REGION);
    /* A zone name is only unique within its region: when both sides say
     * their region, it must match too. */
    if (same(zone, p->zone) && (!region || !p->region || !strcmp(region, p->region)))
        return 0;
    if (same(region, p->region))
        return 1;
    /* Other regions, and instances that say nothing (the Go design's):
     * we cannot tell they are near, so they are the last resort. */
    return 2;
}

/* ---- thinning ----------------------------------------------------------- */

/* Small helpers rather than libm, which the daemon does not link. */
static double dmin(double a, double b)
{
    return a < b ? a : b;
}

static long to_thousandths(double x)
{
    return (long)(x * 1000 + 0.5);
}

void policy_loads(double overprovisioning, const uint32_t count[POLICY_RANKS],
                  const uint32_t recent[POLICY_RANKS], double load[POLICY_RANKS])
{
    double left = 1, total = 0;

    for (int r = 0; r < POLICY_RANKS; r++) {
        double health = 0;
        if (count[r] && recent[r])
            health = dmin(1, overprovisioning * count[r] /
                                 (recent[r] > count[r] ? recent[r] : count[r]));
        load[r] = dmin(health, left);
        left -= load[r];
        total += load[r];
    }
    /* Every rank degraded: Envoy spreads the whole load by relative
     * health rather than drop what no rank can take. */
    if (total > 0 && total < 1)
        for (int r = 0; r < POLICY_RANKS; r++)
            load[r] /= total;
}

void policy_priorities(const uint32_t count[POLICY_RANKS], const double load[POLICY_RANKS],
                       int prio[POLICY_RANKS])
{
    int next = 1;

    for (int r = 0; r < POLICY_RANKS; r++)
        prio[r] = !count[r] ? -1 : load[r] > 0 ? 0 : next++;
}

/* ---- the guard ---------------------------------------------------------- */

static bool is_drop(const struct policy_protection *p, uint32_t base, uint32_t n)
{
    /* One or two instances going, even all of them, is what a scale-down
     * or a redeploy of a small service looks like; holding them would
     * send calls to servers that said goodbye. */
    return base > 0 && base >= p->min_instances &&
           (n == 0 || (double)(base - (n < base ? n : base)) > p->max_drop * base);
}

enum policy_verdict policy_guard_check(const struct policy_protection *p, struct policy_guard *g,
                                       uint32_t n_live, bool confirmed, uint64_t now)
{
    enum policy_verdict v = POLICY_APPLY;

    if (!p || !p->enabled) {
        g->held = false;
        g->base = g->last = n_live;
        g->base_at = now;
        return POLICY_APPLY;
    }
    if (!g->held) {
        /* The base is the largest size within the window: removals
         * spread over more than the window are separate drops, each
         * measured from the size just before it. */
        if (n_live >= g->base) {
            g->base = n_live;
            g->base_at = now;
        } else if (now - g->base_at >= p->window_ms) {
            g->base = g->last;
            g->base_at = now;
        }
    }
    if (is_drop(p, g->base, n_live)) {
        if (!g->held) {
            g->held = true;
            g->held_since = now;
            g->holds++;
            v = POLICY_HOLD;
        } else if (confirmed && now - g->held_since >= p->hold_ms) {
            g->held = false; /* persisted, and etcd says so: apply */
            g->released++;
            g->base = n_live;
            g->base_at = now;
        } else {
            v = POLICY_HOLD;
        }
    } else if (g->held) {
        g->held = false; /* healed: the instances are back */
        if (n_live > g->base)
            g->base = n_live;
    }
    g->last = n_live;
    return v;
}

bool policy_guard_due(const struct policy_protection *p, const struct policy_guard *g, uint64_t now)
{
    return p && g->held && now - g->held_since >= p->hold_ms;
}

/* ---- plans -------------------------------------------------------------- */

void policy_plan_clear(struct policy_plan *plan)
{
    free(plan->rank);
    memset(plan, 0, sizeof *plan);
    for (int r = 0; r < POLICY_RANKS; r++)
        plan->prio[r] = -1;
}

int policy_plan_build(const struct policy_config *p, struct policy_state *st,
                      const struct instance *const *v, size_t n, uint64_t now,
                      struct policy_plan *plan)
{
    uint64_t window = p ? p->size_window_ms : DA_DEFAULT_TRAFFIC_SIZE_WINDOW_MS;

    policy_plan_clear(plan);
    if (!(plan->rank = malloc(n ? n : 1)))
        return DA_ENOMEM;
    plan->n = n;
    plan->zoned = p && p->zone;
    for (size_t i = 0; i < n; i++) {
        plan->rank[i] = (uint8_t)policy_rank(p, v[i]);
        plan->count[plan->rank[i]]++;
    }
    for (int r = 0; r < POLICY_RANKS; r++) {
        /* A rank's recent size: its largest within the window, so that
         * losing instances thins it and their return restores it. */
        if (plan->count[r] >= st->peak[r] || now - st->peak_at[r] >= window) {
            st->peak[r] = plan->count[r];
            st->peak_at[r] = now;
        }
        plan->recent[r] = st->peak[r];
    }
    policy_loads(p ? p->overprovisioning : DA_DEFAULT_TRAFFIC_OVERPROVISIONING, plan->count,
                 plan->recent, plan->load);
    policy_priorities(plan->count, plan->load, plan->prio);
    return 0;
}

bool policy_plan_decaying(const struct policy_plan *plan)
{
    for (int r = 0; r < POLICY_RANKS; r++)
        if (plan->recent[r] > plan->count[r])
            return true;
    return false;
}

void policy_plan_subset(const struct policy_plan *plan, const bool *sel, double load[POLICY_RANKS],
                        int prio[POLICY_RANKS])
{
    uint32_t count[POLICY_RANKS] = {0};
    double total = 0;

    for (size_t i = 0; i < plan->n; i++)
        if (!sel || sel[i])
            count[plan->rank[i]]++;
    for (int r = 0; r < POLICY_RANKS; r++) {
        load[r] = count[r] ? plan->load[r] : 0;
        total += load[r];
    }
    if (total > 0) {
        for (int r = 0; r < POLICY_RANKS; r++)
            load[r] /= total;
    } else {
        /* The loaded ranks have none of the subset: the first rank that
         * has takes it all, as priority failover would. */
        for (int r = 0; r < POLICY_RANKS; r++)
            if (count[r]) {
                load[r] = 1;
                break;
            }
    }
    policy_priorities(count, load, prio);
}

void policy_weights(const struct policy_plan *plan, const struct instance *const *v,
                    const bool *sel, uint32_t *out)
{
    double load[POLICY_RANKS], sum[POLICY_RANKS] = {0};
    int prio[POLICY_RANKS], loaded = 0;

    policy_plan_subset(plan, sel, load, prio);
    for (int r = 0; r < POLICY_RANKS; r++)
        loaded += load[r] > 0;
    for (size_t i = 0; i < plan->n; i++)
        if (!sel || sel[i])
            sum[plan->rank[i]] += instance_weight(v[i]);
    for (size_t i = 0; i < plan->n; i++) {
        int r = plan->rank[i];
        out[i] = 0;
        if ((sel && !sel[i]) || load[r] <= 0)
            continue;
        if (loaded == 1) {
            out[i] = (uint32_t)instance_weight(v[i]);
        } else {
            double share = load[r] * instance_weight(v[i]) / sum[r];
            long w = to_thousandths(share);
            out[i] = w > 0 ? (uint32_t)w : 1;
        }
    }
}

/* ---- JSON --------------------------------------------------------------- */

json_t *policy_plan_json(const struct policy_plan *plan, const struct policy_config *p)
{
    json_t *o = json_object(), *loads = json_array(), *prios = json_array(), *recent = json_array(),
           *count = json_array();

    for (int r = 0; r < POLICY_RANKS; r++) {
        /* Three decimals: what a reader compares, without float noise. */
        json_array_append_new(loads, json_real(to_thousandths(plan->load[r]) / 1000.0));
        json_array_append_new(prios, json_integer(plan->prio[r]));
        json_array_append_new(recent, json_integer(plan->recent[r]));
        json_array_append_new(count, json_integer(plan->count[r]));
    }
    json_object_set_new(o, "zone", p && p->zone ? json_string(p->zone) : json_null());
    json_object_set_new(o, "region", p && p->region ? json_string(p->region) : json_null());
    json_object_set_new(o, "instances", count);
    json_object_set_new(o, "recent", recent);
    json_object_set_new(o, "loads", loads);
    json_object_set_new(o, "priorities", prios);
    json_object_set_new(o, "protected", json_boolean(plan->protected_));
    if (plan->protected_) {
        json_object_set_new(o, "held", json_integer(plan->held));
        json_object_set_new(o, "hold_ms", json_integer((json_int_t)plan->hold_ms));
    }
    return o;
}

json_t *policy_outlier_json(const struct policy_outlier *o)
{
    json_t *j;

    if (!o || !o->set)
        return NULL;
    j = json_pack("{s:I, s:I, s:I, s:i}", "interval_ms", (json_int_t)o->interval_ms,
                  "base_ejection_time_ms", (json_int_t)o->base_ejection_ms, "max_ejection_time_ms",
                  (json_int_t)o->max_ejection_ms, "max_ejection_percent",
                  (int)o->max_ejection_percent);
    if (j && o->success_rate)
        json_object_set_new(
            j, "success_rate",
            json_pack("{s:i, s:i, s:i, s:i}", "stdev_factor", (int)o->sr_stdev_factor,
                      "enforcement_percentage", (int)o->sr_enforcement, "minimum_hosts",
                      (int)o->sr_minimum_hosts, "request_volume", (int)o->sr_request_volume));
    if (j && o->failure_percentage)
        json_object_set_new(j, "failure_percentage",
                            json_pack("{s:i, s:i, s:i, s:i}", "threshold", (int)o->fp_threshold,
                                      "enforcement_percentage", (int)o->fp_enforcement,
                                      "minimum_hosts", (int)o->fp_minimum_hosts, "request_volume",
                                      (int)o->fp_request_volume));
    return j;
}
