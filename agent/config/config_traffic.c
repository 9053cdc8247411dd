/* The locality: and traffic: sections: this host's zone and region, and
 * the traffic policy (policy.h, docs/traffic.md). Defaults are
 * defaults.h's, filled by policy_config_defaults() before any file is
 * read. */
#include "config_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "validate.h"

/* A zone or region: what a DNS label may hold, and dots. It travels in
 * instance metadata and in xDS localities, so it is kept plain. */
static bool locality_valid(const char *s)
{
    size_t n = strlen(s);

    if (!n || n > POLICY_LOCALITY_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

static const char *const locality_keys[] = {"zone", "region"};

int config__load_locality(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(locality_keys)] = {NULL};
    struct policy_config *p = &ld->cfg->traffic;
    int r = config__want_map(ld, "locality", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        int key = config__section_key(ld, val, i, locality_keys, ARRAY_SIZE(locality_keys), seen,
                                      "in locality");

        if (key < 0)
            return key;
        r = config__want_nonempty(ld, key ? "locality.region" : "locality.zone", k, v, &text);
        if (r < 0)
            return r;
        if (!locality_valid(text))
            return config__fail_node(ld, v,
                                     "bad locality.%s '%s': use 1 to %d letters, digits, "
                                     "'-', '_' or '.', e.g. eu-west-1a",
                                     locality_keys[key], config__show(&a, text),
                                     POLICY_LOCALITY_MAX);
        if ((r = config__set_str(ld, key ? &p->region : &p->zone, text)) < 0)
            return r;
    }
    return 0;
}

/* ---- numbers ------------------------------------------------------------- */

static int want_uint(struct loader *ld, const char *what, const struct node *k,
                     const struct node *v, uint32_t lo, uint32_t hi, uint32_t *out)
{
    const char *text;
    char *end;
    unsigned long long n;
    struct shown a;
    int r = config__want_text(ld, what, k, v, &text);

    if (r < 0)
        return r;
    errno = 0;
    n = strtoull(text, &end, 10);
    if (*text < '0' || *text > '9' || *end || errno || n < lo || n > hi)
        return config__fail_node(ld, v, "bad %s '%s': give a whole number from %u to %u", what,
                                 config__show(&a, text), lo, hi);
    *out = (uint32_t)n;
    return 0;
}

static int want_real(struct loader *ld, const char *what, const struct node *k,
                     const struct node *v, double lo, double hi, const char *example, double *out)
{
    const char *text;
    char *end;
    double d;
    struct shown a;
    int r = config__want_text(ld, what, k, v, &text);

    if (r < 0)
        return r;
    errno = 0;
    d = strtod(text, &end);
    if (end == text || *end || errno || !isfinite(d) || d < lo || d > hi)
        return config__fail_node(ld, v, "bad %s '%s': give a number from %g to %g, e.g. %s", what,
                                 config__show(&a, text), lo, hi, example);
    *out = d;
    return 0;
}

static int want_positive_ms(struct loader *ld, const char *what, const struct node *k,
                            const struct node *v, uint64_t *ms)
{
    int r = config__load_duration(ld, what, k, v, ms);

    if (r == 0 && *ms == 0)
        r = config__fail_node(ld, v, "%s must be more than 0, e.g. 30s", what);
    return r;
}

static int want_bool(struct loader *ld, const char *what, const struct node *v, bool *b)
{
    if (config__parse_bool(v, b) < 0)
        return config__fail_node(ld, v, "bad %s: write true or false, without quotes", what);
    return 0;
}

/* ---- protection ---------------------------------------------------------- */

static const char *const protection_keys[] = {"enabled", "max_drop", "hold", "window",
                                              "min_instances"};

static int load_protection(struct loader *ld, const char *where, const struct node *val,
                           struct policy_protection *p)
{
    const struct node *seen[ARRAY_SIZE(protection_keys)] = {NULL};
    char what[160], in[160];
    int r = config__want_map(ld, where, val);

    if (r != 0)
        return r < 0 ? r : 0;
    snprintf(in, sizeof in, "in %s", where);
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key =
            config__section_key(ld, val, i, protection_keys, ARRAY_SIZE(protection_keys), seen, in);

        if (key < 0)
            return key;
        snprintf(what, sizeof what, "%s.%s", where, protection_keys[key]);
        switch (key) {
        case 0:
            r = want_bool(ld, what, v, &p->enabled);
            break;
        case 1:
            /* 1 would hold only an empty list; 0 would hold every removal. */
            r = want_real(ld, what, k, v, 0.01, 1, "0.5", &p->max_drop);
            break;
        case 2:
            r = want_positive_ms(ld, what, k, v, &p->hold_ms);
            break;
        case 3:
            r = want_positive_ms(ld, what, k, v, &p->window_ms);
            break;
        default:
            r = want_uint(ld, what, k, v, 1, 1000000, &p->min_instances);
            break;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- outlier detection (gRPC A50) ------------------------------------------ */

static const char *const sr_keys[] = {"stdev_factor", "enforcement_percentage", "minimum_hosts",
                                      "request_volume"};
static const char *const fp_keys[] = {"threshold", "enforcement_percentage", "minimum_hosts",
                                      "request_volume"};

static int load_ejection(struct loader *ld, const char *where, const struct node *val,
                         bool success_rate, struct policy_outlier *o)
{
    const char *const *keys = success_rate ? sr_keys : fp_keys;
    const struct node *seen[4] = {NULL};
    uint32_t *dst[4];
    char what[200], in[200];
    int r = config__want_map(ld, where, val);

    if (r < 0)
        return r;
    if (success_rate) {
        o->success_rate = true;
        dst[0] = &o->sr_stdev_factor, dst[1] = &o->sr_enforcement;
        dst[2] = &o->sr_minimum_hosts, dst[3] = &o->sr_request_volume;
    } else {
        o->failure_percentage = true;
        dst[0] = &o->fp_threshold, dst[1] = &o->fp_enforcement;
        dst[2] = &o->fp_minimum_hosts, dst[3] = &o->fp_request_volume;
    }
    if (r == 1)
        return 0; /* {}: the defaults */
    snprintf(in, sizeof in, "in %s", where);
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key = config__section_key(ld, val, i, keys, 4, seen, in);
        uint32_t hi = UINT32_MAX;

        if (key < 0)
            return key;
        snprintf(what, sizeof what, "%s.%s", where, keys[key]);
        /* Percentages (A50 refuses more than 100); counts and the factor
         * are any uint32. Zero is "the default" in our struct, so an
         * explicit 0 is refused where A50 gives it no meaning. */
        if (key == 1 || (!success_rate && key == 0))
            hi = 100;
        if ((r = want_uint(ld, what, k, v, 1, hi, dst[key])) < 0)
            return r;
    }
    return 0;
}

static const char *const outlier_keys[] = {"interval",          "base_ejection_time",
                                           "max_ejection_time", "max_ejection_percent",
                                           "success_rate",      "failure_percentage"};

static int load_outlier(struct loader *ld, const char *where, const struct node *val,
                        struct policy_outlier *o)
{
    const struct node *seen[ARRAY_SIZE(outlier_keys)] = {NULL};
    char what[200], in[200];
    int r = config__want_map(ld, where, val);

    if (r < 0)
        return r;
    memset(o, 0, sizeof *o);
    o->set = true;
    snprintf(in, sizeof in, "in %s", where);
    for (size_t i = 0; r == 0 && i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key = config__section_key(ld, val, i, outlier_keys, ARRAY_SIZE(outlier_keys), seen, in);

        if (key < 0)
            return key;
        snprintf(what, sizeof what, "%s.%s", where, outlier_keys[key]);
        switch (key) {
        case 0:
            r = want_positive_ms(ld, what, k, v, &o->interval_ms);
            break;
        case 1:
            r = want_positive_ms(ld, what, k, v, &o->base_ejection_ms);
            break;
        case 2:
            r = want_positive_ms(ld, what, k, v, &o->max_ejection_ms);
            break;
        case 3:
            r = want_uint(ld, what, k, v, 1, 100, &o->max_ejection_percent);
            break;
        default:
            r = load_ejection(ld, what, v, key == 4, o);
            break;
        }
    }
    if (r < 0)
        return r;
    /* Neither kind named: success-rate ejection, as Envoy and gRPC do for
     * an OutlierDetection with its enforcing_success_rate unset (100). */
    if (!o->success_rate && !o->failure_percentage)
        o->success_rate = true;
    policy_outlier_defaults(o);
    if (o->max_ejection_ms < o->base_ejection_ms)
        return config__fail_node(ld, val,
                                 "%s.max_ejection_time is shorter than its "
                                 "base_ejection_time",
                                 where);
    return 0;
}

/* ---- traffic ------------------------------------------------------------- */

static const char *const traffic_service_keys[] = {"protection", "outlier_detection"};

static int load_traffic_services(struct loader *ld, const struct node *val)
{
    struct policy_config *p = &ld->cfg->traffic;
    int r = config__want_map(ld, "traffic.services", val);

    if (r != 0)
        return r < 0 ? r : 0;
    p->services = calloc(val->n_items / 2, sizeof *p->services);
    if (!p->services)
        return config__fail_oom(ld);
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const struct node *seen[ARRAY_SIZE(traffic_service_keys)] = {NULL};
        struct policy_service *s = &p->services[p->n_services];
        char why[128], where[200], in[200];
        struct shown a;

        if (k->kind != NODE_SCALAR || !validate_name(k->text, why, sizeof why))
            return config__fail_node(ld, k, "bad service name in traffic.services%s%s",
                                     k->kind == NODE_SCALAR ? ": " : "",
                                     k->kind == NODE_SCALAR ? why : "");
        for (size_t j = 0; j < p->n_services; j++)
            if (!strcmp(p->services[j].name, k->text))
                return config__fail_node(ld, k, "traffic.services names '%s' twice",
                                         config__show(&a, k->text));
        if (!(s->name = config__dup_str(ld, k->text)))
            return DA_ENOMEM;
        s->protection = p->protection; /* the section's default, as read so far */
        p->n_services++;
        snprintf(where, sizeof where, "traffic.services.%s", config__show(&a, k->text));
        if ((r = config__want_map(ld, where, v)) < 0)
            return r;
        if (r == 1)
            continue;
        snprintf(in, sizeof in, "in %s", where);
        for (size_t j = 0; j < v->n_items / 2; j++) {
            const struct node *sv = v->items[2 * j + 1];
            char what[240];
            int key = config__section_key(ld, v, j, traffic_service_keys,
                                          ARRAY_SIZE(traffic_service_keys), seen, in);
            if (key < 0)
                return key;
            snprintf(what, sizeof what, "%s.%s", where, traffic_service_keys[key]);
            r = key == 0 ? load_protection(ld, what, sv, &s->protection)
                         : load_outlier(ld, what, sv, &s->outlier);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static const char *const traffic_keys[] = {"overprovisioning", "size_window", "protection",
                                           "services"};

int config__load_traffic(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(traffic_keys)] = {NULL};
    struct policy_config *p = &ld->cfg->traffic;
    const struct node *services = NULL;
    int r = config__want_map(ld, "traffic", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key = config__section_key(ld, val, i, traffic_keys, ARRAY_SIZE(traffic_keys), seen,
                                      "in traffic");

        if (key < 0)
            return key;
        switch (key) {
        case 0:
            r = want_real(ld, "traffic.overprovisioning", k, v, 1, 100, "1.4",
                          &p->overprovisioning);
            break;
        case 1:
            r = want_positive_ms(ld, "traffic.size_window", k, v, &p->size_window_ms);
            break;
        case 2:
            r = load_protection(ld, "traffic.protection", v, &p->protection);
            break;
        default:
            services = v; /* after the section's protection, which it inherits */
            break;
        }
        if (r < 0)
            return r;
    }
    return services ? load_traffic_services(ld, services) : 0;
}
