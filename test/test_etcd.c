/* Integration tests of the etcd client (agent/etcd/etcd.c, etcd_watch.c) against
 * real etcd members started by the harness, and against a scripted HTTP
 * responder for replies etcd cannot be made to send. */
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "etcd.h"
#include "etcd_proc.h"
#include "http.h"
#include "log.h"
#include "looptest.h"
#include "responder.h"

/* ---- fixture ----------------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    http_client *http;
    etcd_client *etcd;
    struct etcd_cluster *cluster;
};

static void fx_client(struct fx *f, const char *const *eps, size_t n, const char *user,
                      const char *pass, long timeout_ms)
{
    struct etcd_options o = {0};

    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    o.endpoints = eps;
    o.n_endpoints = n;
    o.username = user;
    o.password = pass;
    o.timeout_ms = timeout_ms;
    o.max_reply = 1 << 20;
    ck_assert_int_eq(etcd_client_new(&f->etcd, &f->loop, f->http, &o), 0);
}

static void fx_start(struct fx *f, int members, int auth)
{
    struct etcd_cluster_opts co = {.members = members, .auth = auth};
    const char *eps[ETCD_MAX_MEMBERS];

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    for (int i = 0; i < members; i++)
        eps[i] = etcd_member_url(f->cluster, i);
    fx_client(f, eps, (size_t)members, auth ? ETCD_ROOT_USER : NULL,
              auth ? ETCD_ROOT_PASSWORD : NULL, 2000);
}

static void fx_stop(struct fx *f)
{
    f->etcd = etcd_client_free(f->etcd);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
    etcd_cluster_stop(f->cluster);
}

/* One request's outcome, copied out of the callback. */
struct res {
    bool done;
    int err;
    int64_t revision, lease_id, ttl, count;
    bool succeeded;
    size_t n_kvs;
    char key[256], value[256];
    size_t key_len, value_len;
};

static void res_cb(int err, const struct etcd_result *r, void *arg)
{
    struct res *s = arg;

    s->done = true;
    s->err = err;
    if (err)
        return;
    s->revision = r->revision;
    s->lease_id = r->lease_id;
    s->ttl = r->ttl;
    s->count = r->count;
    s->succeeded = r->succeeded;
    s->n_kvs = r->n_kvs;
    if (r->n_kvs) {
        s->key_len = r->kvs[0].key_len < sizeof s->key ? r->kvs[0].key_len : sizeof s->key;
        memcpy(s->key, r->kvs[0].key, s->key_len);
        s->value_len =
            r->kvs[0].value_len < sizeof s->value ? r->kvs[0].value_len : sizeof s->value;
        memcpy(s->value, r->kvs[0].value, s->value_len);
    }
}

static void wait_res(struct fx *f, struct res *s, int ms)
{
    ck_assert_msg(loop_until(&f->loop, &s->done, ms), "request did not finish in %d ms", ms);
}

static int put_sync(struct fx *f, const char *k, const char *v, int64_t lease)
{
    struct res s = {0};

    ck_assert_int_eq(etcd_put(f->etcd, k, strlen(k), v, strlen(v), lease, res_cb, &s, NULL), 0);
    wait_res(f, &s, 10000);
    return s.err;
}

static void ctl(struct fx *f, const char *const *args)
{
    char out[4096];
    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
}

/* ---- KV and leases ------------------------------------------------------ */

START_TEST(test_kv_binary_keys)
{
    struct fx f;
    struct res s = {0};
    /* A key with a NUL, 0xff and a newline; a value with a NUL. */
    static const char key[] = {'/', 't', '/', 0, (char)0xff, '\n', 'k'};
    static const char val[] = {'v', 0, 'w'};
    char end[16];

    fx_start(&f, 1, 0);
    ck_assert_int_eq(etcd_put(f.etcd, key, sizeof key, val, sizeof val, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_int_gt(s.revision, 1);

    memset(&s, 0, sizeof s);
    size_t elen = etcd_prefix_end("/t/", 3, end);
    ck_assert_int_eq(etcd_range(f.etcd, "/t/", 3, end, elen, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_uint_eq(s.n_kvs, 1);
    ck_assert_uint_eq(s.key_len, sizeof key);
    ck_assert_mem_eq(s.key, key, sizeof key);
    ck_assert_uint_eq(s.value_len, sizeof val);
    ck_assert_mem_eq(s.value, val, sizeof val);

    /* The agent deletes only in transactions (a key it wrote, compared by
     * revision), so binary keys go through one too. */
    memset(&s, 0, sizeof s);
    struct etcd_op del = {.type = ETCD_OP_DELETE, .key = key, .klen = sizeof key};
    ck_assert_int_eq(etcd_txn(f.etcd, NULL, 0, &del, 1, NULL, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert(s.succeeded);

    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, key, sizeof key, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_uint_eq(s.n_kvs, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_prefix_end)
{
    char end[8];

    ck_assert_uint_eq(etcd_prefix_end("/a/", 3, end), 3);
    ck_assert_mem_eq(end, "/a0", 3);
    ck_assert_uint_eq(etcd_prefix_end("a\xff", 2, end), 1);
    ck_assert_int_eq(end[0], 'b');
    ck_assert_uint_eq(etcd_prefix_end("\xff\xff", 2, end), 1);
    ck_assert_int_eq(end[0], 0);
}
END_TEST

START_TEST(test_txn_compare_and_put)
{
    struct fx f;
    struct res s = {0};

    fx_start(&f, 1, 0);
    /* Create only if absent: first succeeds, second fails and reads back. */
    struct etcd_cmp absent = {
        .key = "/t/x", .klen = 4, .target = ETCD_CMP_MOD, .op = ETCD_CMP_EQUAL, .number = 0};
    struct etcd_op put = {.type = ETCD_OP_PUT, .key = "/t/x", .klen = 4, .value = "one", .vlen = 3};
    struct etcd_op get = {.type = ETCD_OP_RANGE, .key = "/t/x", .klen = 4};
    ck_assert_int_eq(etcd_txn(f.etcd, &absent, 1, &put, 1, &get, 1, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert(s.succeeded);

    memset(&s, 0, sizeof s);
    put.value = "two";
    ck_assert_int_eq(etcd_txn(f.etcd, &absent, 1, &put, 1, &get, 1, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert(!s.succeeded);
    ck_assert_uint_eq(s.n_kvs, 1);
    ck_assert_mem_eq(s.value, "one", 3);

    /* Compare on value. */
    memset(&s, 0, sizeof s);
    struct etcd_cmp is_one = {.key = "/t/x",
                              .klen = 4,
                              .target = ETCD_CMP_VALUE,
                              .op = ETCD_CMP_EQUAL,
                              .value = "one",
                              .vlen = 3};
    ck_assert_int_eq(etcd_txn(f.etcd, &is_one, 1, &put, 1, NULL, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert(s.succeeded);
    fx_stop(&f);
}
END_TEST

START_TEST(test_lease_lifecycle)
{
    struct fx f;
    struct res s = {0};
    int64_t id;

    fx_start(&f, 1, 0);
    ck_assert_int_eq(etcd_lease_grant(f.etcd, 2, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_int_eq(s.ttl, 2);
    id = s.lease_id;
    ck_assert_int_ne(id, 0);
    ck_assert_int_eq(put_sync(&f, "/t/leased", "v", id), 0);

    /* Kept alive across three TTLs, the key stays. */
    for (int i = 0; i < 6; i++) {
        loop_for(&f.loop, 1000);
        memset(&s, 0, sizeof s);
        ck_assert_int_eq(etcd_lease_keepalive(f.etcd, id, res_cb, &s, NULL), 0);
        wait_res(&f, &s, 5000);
        ck_assert_int_eq(s.err, 0);
        ck_assert_int_eq(s.ttl, 2);
    }
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/t/leased", 9, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_uint_eq(s.n_kvs, 1);

    /* Left alone, it expires: the key goes and keep-alive says "gone". */
    loop_for(&f.loop, 3500);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/t/leased", 9, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_uint_eq(s.n_kvs, 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_lease_keepalive(f.etcd, id, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_int_eq(s.ttl, -1);

    /* Revoke removes the keys at once. */
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_lease_grant(f.etcd, 30, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    id = s.lease_id;
    ck_assert_int_eq(put_sync(&f, "/t/leased", "v", id), 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_lease_revoke(f.etcd, id, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/t/leased", 9, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_uint_eq(s.n_kvs, 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_lease_revoke(f.etcd, id, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, DA_ELEASE);
    fx_stop(&f);
}
END_TEST

/* ---- watches ------------------------------------------------------------ */

/* A watcher's view: the keys it holds now, the log of what it saw, and
 * checks that revisions only go up. */
struct view {
    char keys[64][64];
    char vals[64][64];
    int n;
    char log[8192];
    int64_t revision;
    int snapshots, events, downs, ups;
    bool backwards;
};

static void view_set(struct view *v, const struct etcd_kv *kv, bool del)
{
    char k[64], val[64];
    int i;

    snprintf(k, sizeof k, "%.*s", (int)kv->key_len, kv->key);
    snprintf(val, sizeof val, "%.*s", (int)kv->value_len, kv->value);
    for (i = 0; i < v->n && strcmp(v->keys[i], k); i++)
        ;
    if (del) {
        if (i < v->n) {
            v->n--;
            memmove(v->keys[i], v->keys[i + 1], (size_t)(v->n - i) * 64);
            memmove(v->vals[i], v->vals[i + 1], (size_t)(v->n - i) * 64);
        }
        return;
    }
    if (i == v->n && v->n < 64)
        v->n++;
    snprintf(v->keys[i], 64, "%s", k);
    snprintf(v->vals[i], 64, "%s", val);
}

static const char *view_get(const struct view *v, const char *k)
{
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->keys[i], k))
            return v->vals[i];
    return NULL;
}

static void view_cb(etcd_watch *w, const struct etcd_watch_update *u, void *arg)
{
    struct view *v = arg;
    size_t l = strlen(v->log);

    (void)w;
    switch (u->kind) {
    case ETCD_WATCH_SNAPSHOT:
        v->snapshots++;
        v->n = 0;
        for (size_t i = 0; i < u->n_kvs; i++)
            view_set(v, &u->kvs[i], false);
        snprintf(v->log + l, sizeof v->log - l, "S%zu;", u->n_kvs);
        break;
    case ETCD_WATCH_EVENTS:
        v->events += (int)u->n_events;
        for (size_t i = 0; i < u->n_events; i++) {
            const struct etcd_kv *kv = &u->events[i].kv;
            bool del = u->events[i].type == ETCD_EVENT_DELETE;
            view_set(v, kv, del);
            l = strlen(v->log);
            snprintf(v->log + l, sizeof v->log - l, "%c%.*s=%.*s;", del ? '-' : '+',
                     (int)kv->key_len, kv->key, (int)kv->value_len, kv->value);
        }
        break;
    case ETCD_WATCH_DOWN:
        v->downs++;
        return;
    case ETCD_WATCH_UP:
        v->ups++;
        return;
    }
    if (u->revision < v->revision)
        v->backwards = true;
    v->revision = u->revision;
}

struct want {
    struct view *v;
    const char *key, *val; /* val NULL: the key must be absent */
};

static bool want_pred(void *arg)
{
    struct want *w = arg;
    const char *got = view_get(w->v, w->key);
    return w->val ? got && !strcmp(got, w->val) : !got;
}

static void wait_view(struct fx *f, struct view *v, const char *key, const char *val, int ms)
{
    struct want w = {v, key, val};
    ck_assert_msg(loop_until_fn(&f->loop, want_pred, &w, ms), "watch never saw %s=%s (log %s)", key,
                  val ? val : "(deleted)", v->log);
}

static etcd_watch *watch_prefix(struct fx *f, const char *prefix, struct view *v, int64_t rev)
{
    char end[64];
    size_t elen = etcd_prefix_end(prefix, strlen(prefix), end);
    etcd_watch *w = NULL;

    ck_assert_int_eq(
        etcd_watch_start(f->etcd, prefix, strlen(prefix), end, elen, rev, view_cb, v, &w), 0);
    return w;
}

static bool live_pred(void *arg)
{
    return etcd_watch_live(arg);
}

/* Established TCP connections from this process to the port of url. */
static int connections_to(const char *url)
{
    const char *colon = strrchr(url, ':');
    unsigned port = colon ? (unsigned)strtoul(colon + 1, NULL, 10) : 0;
    char line[512], path[64], link[64];
    unsigned long inodes[256];
    size_t n_inodes = 0;
    int count = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    FILE *f;

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) && n_inodes < 256) {
        ssize_t len;
        snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
        if ((len = readlink(path, link, sizeof link - 1)) <= 0)
            continue;
        link[len] = '\0';
        if (sscanf(link, "socket:[%lu]", &inodes[n_inodes]) == 1)
            n_inodes++;
    }
    closedir(d);
    ck_assert_ptr_nonnull(f = fopen("/proc/net/tcp", "r"));
    while (fgets(line, sizeof line, f)) {
        unsigned rport, st;
        unsigned long inode;
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &rport, &st,
                   &inode) != 3 ||
            rport != port || st != 1 /* ESTABLISHED */)
            continue;
        for (size_t i = 0; i < n_inodes; i++)
            if (inodes[i] == inode)
                count++;
    }
    fclose(f);
    return count;
}

struct many {
    etcd_watch *w[40];
    size_t n;
};

static bool all_live(void *arg)
{
    struct many *m = arg;

    for (size_t i = 0; i < m->n; i++)
        if (!etcd_watch_live(m->w[i]))
            return false;
    return true;
}

struct fewer {
    const char *url;
    int than;
};

static bool fewer_connections(void *arg)
{
    struct fewer *fw = arg;

    return connections_to(fw->url) < fw->than;
}

/* Every watch of a client travels on one stream: 40 watches hold one
 * connection for the stream (plus those curl keeps for requests: the 40
 * range reads run at most 8 at a time), each gets
 * only its own changes, a watch added to the open stream goes live, a
 * stopped one gets nothing more, and the connection goes with the last
 * watch. */
START_TEST(test_watches_share_one_stream)
{
    struct fx f;
    struct view v[41];
    struct many m = {.n = 40};
    char prefix[32], key[40], val[8];
    const char *url;

    memset(v, 0, sizeof v);
    fx_start(&f, 1, 0);
    url = etcd_member_url(f.cluster, 0);
    for (size_t i = 0; i < m.n; i++) {
        snprintf(prefix, sizeof prefix, "/m%02zu/", i);
        m.w[i] = watch_prefix(&f, prefix, &v[i], 0);
    }
    ck_assert(loop_until_fn(&f.loop, all_live, &m, 10000));
    ck_assert_int_le(connections_to(url), 1 + 8);

    /* A watch that joins the open stream goes live quickly. */
    etcd_watch *late = watch_prefix(&f, "/late/", &v[40], 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, late, 2000));
    ctl(&f, (const char *const[]){"put", "/late/x", "1", NULL});
    wait_view(&f, &v[40], "/late/x", "1", 5000);

    /* Stop one; change every prefix; each other watch sees its own. */
    etcd_watch_close(m.w[7]);
    for (size_t i = 0; i < m.n; i++) {
        snprintf(key, sizeof key, "/m%02zu/k", i);
        snprintf(val, sizeof val, "%zu", i);
        ctl(&f, (const char *const[]){"put", key, val, NULL});
    }
    for (size_t i = 0; i < m.n; i++) {
        if (i == 7)
            continue;
        snprintf(key, sizeof key, "/m%02zu/k", i);
        snprintf(val, sizeof val, "%zu", i);
        wait_view(&f, &v[i], key, val, 5000);
        ck_assert_int_eq(v[i].n, 1);
    }
    ck_assert_int_eq(v[7].n, 0);
    ck_assert_int_eq(v[7].events, 0);
    struct fewer fw = {.url = url, .than = connections_to(url)};
    ck_assert_int_ge(fw.than, 1);
    ck_assert_int_le(fw.than, 1 + 8);

    for (size_t i = 0; i < m.n; i++)
        if (i != 7)
            etcd_watch_close(m.w[i]);
    etcd_watch_close(late);
    /* The request connection may stay (curl keeps it); the stream goes. */
    ck_assert(loop_until_fn(&f.loop, fewer_connections, &fw, 3000));
    fx_stop(&f);
}
END_TEST

START_TEST(test_watch_events_in_order)
{
    struct fx f;
    struct view v = {0};
    etcd_watch *w;

    fx_start(&f, 1, 0);
    ck_assert_int_eq(put_sync(&f, "/w/a", "0", 0), 0);
    ck_assert_int_eq(put_sync(&f, "/wx", "outside", 0), 0);
    w = watch_prefix(&f, "/w/", &v, 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ck_assert_int_eq(v.snapshots, 1);
    ck_assert_str_eq(view_get(&v, "/w/a"), "0");

    ctl(&f, (const char *const[]){"put", "/w/b", "1", NULL});
    ctl(&f, (const char *const[]){"put", "/w/a", "2", NULL});
    ctl(&f, (const char *const[]){"del", "/w/b", NULL});
    ctl(&f, (const char *const[]){"put", "/wy", "outside", NULL});
    ctl(&f, (const char *const[]){"put", "/w/c", "3", NULL});
    wait_view(&f, &v, "/w/c", "3", 5000);
    ck_assert_str_eq(v.log, "S1;+/w/b=1;+/w/a=2;-/w/b=;+/w/c=3;");
    ck_assert(!v.backwards);
    etcd_watch_close(w);
    fx_stop(&f);
}
END_TEST

/* The member under the watch is killed; while it is down the others take
 * writes; it comes back with its data folder; the watch resumes from where
 * it was and sees every change exactly once. */
START_TEST(test_watch_resume_after_restart)
{
    struct fx f;
    struct view v = {0};
    struct etcd_cluster_opts co = {.members = 3};
    etcd_watch *w;

    memset(&f, 0, sizeof f);
    f.cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f.cluster);
    const char *ep = etcd_member_url(f.cluster, 0);
    fx_client(&f, &ep, 1, NULL, NULL, 2000);

    w = watch_prefix(&f, "/r/", &v, 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ctl(&f, (const char *const[]){"put", "/r/1", "a", NULL});
    wait_view(&f, &v, "/r/1", "a", 5000);

    ck_assert_int_eq(etcd_member_kill(f.cluster, 0), 0);
    ck_assert_int_ge(etcd_cluster_leader(f.cluster), 1);
    loop_for(&f.loop, 300);
    ctl(&f, (const char *const[]){"put", "/r/2", "b", NULL});
    ctl(&f, (const char *const[]){"put", "/r/1", "c", NULL});
    ctl(&f, (const char *const[]){"del", "/r/2", NULL});
    loop_for(&f.loop, 500);
    ck_assert_int_ge(v.downs, 1);
    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);

    wait_view(&f, &v, "/r/1", "c", 15000);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ck_assert_int_ge(v.ups, 1);
    ck_assert_str_eq(v.log, "S0;+/r/1=a;+/r/2=b;+/r/1=c;-/r/2=;");
    ck_assert_int_eq(v.snapshots, 1);
    ck_assert(!v.backwards);
    etcd_watch_close(w);
    fx_stop(&f);
}
END_TEST

/* History is compacted past the watch's revision while its member is down:
 * the watch reads the range again and the receiver gets one correct list. */
START_TEST(test_watch_compaction_resync)
{
    struct fx f;
    struct view v = {0};
    struct etcd_cluster_opts co = {.members = 3};
    etcd_watch *w;
    char out[4096];

    memset(&f, 0, sizeof f);
    f.cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f.cluster);
    const char *ep = etcd_member_url(f.cluster, 0);
    fx_client(&f, &ep, 1, NULL, NULL, 2000);

    ctl(&f, (const char *const[]){"put", "/c/keep", "1", NULL});
    ctl(&f, (const char *const[]){"put", "/c/gone", "1", NULL});
    w = watch_prefix(&f, "/c/", &v, 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ck_assert_int_eq(v.n, 2);

    ck_assert_int_eq(etcd_member_kill(f.cluster, 0), 0);
    ck_assert_int_ge(etcd_cluster_leader(f.cluster), 1);
    ctl(&f, (const char *const[]){"del", "/c/gone", NULL});
    ctl(&f, (const char *const[]){"put", "/c/new", "2", NULL});
    ctl(&f, (const char *const[]){"put", "/c/keep", "3", NULL});
    /* Compact at the newest revision. */
    ck_assert_int_eq(etcdctl(f.cluster, out, sizeof out,
                             (const char *const[]){"endpoint", "status", "-w", "fields", NULL}),
                     0);
    char *p = strstr(out, "\"Revision\" : ");
    ck_assert_ptr_nonnull(p);
    char rev[32];
    snprintf(rev, sizeof rev, "%" PRId64, (int64_t)strtoll(p + 13, NULL, 10));
    ctl(&f, (const char *const[]){"compaction", rev, NULL});
    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);

    wait_view(&f, &v, "/c/keep", "3", 15000);
    ck_assert_int_eq(v.snapshots, 2);
    ck_assert_ptr_null(view_get(&v, "/c/gone"));
    ck_assert_str_eq(view_get(&v, "/c/new"), "2");
    ck_assert_int_eq(v.n, 2);
    ck_assert(!v.backwards);

    /* And it goes on following changes. */
    ctl(&f, (const char *const[]){"put", "/c/after", "4", NULL});
    wait_view(&f, &v, "/c/after", "4", 5000);
    etcd_watch_close(w);
    fx_stop(&f);
}
END_TEST

/* ---- failover and auth -------------------------------------------------- */

START_TEST(test_failover_second_endpoint)
{
    struct fx f;
    struct view v = {0};
    etcd_watch *w;

    fx_start(&f, 3, 0);
    w = watch_prefix(&f, "/f/", &v, 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ck_assert_int_eq(put_sync(&f, "/f/1", "a", 0), 0);
    wait_view(&f, &v, "/f/1", "a", 5000);
    /* The client starts on a member drawn at random: kill that one. */
    int m = 0;
    while (strcmp(etcd_client_endpoint(f.etcd), etcd_member_url(f.cluster, m)))
        ck_assert_int_lt(++m, 3);

    ck_assert_int_eq(etcd_member_kill(f.cluster, m), 0);
    /* The next request finds the member dead and is retried on another. */
    ck_assert_int_eq(put_sync(&f, "/f/2", "b", 0), 0);
    ck_assert_str_ne(etcd_client_endpoint(f.etcd), etcd_member_url(f.cluster, m));
    wait_view(&f, &v, "/f/2", "b", 10000);
    ctl(&f, (const char *const[]){"put", "/f/3", "c", NULL});
    wait_view(&f, &v, "/f/3", "c", 10000);
    ck_assert_str_eq(v.log, "S0;+/f/1=a;+/f/2=b;+/f/3=c;");
    etcd_watch_close(w);
    fx_stop(&f);
}
END_TEST

START_TEST(test_auth)
{
    struct fx f;
    struct view v = {0};
    struct res s = {0};
    etcd_watch *w;

    fx_start(&f, 1, 1);
    ck_assert_int_eq(put_sync(&f, "/a/1", "x", 0), 0);
    w = watch_prefix(&f, "/a/", &v, 0);
    ck_assert(loop_until_fn(&f.loop, live_pred, w, 5000));
    ck_assert_str_eq(view_get(&v, "/a/1"), "x");
    ck_assert_int_eq(put_sync(&f, "/a/2", "y", 0), 0);
    wait_view(&f, &v, "/a/2", "y", 5000);
    etcd_watch_close(w);
    f.etcd = etcd_client_free(f.etcd);

    /* A wrong password is refused with DA_EAUTH, and says so. */
    struct etcd_options o = {0};
    const char *ep = etcd_member_url(f.cluster, 0);
    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.username = ETCD_ROOT_USER;
    o.password = "wrong";
    ck_assert_int_eq(etcd_client_new(&f.etcd, &f.loop, f.http, &o), 0);
    ck_assert_int_eq(etcd_range(f.etcd, "/a/1", 4, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, DA_EAUTH);
    ck_assert_ptr_nonnull(strstr(etcd_client_last_error(f.etcd), "authentication failed"));
    f.etcd = etcd_client_free(f.etcd);

    /* Without credentials, etcd refuses too. */
    o.username = NULL;
    ck_assert_int_eq(etcd_client_new(&f.etcd, &f.loop, f.http, &o), 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/a/1", 4, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_ne(s.err, 0);
    fx_stop(&f);
}
END_TEST

/* TLS with a client certificate, through libcurl's options; without the
 * CA the server's certificate is refused. */
START_TEST(test_tls)
{
    struct fx f;
    struct etcd_cluster_opts co = {.members = 1, .tls = 1};
    struct etcd_options o = {0};
    struct res s = {0};
    const char *ep;

    memset(&f, 0, sizeof f);
    f.cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f.cluster);
    ep = etcd_member_url(f.cluster, 0);
    ck_assert_int_eq(strncmp(ep, "https://", 8), 0);
    ck_assert_int_eq(uv_loop_init(&f.loop), 0);
    ck_assert_int_eq(http_client_new(&f.http, &f.loop), 0);
    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.timeout_ms = 3000;
    o.tls.ca_file = etcd_cluster_ca_file(f.cluster);
    o.tls.cert_file = etcd_cluster_client_cert(f.cluster);
    o.tls.key_file = etcd_cluster_client_key(f.cluster);
    ck_assert_int_eq(etcd_client_new(&f.etcd, &f.loop, f.http, &o), 0);
    ck_assert_int_eq(put_sync(&f, "/tls/k", "v", 0), 0);
    ck_assert_int_eq(etcd_range(f.etcd, "/tls/k", 6, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, 0);
    ck_assert_mem_eq(s.value, "v", 1);
    f.etcd = etcd_client_free(f.etcd);

    /* The system's CAs do not know the test CA. */
    o.tls.ca_file = NULL;
    ck_assert_int_eq(etcd_client_new(&f.etcd, &f.loop, f.http, &o), 0);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/tls/k", 6, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 5000);
    ck_assert_int_eq(s.err, DA_ETRANSPORT);
    fx_stop(&f);
}
END_TEST

/* ---- replies etcd cannot be made to send -------------------------------- */

static int request_with(const char *reply, long timeout_ms, size_t max_reply)
{
    struct fx f;
    struct res s = {0};
    struct responder *r = responder_start(&reply, 1);
    const char *ep;
    struct etcd_options o = {0};

    memset(&f, 0, sizeof f);
    ck_assert_ptr_nonnull(r);
    ep = responder_url(r);
    ck_assert_int_eq(uv_loop_init(&f.loop), 0);
    ck_assert_int_eq(http_client_new(&f.http, &f.loop), 0);
    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.timeout_ms = timeout_ms;
    o.max_reply = max_reply;
    ck_assert_int_eq(etcd_client_new(&f.etcd, &f.loop, f.http, &o), 0);
    ck_assert_int_eq(etcd_range(f.etcd, "/k", 2, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(&f, &s, 10000);
    fx_stop(&f);
    responder_stop(r);
    return s.err;
}

#define HDR200 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

START_TEST(test_bad_replies)
{
    ck_assert_int_eq(request_with(HDR200
                                  "Connection: close\r\nContent-Length: 100\r\n\r\n{\"header\":{",
                                  2000, 4096),
                     DA_ETRANSPORT);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 9\r\n\r\n{\"kvs\":1}", 2000, 4096),
                     DA_EPROTO);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 5\r\n\r\nhello", 2000, 4096), DA_EPROTO);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 33\r\n\r\n"
                                         "{\"kvs\":[{\"key\":\"!!not base64!!\"}]}",
                                  2000, 4096),
                     DA_EPROTO);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 40\r\n\r\n"
                                         "{\"header\":{\"revision\":\"12x\"},\"kvs\":[]}  ",
                                  2000, 4096),
                     DA_EPROTO);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 5000\r\n\r\n", 2000, 1024), DA_EMSGSIZE);
    /* Without a length, the cap is met while reading. */
    static char big[8192];
    snprintf(big, sizeof big, "%s", HDR200 "Connection: close\r\n\r\n{\"kvs\":[");
    memset(big + strlen(big), ' ', sizeof big - strlen(big) - 1);
    ck_assert_int_eq(request_with(big, 2000, 1024), DA_EMSGSIZE);
    ck_assert_int_eq(request_with("@HANG", 300, 4096), DA_ETIMEDOUT);
    ck_assert_int_eq(request_with("@CLOSE", 2000, 4096), DA_ETRANSPORT);
    ck_assert_int_eq(
        request_with("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", 2000, 4096),
        DA_ENOLEADER);
    ck_assert_int_eq(request_with("HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno", 2000, 4096),
                     DA_EHTTP);
    ck_assert_int_eq(request_with(HDR200 "Content-Length: 2\r\n\r\n{}", 2000, 4096), 0);
}
END_TEST

/* A watch stream that sends a malformed line is torn down, reported DOWN,
 * and tried again; the receiver never sees the garbage. */
START_TEST(test_watch_bad_stream)
{
    static const char *replies[] = {
        HDR200 "Transfer-Encoding: chunked\r\n\r\n"
               "45\r\n{\"result\":{\"header\":{\"revision\":\"5\"},\"watch_id\":\"1\","
               "\"created\":true}}\n\r\n"
               "b\r\n{\"result\":\n\r\n"
               "2\r\n}\n\r\n",
    };
    struct fx f;
    struct view v = {0};
    struct responder *r = responder_start(replies, 1);
    const char *ep;
    etcd_watch *w = NULL;

    memset(&f, 0, sizeof f);
    ck_assert_ptr_nonnull(r);
    ep = responder_url(r);
    fx_client(&f, &ep, 1, NULL, NULL, 1000);
    ck_assert_int_eq(etcd_watch_start(f.etcd, "/x/", 3, "/x0", 3, 5, view_cb, &v, &w), 0);
    loop_for(&f.loop, 1500);
    ck_assert_int_ge(v.downs, 1);
    ck_assert_int_ge(responder_requests(r), 2);
    ck_assert_int_eq(v.events, 0);
    etcd_watch_close(w);
    fx_stop(&f);
    responder_stop(r);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("etcd");
    TCase *unit = tcase_create("unit");
    TCase *kv = tcase_create("kv");
    TCase *watch = tcase_create("watch");
    TCase *cluster = tcase_create("cluster");
    TCase *bad = tcase_create("bad-replies");

    tcase_add_test(unit, test_prefix_end);
    tcase_set_timeout(kv, 60);
    tcase_add_test(kv, test_kv_binary_keys);
    tcase_add_test(kv, test_txn_compare_and_put);
    tcase_add_test(kv, test_lease_lifecycle);
    tcase_set_timeout(watch, 60);
    tcase_add_test(watch, test_watch_events_in_order);
    tcase_add_test(watch, test_watches_share_one_stream);
    tcase_set_timeout(cluster, 90);
    tcase_add_test(cluster, test_watch_resume_after_restart);
    tcase_add_test(cluster, test_watch_compaction_resync);
    tcase_add_test(cluster, test_failover_second_endpoint);
    tcase_add_test(cluster, test_auth);
    tcase_add_test(cluster, test_tls);
    tcase_set_timeout(bad, 60);
    tcase_add_test(bad, test_bad_replies);
    tcase_add_test(bad, test_watch_bad_stream);
    suite_add_tcase(s, unit);
    suite_add_tcase(s, kv);
    suite_add_tcase(s, watch);
    suite_add_tcase(s, cluster);
    suite_add_tcase(s, bad);
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
