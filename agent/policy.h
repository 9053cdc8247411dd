/* The traffic policy: which instances of a service a client of this host
 * should call, written once and applied by every interface (the socket's
 * prefer_zone lists, DNS answers, xDS resources). See docs/traffic.md.
 *
 *   zones      an instance's zone and region are its Metadata "zone" and
 *              "region"; it ranks 0 (this host's zone), 1 (its region) or
 *              2 (the rest, and every instance that says no zone)
 *   thinning   a rank's share of traffic follows Envoy's priority load
 *              with an overprovisioning factor (1.4): health = min(1,
 *              factor x instances / recent size); rank 0 takes its
 *              health, the next ranks the rest in order
 *   guard      an update that removes more than max_drop of a service's
 *              instances at once, or empties it, is held: the removed
 *              instances are still served until the drop persists past
 *              the hold time and a fresh read confirms it, or it heals
 *   outlier    per-service outlier detection, sent to xDS clients as
 *              gRPC A50 defines it (xds_resources.c writes it)
 *
 * Pure functions and plain data, no loop: the cache keeps a struct
 * policy_state per service and asks for a plan at each change; the
 * interfaces read the plan. Ownership: a plan owns its rank array
 * (policy_plan_clear); a policy_config owns nothing of its own here
 * (the config loader owns its strings and arrays). */
#ifndef DA_POLICY_H
#define DA_POLICY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "instance.h"

/* Ranks: this host's zone, its region, the rest. */
#define POLICY_RANKS 3
/* The metadata keys an instance's locality is read from (and written to
 * for what this agent registers). */
#define POLICY_META_ZONE "zone"
#define POLICY_META_REGION "region"
/* Locality names are DNS-label-like: short, printable. */
#define POLICY_LOCALITY_MAX 63

/* Empty-list and mass-drop protection of one service. */
struct policy_protection {
    bool enabled;
    double max_drop;        /* a change removing more than this fraction is held */
    uint64_t hold_ms;       /* how long a drop must persist before it applies */
    uint64_t window_ms;     /* removals within this long count as one drop */
    uint32_t min_instances; /* services smaller than this are not guarded */
};

/* gRPC A50 outlier detection (envoy.config.cluster.v3.OutlierDetection,
 * the fields gRPC reads). Unset parts are not sent. */
struct policy_outlier {
    bool set;                      /* false: the cluster carries none */
    uint64_t interval_ms;          /* default 10 s */
    uint64_t base_ejection_ms;     /* default 30 s */
    uint64_t max_ejection_ms;      /* default 300 s */
    uint32_t max_ejection_percent; /* default 10 */
    bool success_rate;             /* success_rate_* sent */
    uint32_t sr_stdev_factor;      /* default 1900 (1.9 standard deviations) */
    uint32_t sr_enforcement;       /* percent, default 100 */
    uint32_t sr_minimum_hosts;     /* default 5 */
    uint32_t sr_request_volume;    /* default 100 */
    bool failure_percentage;       /* failure_percentage_* sent */
    uint32_t fp_threshold;         /* percent, default 85 */
    uint32_t fp_enforcement;       /* percent, default 100 when configured */
    uint32_t fp_minimum_hosts;     /* default 5 */
    uint32_t fp_request_volume;    /* default 50 */
};

/* Settings of one named service (traffic.services.NAME). */
struct policy_service {
    char *name;
    struct policy_protection protection;
    struct policy_outlier outlier;
};

/* The whole policy, as the config holds it (borrowed by everyone). */
struct policy_config {
    char *zone;                          /* locality.zone; NULL: no zone, every instance ranks 0 */
    char *region;                        /* locality.region; NULL if unset */
    double overprovisioning;             /* traffic.overprovisioning, >= 1, default 1.4 */
    uint64_t size_window_ms;             /* traffic.size_window: how long a rank's
                              * largest size is remembered, default 10 min */
    struct policy_protection protection; /* traffic.protection: the default */
    struct policy_service *services;     /* traffic.services */
    size_t n_services;
};

/* Fills p with the defaults (defaults.h). */
void policy_config_defaults(struct policy_config *p);
/* Frees what the loader allocated in p (zone, region, services). */
void policy_config_clear(struct policy_config *p);
/* The settings of service name: its own, or the defaults (protection)
 * and none (outlier). Borrowed from p; p may be NULL (all defaults). */
const struct policy_protection *policy_protection_of(const struct policy_config *p,
                                                     const char *name);
const struct policy_outlier *policy_outlier_of(const struct policy_config *p, const char *name);
/* Fills an outlier_detection's unset fields with gRPC A50's defaults. */
void policy_outlier_defaults(struct policy_outlier *o);

/* The metadata value of key in i, or NULL. */
const char *policy_meta(const struct instance *i, const char *key);
/* in as this agent registers it: with Metadata "zone" and "region" from
 * p's locality unless in says its own. out borrows in's strings and
 * meta (which must have room for in->n_meta + 2 entries), so it needs no
 * freeing; returns out. */
const struct instance *policy_localize(const struct policy_config *p, const struct instance *in,
                                       struct instance *out, struct instance_meta *meta);
/* 0, 1 or 2 as above; 0 for every instance when p has no zone. */
int policy_rank(const struct policy_config *p, const struct instance *i);

/* ---- thinning ---------------------------------------------------------- */

/* Envoy's priority load: load[r] is rank r's share of traffic (the loads
 * sum to 1, or are all 0 when count is all 0). recent[r] >= count[r] is
 * the rank's recent size. */
void policy_loads(double overprovisioning, const uint32_t count[POLICY_RANKS],
                  const uint32_t recent[POLICY_RANKS], double load[POLICY_RANKS]);
/* The priority each rank is served at: 0 for every rank with a load,
 * then the other non-empty ranks in rank order (1, 2); -1 for an empty
 * rank. Priorities are contiguous, as xDS requires. */
void policy_priorities(const uint32_t count[POLICY_RANKS], const double load[POLICY_RANKS],
                       int prio[POLICY_RANKS]);

/* ---- the guard --------------------------------------------------------- */

struct policy_guard {
    uint32_t base;    /* the size a drop is measured from */
    uint64_t base_at; /* when base was set */
    uint32_t last;    /* the live size at the previous change */
    bool held;
    uint64_t held_since;
    uint64_t holds;    /* drops held, ever (for status and metrics) */
    uint64_t released; /* holds that ended by applying the drop */
};

enum policy_verdict { POLICY_APPLY, POLICY_HOLD };

/* One change of a service whose live list now has n_live instances.
 * confirmed: a fresh read of etcd has just replaced the list. Returns
 * whether the removed instances are still to be served. */
enum policy_verdict policy_guard_check(const struct policy_protection *p, struct policy_guard *g,
                                       uint32_t n_live, bool confirmed, uint64_t now);
/* A held drop whose hold time is over: read etcd again and call
 * policy_guard_check() with confirmed. */
bool policy_guard_due(const struct policy_protection *p, const struct policy_guard *g,
                      uint64_t now);

/* ---- a service's plan -------------------------------------------------- */

/* What the cache keeps per service between changes. */
struct policy_state {
    uint32_t peak[POLICY_RANKS];
    uint64_t peak_at[POLICY_RANKS];
    struct policy_guard guard;
};

/* The policy applied to one list (the one service_instances() gives, in
 * its order). */
struct policy_plan {
    bool zoned; /* the agent has a zone */
    size_t n;
    uint8_t *rank; /* per instance */
    uint32_t count[POLICY_RANKS];
    uint32_t recent[POLICY_RANKS];
    double load[POLICY_RANKS];
    int prio[POLICY_RANKS];
    bool protected_;     /* a drop is held */
    uint32_t held;       /* instances served though removed */
    uint64_t held_since; /* uv_now() of the hold */
    uint64_t hold_ms;
};

/* Ranks v (n instances), updates st's recent sizes at now and fills plan
 * (whose old content is cleared). 0 or DA_ENOMEM (plan is then empty,
 * which every reader takes as "no zones"). */
int policy_plan_build(const struct policy_config *p, struct policy_state *st,
                      const struct instance *const *v, size_t n, uint64_t now,
                      struct policy_plan *plan);
void policy_plan_clear(struct policy_plan *plan);
/* True when a recent size is waiting to expire (the plan should be built
 * again later even if nothing changes). */
bool policy_plan_decaying(const struct policy_plan *plan);

/* The loads and priorities for a subset of the list (a group): sel[i]
 * says whether instance i is in it. A rank the subset lacks gives its
 * share to the others, in proportion. */
void policy_plan_subset(const struct policy_plan *plan, const bool *sel, double load[POLICY_RANKS],
                        int prio[POLICY_RANKS]);

/* Per-instance weights for a client that only weighs addresses (the
 * socket's prefer_zone lists, DNS SRV within priority 0): instance i of
 * v gets out[i] >= 1 when its rank has a load, 0 when it is on standby.
 * With one rank loaded, the registered weights are kept as they are;
 * when traffic spills over ranks, out[i] is its share in thousandths of
 * the whole (at least 1). sel as in policy_plan_subset (NULL: all). */
void policy_weights(const struct policy_plan *plan, const struct instance *const *v,
                    const bool *sel, uint32_t *out);

/* {"zone","region","loads":[..],"priorities":[..],"recent":[..],
 *  "protected":bool,"held":N} for status and lists (new reference). */
json_t *policy_plan_json(const struct policy_plan *plan, const struct policy_config *p);
/* The outlier settings as JSON (new reference), or NULL when unset. */
json_t *policy_outlier_json(const struct policy_outlier *o);

#endif
