/* In-process tests of the watch cache (agent/cache.c): a libuv loop, the
 * http client, an etcd client and the cache, against a real etcd started
 * by the harness. The agent-level tests (test_agent, test_faults) cover the
 * same lists through the socket; here the cache is driven directly. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "error.h"
#include "etcd.h"
#include "etcd_proc.h"
#include "http.h"
#include "instance.h"
#include "log.h"
#include "looptest.h"

#define PREFIX "/micro"

/* ---- fixture ----------------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    http_client *http;
    etcd_client *etcd;
    cache *cache;
    struct etcd_cluster *cluster;
};

static void fx_cache(struct fx *f, uint64_t idle_ms, const char *dir)
{
    struct cache_options co = {.prefix = PREFIX, .idle_ms = idle_ms, .dir = dir};

    ck_assert_int_eq(cache_new(&f->cache, &f->loop, f->etcd, &co), 0);
}

static void fx_start(struct fx *f, uint64_t idle_ms)
{
    struct etcd_cluster_opts co = {.members = 1};
    struct etcd_options o = {0};
    const char *ep;

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    ep = etcd_member_url(f->cluster, 0);
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.timeout_ms = 2000;
    o.max_reply = 1 << 20;
    ck_assert_int_eq(etcd_client_new(&f->etcd, &f->loop, f->http, &o), 0);
    fx_cache(f, idle_ms, NULL);
}

static void fx_stop(struct fx *f)
{
    /* The cache stops its watches on the client: it goes first. */
    f->cache = cache_close(f->cache);
    f->etcd = etcd_client_free(f->etcd);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
    etcd_cluster_stop(f->cluster);
}

/* ---- writes the test makes ---------------------------------------------- */

struct res {
    bool done;
    int err;
    int64_t revision, lease_id;
};

static void res_cb(int err, const struct etcd_result *r, void *arg)
{
    struct res *s = arg;

    s->done = true;
    s->err = err;
    if (!err) {
        s->revision = r->revision;
        s->lease_id = r->lease_id;
    }
}

static int64_t finish(struct fx *f, struct res *s)
{
    ck_assert_msg(loop_until(&f->loop, &s->done, 10000), "etcd did not answer in 10 s");
    ck_assert_int_eq(s->err, 0);
    return s->revision;
}

/* Puts <prefix>/<name>/<suffix> = value; returns the revision. */
static int64_t put(struct fx *f, const char *name, const char *suffix, const char *value,
                   int64_t lease)
{
    struct res s = {0};
    char key[256];

    snprintf(key, sizeof key, "%s/%s/%s", PREFIX, name, suffix);
    ck_assert_int_eq(
        etcd_put(f->etcd, key, strlen(key), value, strlen(value), lease, res_cb, &s, NULL), 0);
    return finish(f, &s);
}

static int64_t put_inst(struct fx *f, const char *name, const char *address, int32_t weight,
                        const char *group)
{
    struct instance i = {
        .name = (char *)name, .address = (char *)address, .weight = weight, .group = (char *)group};
    char *v = instance_to_value(&i);
    int64_t rev;

    ck_assert_ptr_nonnull(v);
    rev = put(f, name, address, v, 0);
    free(v);
    return rev;
}

static int64_t del(struct fx *f, const char *name, const char *suffix)
{
    struct res s = {0};
    char key[256];

    snprintf(key, sizeof key, "%s/%s/%s", PREFIX, name, suffix);
    struct etcd_op op = {.type = ETCD_OP_DELETE, .key = key, .klen = strlen(key)};
    ck_assert_int_eq(etcd_txn(f->etcd, NULL, 0, &op, 1, NULL, 0, res_cb, &s, NULL), 0);
    return finish(f, &s);
}

/* ---- a subscriber ---------------------------------------------------------- */

struct seen {
    service *svc;
    int calls;
    bool ready, stale, saw_stale;
    size_t n;
    int64_t revision;
};

static void seen_cb(service *svc, void *arg)
{
    struct seen *s = arg;

    ck_assert_ptr_eq(svc, s->svc);
    s->calls++;
    s->ready = service_ready(svc);
    s->stale = service_stale(svc);
    s->saw_stale |= s->stale;
    service_instances(svc, &s->n);
    s->revision = service_revision(svc);
}

/* The conditions tests wait for, on what the subscriber last heard. */
struct want {
    struct seen *s;
    size_t n;
    int64_t revision;
    bool stale;
};

static bool live_with(void *arg)
{
    const struct want *w = arg;

    return w->s->ready && w->s->stale == w->stale && w->s->n == w->n &&
           w->s->revision >= w->revision;
}

static void wait_live(struct fx *f, struct seen *s, size_t n, int64_t revision)
{
    struct want w = {s, n, revision, false};

    ck_assert_msg(loop_until_fn(&f->loop, live_with, &w, 10000),
                  "%s: wanted %zu instances at revision %lld, live; have %zu at %lld%s",
                  service_name(s->svc), n, (long long)revision, s->n, (long long)s->revision,
                  s->stale ? ", stale" : "");
}

static bool is_stale(void *arg)
{
    return ((struct seen *)arg)->stale;
}

/* ---- tests --------------------------------------------------------------- */

/* The first list is a snapshot of the range, sorted by address; then each
 * change arrives as an event, with its revision. */
START_TEST(test_snapshot_then_events)
{
    struct fx f;
    struct seen s = {0};
    const struct instance *const *v;
    size_t n;
    int err;
    int64_t rev;

    fx_start(&f, 0);
    put_inst(&f, "user", "10.0.0.2:80", 2, "A");
    put_inst(&f, "user", "10.0.0.1:80", 0, "");
    /* A longer name sharing the prefix belongs to another service. */
    rev = put_inst(&f, "user-server", "10.0.0.9:80", 1, "");

    s.svc = cache_get(f.cache, "user", &err);
    ck_assert_ptr_nonnull(s.svc);
    ck_assert_int_eq(err, 0);
    ck_assert_ptr_eq(cache_get(f.cache, "user", &err), s.svc);
    ck_assert_str_eq(service_name(s.svc), "user");
    ck_assert(!service_ready(s.svc));
    ck_assert(service_stale(s.svc));
    cache_sub *sub = cache_subscribe(s.svc, seen_cb, &s);
    ck_assert_ptr_nonnull(sub);
    ck_assert_uint_eq(service_subscribers(s.svc), 1);
    wait_live(&f, &s, 2, rev);

    v = service_instances(s.svc, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(v[0]->address, "10.0.0.1:80");
    ck_assert_str_eq(v[1]->address, "10.0.0.2:80");
    ck_assert_int_eq(v[1]->weight, 2);
    ck_assert_str_eq(v[1]->group, "A");
    ck_assert_uint_eq(service_skipped(s.svc), 0);

    /* Events: an add, a change, a delete, each at its revision. */
    int calls = s.calls;
    rev = put_inst(&f, "user", "10.0.0.3:80", 1, "");
    wait_live(&f, &s, 3, rev);
    ck_assert_int_eq(service_revision(s.svc), rev);
    ck_assert_int_gt(s.calls, calls);
    rev = put_inst(&f, "user", "10.0.0.2:80", 9, "B");
    wait_live(&f, &s, 3, rev);
    v = service_instances(s.svc, &n);
    ck_assert_int_eq(v[1]->weight, 9);
    ck_assert_str_eq(v[1]->group, "B");
    rev = del(&f, "user", "10.0.0.1:80");
    wait_live(&f, &s, 2, rev);
    v = service_instances(s.svc, &n);
    ck_assert_str_eq(v[0]->address, "10.0.0.2:80");
    ck_assert_int_eq(service_revision(s.svc), rev);

    /* The raw entry, with its lease. */
    struct res g = {0};
    const char *value;
    size_t vlen;
    int64_t lease;
    ck_assert_int_eq(etcd_lease_grant(f.etcd, 30, res_cb, &g, NULL), 0);
    finish(&f, &g);
    rev = put(&f, "user", "10.0.0.4:80", "{\"Name\":\"user\",\"Address\":\"10.0.0.4:80\"}",
              g.lease_id);
    wait_live(&f, &s, 3, rev);
    ck_assert(service_entry(s.svc, "10.0.0.4:80", &value, &vlen, &lease));
    ck_assert_int_eq(lease, g.lease_id);
    ck_assert_uint_eq(vlen, strlen("{\"Name\":\"user\",\"Address\":\"10.0.0.4:80\"}"));
    ck_assert(!service_entry(s.svc, "10.0.0.1:80", &value, &vlen, &lease));

    /* A name the registry would refuse is no service. */
    ck_assert_ptr_null(cache_get(f.cache, "..", &err));
    ck_assert_int_eq(err, DA_EINVAL);

    cache_unsubscribe(sub);
    ck_assert_uint_eq(service_subscribers(s.svc), 0);
    fx_stop(&f);
}
END_TEST

/* Values that are not instances are skipped and counted, and never take
 * the rest of the list with them. */
START_TEST(test_bad_values_skipped)
{
    struct fx f;
    struct seen s = {0};
    int err;
    int64_t rev;

    fx_start(&f, 0);
    put_inst(&f, "user", "10.0.0.1:80", 1, "");
    put(&f, "user", "junk", "not json at all", 0);
    rev = put(&f, "user", "10.0.0.2:80", "{\"Name\":\"user\"}", 0); /* no Address */
    s.svc = cache_get(f.cache, "user", &err);
    ck_assert_ptr_nonnull(s.svc);
    cache_sub *sub = cache_subscribe(s.svc, seen_cb, &s);
    wait_live(&f, &s, 1, rev);
    ck_assert_uint_eq(service_skipped(s.svc), 2);
    ck_assert_uint_eq(cache_skipped_total(f.cache), 2);

    /* Counted from the list as it is: one goes, the count follows. */
    rev = del(&f, "user", "junk");
    wait_live(&f, &s, 1, rev);
    ck_assert_uint_eq(service_skipped(s.svc), 1);
    rev = put(&f, "user", "10.0.0.3:80", "[1,2,3]", 0);
    wait_live(&f, &s, 1, rev);
    ck_assert_uint_eq(service_skipped(s.svc), 2);
    ck_assert_uint_eq(cache_skipped_total(f.cache), 2);
    cache_unsubscribe(sub);
    fx_stop(&f);
}
END_TEST

/* etcd gone: the list is kept and marked stale, never emptied; etcd back:
 * live again, and following changes. */
START_TEST(test_stale_while_down)
{
    struct fx f;
    struct seen s = {0};
    int err;
    int64_t rev;

    fx_start(&f, 0);
    put_inst(&f, "user", "10.0.0.1:80", 1, "");
    rev = put_inst(&f, "user", "10.0.0.2:80", 1, "");
    s.svc = cache_get(f.cache, "user", &err);
    cache_sub *sub = cache_subscribe(s.svc, seen_cb, &s);
    wait_live(&f, &s, 2, rev);
    ck_assert(!s.saw_stale);

    ck_assert_int_eq(etcd_member_stop(f.cluster, 0), 0);
    ck_assert_msg(loop_until_fn(&f.loop, is_stale, &s, 10000),
                  "the list was not marked stale when etcd went away");
    ck_assert(service_stale(s.svc));
    ck_assert(service_ready(s.svc));
    ck_assert_uint_eq(s.n, 2);
    /* And it stays so while etcd is away, kept whole. */
    loop_for(&f.loop, 1000);
    ck_assert(service_stale(s.svc));
    ck_assert_uint_eq(s.n, 2);
    ck_assert_int_eq(service_revision(s.svc), rev);

    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);
    wait_live(&f, &s, 2, rev);
    ck_assert(!service_stale(s.svc));
    rev = put_inst(&f, "user", "10.0.0.3:80", 1, "");
    wait_live(&f, &s, 3, rev);
    cache_unsubscribe(sub);
    fx_stop(&f);
}
END_TEST

struct names {
    bool idle, kept;
};

static void name_fn(service *svc, void *arg)
{
    struct names *n = arg;

    n->idle |= !strcmp(service_name(svc), "idle");
    n->kept |= !strcmp(service_name(svc), "kept");
}

static struct names names_of(cache *c)
{
    struct names n = {0};

    cache_foreach(c, name_fn, &n);
    return n;
}

static bool idle_gone(void *arg)
{
    return !names_of(arg).idle;
}

static bool kept_gone(void *arg)
{
    return !names_of(arg).kept;
}

/* A service nobody subscribes to and nobody asked about for idle_ms is
 * dropped; one with a subscriber stays, and goes once it has none. */
START_TEST(test_idle_dropped)
{
    struct fx f;
    struct seen s = {0};
    int err;

    fx_start(&f, 200);
    ck_assert_ptr_nonnull(cache_get(f.cache, "idle", &err));
    s.svc = cache_get(f.cache, "kept", &err);
    ck_assert_ptr_nonnull(s.svc);
    cache_sub *sub = cache_subscribe(s.svc, seen_cb, &s);
    ck_assert(names_of(f.cache).idle);

    ck_assert_msg(loop_until_fn(&f.loop, idle_gone, f.cache, 10000),
                  "an idle service was not dropped");
    ck_assert(names_of(f.cache).kept);
    ck_assert(service_ready(s.svc));

    cache_unsubscribe(sub);
    ck_assert_msg(loop_until_fn(&f.loop, kept_gone, f.cache, 10000),
                  "a service was not dropped after its last subscriber left");
    fx_stop(&f);
}
END_TEST

/* With cache.dir, a new cache serves the last list at once, stale, before
 * etcd answers (here: while etcd is down), and live once it does. */
START_TEST(test_saved_list_served_stale)
{
    struct fx f;
    struct seen s = {0};
    char dir[512];
    size_t n;
    int err;
    int64_t rev;

    fx_start(&f, 0);
    snprintf(dir, sizeof dir, "%s/cache", etcd_cluster_dir(f.cluster));
    f.cache = cache_close(f.cache);
    fx_cache(&f, 0, dir);
    put_inst(&f, "user", "10.0.0.1:80", 1, "");
    rev = put_inst(&f, "user", "10.0.0.2:80", 1, "");
    s.svc = cache_get(f.cache, "user", &err);
    cache_sub *sub = cache_subscribe(s.svc, seen_cb, &s);
    wait_live(&f, &s, 2, rev);
    cache_unsubscribe(sub);
    f.cache = cache_close(f.cache); /* writes what is pending */

    ck_assert_int_eq(etcd_member_stop(f.cluster, 0), 0);
    fx_cache(&f, 0, dir);
    memset(&s, 0, sizeof s);
    s.svc = cache_get(f.cache, "user", &err);
    ck_assert_ptr_nonnull(s.svc);
    ck_assert(service_ready(s.svc));
    ck_assert(service_stale(s.svc));
    service_instances(s.svc, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(service_revision(s.svc), rev);

    sub = cache_subscribe(s.svc, seen_cb, &s);
    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);
    wait_live(&f, &s, 2, rev);
    cache_unsubscribe(sub);
    fx_stop(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("cache");
    TCase *etcd = tcase_create("etcd");

    tcase_set_timeout(etcd, 60);
    tcase_add_test(etcd, test_snapshot_then_events);
    tcase_add_test(etcd, test_bad_values_skipped);
    tcase_add_test(etcd, test_stale_while_down);
    tcase_add_test(etcd, test_idle_dropped);
    tcase_add_test(etcd, test_saved_list_served_stale);
    suite_add_tcase(s, etcd);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    log_level = LOG_LVL_WARN;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
