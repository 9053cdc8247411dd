/* The watch cache: for each service a local client asked about, the live
 * instance list under <prefix>/<name>/ and the etcd revision it reflects.
 *
 * A service is read once and then followed by an etcd watch (etcd_watch.c
 * resumes and resyncs it). While etcd is unreachable the last list is kept
 * and marked stale; it is never emptied because etcd went away. Every list
 * is also kept on disk (cache_disk.c), so a restarted agent serves it, stale,
 * before etcd answers. A service nobody subscribes to and nobody asked about
 * for idle_ms is dropped. */
#ifndef DA_CACHE_H
#define DA_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "etcd.h"
#include "instance.h"
#include "policy.h"

typedef struct cache cache;
typedef struct service service;
typedef struct cache_sub cache_sub;

struct cache_options {
    const char *prefix;     /* "/micro" */
    const char *dir;        /* NULL: nothing on disk */
    uint64_t idle_ms;       /* default 10 minutes */
    uint64_t save_delay_ms; /* coalesce disk writes; default 200 ms */
    /* The traffic policy (zones, mass-drop protection); borrowed, must
     * outlive the cache. NULL: no zones, protection by the defaults. */
    const struct policy_config *policy;
};

int cache_new(cache **out, uv_loop_t *loop, etcd_client *etcd, const struct cache_options *o);
/* Stops every watch and timer; the memory goes when the loop runs once
 * more. Subscriptions must be gone first. Accepts NULL; returns NULL. */
cache *cache_close(cache *c);

/* The service called name, created (and its watch started) if new; marks
 * it used now. Returns NULL with *err set (DA_EINVAL for a bad name,
 * DA_ENOMEM). The pointer stays valid while a subscription holds it or
 * until the next loop turn. */
service *cache_get(cache *c, const char *name, int *err);

/* Called after every change of the service: its list, revision or
 * staleness, and when it first becomes ready. */
typedef void (*cache_cb)(service *svc, void *arg);
cache_sub *cache_subscribe(service *svc, cache_cb cb, void *arg);
void cache_unsubscribe(cache_sub *sub); /* NULL-safe; safe inside a callback */

const char *service_name(const service *s);
int64_t service_revision(const service *s);
bool service_ready(const service *s); /* has a list, from etcd or disk */
bool service_stale(const service *s); /* not (yet) confirmed live by etcd */
/* uv_now() when the list last changed (or was loaded from disk). */
uint64_t service_updated(const service *s);
/* uv_now() when it last became stale; 0 while it is not stale. */
uint64_t service_stale_since(const service *s);
size_t service_skipped(const service *s); /* values that are not instances */
/* The instances served, sorted by address; borrowed until the next
 * change. While a mass drop is held (policy.h), the removed instances are
 * still among them; service_plan() says so. */
const struct instance *const *service_instances(const service *s, size_t *n);
/* The raw entry under <prefix>/<name>/<address>, if any. */
bool service_entry(const service *s, const char *address, const char **value, size_t *vlen,
                   int64_t *lease);
size_t service_subscribers(const service *s);
/* The traffic policy applied to service_instances(), in its order: ranks,
 * loads, priorities, and whether a drop is held. Borrowed until the next
 * change; never NULL. */
const struct policy_plan *service_plan(const service *s);
/* The service's mass-drop guard (counters for status and metrics). */
const struct policy_guard *service_guard(const service *s);
/* One object a user of the cache derives from a service's current list
 * (the socket protocol keeps its rendered lists there). The service owns it
 * (stolen) and calls free_fn on it at the next change of the list,
 * revision, staleness or readiness, and when the service goes, so nothing
 * derived outlives the list it was made from; setting another frees the
 * one before. service_derived() is NULL after each change. */
void service_set_derived(service *s, void *derived, void (*free_fn)(void *derived));
void *service_derived(const service *s); /* borrowed */

/* Every service in the cache, in no particular order. */
void cache_foreach(cache *c, void (*fn)(service *svc, void *arg), void *arg);
size_t cache_skipped_total(const cache *c);

#endif
