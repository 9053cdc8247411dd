/* In-process tests of the registry (agent/registry.c): a libuv loop, the
 * http client, an etcd client and the registry itself, against a real etcd
 * started by the harness, and against the scripted responder where the
 * order of etcd's answers must be chosen by the test. test_registrations
 * covers the same promises through a whole agent; here each one is driven
 * directly, so that a failure names the function that broke it.
 *
 * The registry's lease is set by the test (registry_set_lease), not by a
 * session: the session is created but never started, so session_check()
 * does nothing and every lease change is the test's own. */
#include <check.h>
#include <inttypes.h>
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
#include "registry.h"
#include "responder.h"
#include "session.h"

#define PREFIX "/micro"

/* ---- fixture ----------------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    http_client *http;
    etcd_client *etcd;  /* the registry's, and the test's own reads */
    etcd_client *cetcd; /* the cache's: etcd itself, or a second responder */
    cache *cache;
    session *session; /* never started: see the file's comment */
    registry *reg;
    struct etcd_cluster *cluster;
    struct responder *resp, *cresp;
};

static etcd_client *client_for(struct fx *f, const char *ep, long timeout_ms)
{
    struct etcd_options o = {0};
    etcd_client *c;

    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.timeout_ms = timeout_ms;
    o.max_reply = 1 << 20;
    ck_assert_int_eq(etcd_client_new(&c, &f->loop, f->http, &o), 0);
    return c;
}

static void fx_parts(struct fx *f)
{
    struct cache_options co = {.prefix = PREFIX};

    ck_assert_int_eq(cache_new(&f->cache, &f->loop, f->cetcd, &co), 0);
    ck_assert_int_eq(session_new(&f->session, &f->loop, f->etcd, 30, NULL, NULL), 0);
    ck_assert_int_eq(registry_new(&f->reg, &f->loop, f->etcd, f->cache, f->session, PREFIX, NULL),
                     0);
}

/* Everything against one real etcd member. */
static void fx_start(struct fx *f)
{
    struct etcd_cluster_opts co = {.members = 1};

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    f->etcd = client_for(f, etcd_member_url(f->cluster, 0), 3000);
    f->cetcd = f->etcd;
    fx_parts(f);
}

/* The registry's etcd is a responder serving replies[]; the cache's is a
 * second one that never answers, so the registry's service never becomes
 * ready and no healing interferes with the script. */
static void fx_start_scripted(struct fx *f, const char *const *replies, size_t n)
{
    static const char *const hang[] = {"@HANG"};

    memset(f, 0, sizeof *f);
    f->resp = responder_start(replies, n);
    f->cresp = responder_start(hang, 1);
    ck_assert_ptr_nonnull(f->resp);
    ck_assert_ptr_nonnull(f->cresp);
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    f->etcd = client_for(f, responder_url(f->resp), 10000);
    f->cetcd = client_for(f, responder_url(f->cresp), 60000);
    fx_parts(f);
}

static void fx_stop(struct fx *f)
{
    /* The registry unsubscribes from the cache, which stops its watches on
     * its client: free in that order, then the clients. */
    f->reg = registry_close(f->reg);
    f->cache = cache_close(f->cache);
    f->session = session_close(f->session);
    if (f->cetcd != f->etcd)
        f->cetcd = etcd_client_free(f->cetcd);
    f->etcd = etcd_client_free(f->etcd);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
    responder_stop(f->resp);
    responder_stop(f->cresp);
    etcd_cluster_stop(f->cluster);
}

/* ---- requests the test makes itself -------------------------------------- */

struct res {
    bool done;
    int err;
    int64_t revision, lease_id, ttl;
    bool found;
    char value[1024];
    size_t value_len;
    int64_t lease, mod_revision;
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
    s->found = r->n_kvs > 0;
    if (s->found) {
        s->value_len =
            r->kvs[0].value_len < sizeof s->value - 1 ? r->kvs[0].value_len : sizeof s->value - 1;
        memcpy(s->value, r->kvs[0].value, s->value_len);
        s->value[s->value_len] = '\0';
        s->lease = r->kvs[0].lease;
        s->mod_revision = r->kvs[0].mod_revision;
    }
}

static void wait_res(struct fx *f, struct res *s)
{
    ck_assert_msg(loop_until(&f->loop, &s->done, 10000), "etcd did not answer in 10 s");
}

static struct res get_key(struct fx *f, const char *key)
{
    struct res s = {0};

    ck_assert_int_eq(etcd_range(f->etcd, key, strlen(key), NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    wait_res(f, &s);
    ck_assert_int_eq(s.err, 0);
    return s;
}

static int64_t grant_lease(struct fx *f, int64_t ttl)
{
    struct res s = {0};

    ck_assert_int_eq(etcd_lease_grant(f->etcd, ttl, res_cb, &s, NULL), 0);
    wait_res(f, &s);
    ck_assert_int_eq(s.err, 0);
    ck_assert_int_ne(s.lease_id, 0);
    return s.lease_id;
}

static void revoke_lease(struct fx *f, int64_t lease)
{
    struct res s = {0};

    ck_assert_int_eq(etcd_lease_revoke(f->etcd, lease, res_cb, &s, NULL), 0);
    wait_res(f, &s);
    ck_assert_int_eq(s.err, 0);
}

static void ctl(struct fx *f, const char *const *args)
{
    char out[4096];

    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
}

/* Runs the loop until key holds value under lease (value NULL: until the
 * key is absent), reading etcd every 100 ms; false after 10 s. */
static bool wait_key(struct fx *f, const char *key, const char *value, int64_t lease)
{
    for (int i = 0; i < 100; i++) {
        struct res s = get_key(f, key);

        if (!value && !s.found)
            return true;
        if (value && s.found && !strcmp(s.value, value) && s.lease == lease)
            return true;
        loop_for(&f->loop, 100);
    }
    return false;
}

static bool settled(void *arg)
{
    return registry_settled(arg);
}

static void wait_settled(struct fx *f)
{
    ck_assert_msg(loop_until_fn(&f->loop, settled, f->reg, 10000),
                  "the registry did not settle in 10 s");
}

/* ---- registrations -------------------------------------------------------- */

struct done {
    bool called;
    int err;
    int calls;
    int requests; /* responder_requests() when it was called */
    struct responder *resp;
};

static void done_cb(int err, void *arg)
{
    struct done *d = arg;

    d->called = true;
    d->err = err;
    d->calls++;
    if (d->resp)
        d->requests = responder_requests(d->resp);
}

static struct instance inst_of(const char *name, const char *address, int32_t weight,
                               const char *group)
{
    struct instance i = {
        .name = (char *)name, .address = (char *)address, .weight = weight, .group = (char *)group};
    return i;
}

static int add(struct fx *f, const struct instance *inst, uint64_t owner, pid_t pid, struct done *d)
{
    char err[256] = "";

    return registry_add(f->reg, inst, owner, pid, NULL, d ? done_cb : NULL, d, err, sizeof err);
}

/* Adds inst for connection 1 of process 100 and runs the loop until the
 * key is written. */
static void add_written(struct fx *f, const struct instance *inst)
{
    struct done d = {0};

    ck_assert_int_eq(add(f, inst, 1, 100, &d), 0);
    ck_assert(loop_until(&f->loop, &d.called, 10000));
    ck_assert_int_eq(d.err, 0);
}

static void key_of(char *key, size_t len, const struct instance *inst)
{
    snprintf(key, len, "%s/%s/%s", PREFIX, inst->name, inst->address);
}

struct found {
    const char *address;
    struct reg_info ri;
    bool found;
};

static void find_fn(const struct reg_info *ri, void *arg)
{
    struct found *fo = arg;

    if (!strcmp(ri->inst->address, fo->address)) {
        fo->ri = *ri;
        fo->found = true;
    }
}

static struct found info(struct fx *f, const char *address)
{
    struct found fo = {.address = address};

    registry_foreach(f->reg, find_fn, &fo);
    return fo;
}

START_TEST(test_add_writes_under_lease)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.0.1:80", 7, "A");
    struct instance_meta meta = {.key = "version", .value = "1.4.2"};
    char key[256], *value;
    int64_t lease;

    inst.meta = &meta;
    inst.n_meta = 1;
    fx_start(&f);
    lease = grant_lease(&f, 30);
    registry_set_lease(f.reg, lease);
    add_written(&f, &inst);

    /* The exact value instance.c writes, under our lease, at the revision
     * the registry reports. */
    key_of(key, sizeof key, &inst);
    value = instance_to_value(&inst);
    ck_assert_ptr_nonnull(value);
    struct res s = get_key(&f, key);
    ck_assert(s.found);
    ck_assert_str_eq(s.value, value);
    ck_assert_int_eq(s.lease, lease);
    struct found fo = info(&f, inst.address);
    ck_assert(fo.found);
    ck_assert_int_eq(fo.ri.state, REG_REGISTERED);
    ck_assert_int_eq(fo.ri.revision, s.mod_revision);
    ck_assert_int_eq(registry_written_revision(f.reg, "user"), s.mod_revision);
    ck_assert(registry_settled(f.reg));
    free(value);

    /* Adding it again unchanged writes nothing: done comes at once. */
    struct done d = {0};
    size_t before = etcd_client_requests(f.etcd);
    ck_assert_int_eq(add(&f, &inst, 1, 100, &d), 0);
    ck_assert(d.called);
    ck_assert_int_eq(d.err, 0);
    ck_assert_uint_eq(etcd_client_requests(f.etcd), before);
    fx_stop(&f);
}
END_TEST

START_TEST(test_remove_deletes)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.0.2:80", 1, "");
    struct done d = {0};
    char key[256];

    fx_start(&f);
    registry_set_lease(f.reg, grant_lease(&f, 30));
    add_written(&f, &inst);
    key_of(key, sizeof key, &inst);
    ck_assert(get_key(&f, key).found);

    ck_assert_int_eq(registry_remove(f.reg, "user", "10.0.0.2:80", 1, 100, done_cb, &d), 0);
    ck_assert_uint_eq(registry_count(f.reg), 0);
    ck_assert(loop_until(&f.loop, &d.called, 10000));
    ck_assert_int_eq(d.err, 0);
    ck_assert(!get_key(&f, key).found);
    ck_assert_int_eq(registry_remove(f.reg, "user", "10.0.0.2:80", 1, 100, NULL, NULL), DA_ENOENT);
    fx_stop(&f);
}
END_TEST

/* The delete compares the mod_revision of our own write: a newer write of
 * the key, even one under our very lease (which a compare of the lease
 * alone would match), is left alone. */
START_TEST(test_delete_spares_newer_write)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.0.3:80", 1, "");
    struct done d = {0};
    char key[256], hex[32];
    int64_t lease;

    fx_start(&f);
    lease = grant_lease(&f, 30);
    registry_set_lease(f.reg, lease);
    add_written(&f, &inst);
    key_of(key, sizeof key, &inst);

    /* etcdctl runs while the loop does not: the registry cannot see (and
     * heal) the overwrite before the remove below. */
    snprintf(hex, sizeof hex, "--lease=%" PRIx64, (uint64_t)lease);
    ctl(&f, (const char *const[]){"put", hex, key, "someone else's", NULL});
    ck_assert_int_eq(registry_remove(f.reg, "user", "10.0.0.3:80", 1, 100, done_cb, &d), 0);
    ck_assert(loop_until(&f.loop, &d.called, 10000));
    ck_assert_int_eq(d.err, 0);

    struct res s = get_key(&f, key);
    ck_assert(s.found);
    ck_assert_str_eq(s.value, "someone else's");
    ck_assert_int_eq(s.lease, lease);
    fx_stop(&f);
}
END_TEST

/* ---- a put waits for the delete of its key ----------------------------- */

#define HDR200 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
#define ETCD_HEADER(rev)                                                                           \
    "\"header\":{\"cluster_id\":\"7\",\"member_id\":\"1\",\"revision\":\"" rev                     \
    "\",\"raft_term\":\"2\"}"
#define PUT_BODY(rev) "{" ETCD_HEADER(rev) "}"
#define TXN_BODY(rev)                                                                              \
    "{" ETCD_HEADER(rev) ",\"succeeded\":true,\"responses\":[{\"response_delete_range\":"          \
                         "{" ETCD_HEADER(rev) ",\"deleted\":\"1\"}}]}"

/* A raw 200 reply with body, its length counted here rather than by hand. */
static void reply_of(char *buf, size_t len, const char *body)
{
    snprintf(buf, len, HDR200 "%zu\r\n\r\n%s", strlen(body), body);
}

static bool both_called(void *arg)
{
    struct done **d = arg;

    return d[0]->called && d[1]->called;
}

/* Issue 12 item 1 in its deterministic form. A registration is removed and
 * the same instance registered again while the delete is unanswered: the
 * responder holds the delete's reply for a while, and the put of the new
 * registration must not be sent before that reply is read. Sent at once,
 * it could reach etcd before the delete and be removed by it (requests on
 * different connections are applied in whatever order they arrive). */
START_TEST(test_put_waits_for_delete)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.0.4:80", 1, "");
    char put1[512], txn[1024], held[1100], put2[512];
    struct done d1 = {0}, del = {0}, d2 = {0};

    reply_of(put1, sizeof put1, PUT_BODY("10"));
    reply_of(txn, sizeof txn, TXN_BODY("11"));
    snprintf(held, sizeof held, "@SLOW:1500:%s", txn);
    reply_of(put2, sizeof put2, PUT_BODY("12"));
    const char *replies[] = {put1, held, put2};
    fx_start_scripted(&f, replies, 3);
    del.resp = d2.resp = f.resp;

    registry_set_lease(f.reg, 0x1234);
    ck_assert_int_eq(add(&f, &inst, 1, 100, &d1), 0);
    ck_assert(loop_until(&f.loop, &d1.called, 10000));
    ck_assert_int_eq(d1.err, 0);
    ck_assert_int_eq(responder_requests(f.resp), 1);

    ck_assert_int_eq(registry_remove(f.reg, "user", "10.0.0.4:80", 1, 100, done_cb, &del), 0);
    /* Let the delete reach the responder first, so that the script's order
     * is the requests' order whatever the registry does next. */
    for (int i = 0; i < 500 && responder_requests(f.resp) < 2; i++)
        loop_for(&f.loop, 10);
    ck_assert_int_eq(responder_requests(f.resp), 2);
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 1), "POST /v3/kv/txn "));
    ck_assert(!del.called);

    ck_assert_int_eq(add(&f, &inst, 2, 100, &d2), 0);
    struct done *both[2] = {&del, &d2};
    ck_assert(loop_until_fn(&f.loop, both_called, both, 10000));
    ck_assert_int_eq(del.err, 0);
    ck_assert_int_eq(d2.err, 0);

    /* The delete was answered before the put was sent: when its callback
     * ran, the responder had read two requests, and the put came third. */
    ck_assert_msg(del.requests == 2,
                  "the put was sent while the delete of its key was in flight "
                  "(%d requests when the delete was answered)",
                  del.requests);
    ck_assert_int_ge(responder_requests(f.resp), 3);
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 2), "POST /v3/kv/put "));
    ck_assert_int_eq(registry_written_revision(f.reg, "user"), 12);
    fx_stop(&f);
}
END_TEST

/* ---- ownership, drain, leases -------------------------------------------- */

START_TEST(test_ownership)
{
    struct fx f;
    struct instance a = inst_of("user", "10.0.1.1:80", 1, "");
    struct instance b = inst_of("user", "10.0.1.2:80", 1, "");
    struct instance c = inst_of("user", "10.0.1.3:80", 1, "");
    char err[256] = "";

    fx_start(&f);
    registry_set_lease(f.reg, grant_lease(&f, 30));

    /* A connection's registration: another connection of the same process
     * (a client that reconnected) takes it over; another process, or a
     * peer whose process is unknown, is refused with a reason. */
    ck_assert_int_eq(add(&f, &a, 7, 100, NULL), 0);
    ck_assert_int_eq(add(&f, &a, 8, 100, NULL), 0);
    ck_assert_uint_eq(info(&f, a.address).ri.owner, 8);
    ck_assert_int_eq(registry_add(f.reg, &a, 9, 200, NULL, NULL, NULL, err, sizeof err), DA_EACCES);
    ck_assert_ptr_nonnull(strstr(err, "pid 100"));
    ck_assert_int_eq(add(&f, &a, 10, 0, NULL), DA_EACCES);
    ck_assert_int_eq(registry_remove(f.reg, "user", a.address, 9, 200, NULL, NULL), DA_EACCES);
    ck_assert_uint_eq(info(&f, a.address).ri.owner, 8);
    /* The old connection closing no longer takes it away. */
    registry_remove_owner(f.reg, 7);
    ck_assert(info(&f, a.address).found);

    /* The configuration's cannot be taken or removed by any connection. */
    ck_assert_int_eq(add(&f, &b, REG_OWNER_CONFIG, 0, NULL), 0);
    err[0] = '\0';
    ck_assert_int_eq(registry_add(f.reg, &b, 8, 100, NULL, NULL, NULL, err, sizeof err), DA_EACCES);
    ck_assert_ptr_nonnull(strstr(err, "configuration"));
    ck_assert_int_eq(registry_remove(f.reg, "user", b.address, 8, 100, NULL, NULL), DA_EACCES);
    ck_assert_uint_eq(info(&f, b.address).ri.owner, REG_OWNER_CONFIG);

    /* A persistent one passes to anyone. */
    ck_assert_int_eq(add(&f, &c, REG_OWNER_RUNTIME, 0, NULL), 0);
    ck_assert_int_eq(add(&f, &c, 9, 200, NULL), 0);
    ck_assert_uint_eq(info(&f, c.address).ri.owner, 9);

    wait_settled(&f);
    ck_assert_uint_eq(registry_count(f.reg), 3);
    registry_remove_owner(f.reg, 8);
    ck_assert(!info(&f, a.address).found);
    ck_assert_int_eq(registry_remove(f.reg, "user", b.address, REG_OWNER_CONFIG, 0, NULL, NULL), 0);
    ck_assert_uint_eq(registry_count(f.reg), 1);
    fx_stop(&f);
}
END_TEST

START_TEST(test_drain_and_undrain)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.2.1:80", 3, "B");
    char key[256], *value = instance_to_value(&inst);
    int64_t lease;

    ck_assert_ptr_nonnull(value);
    fx_start(&f);
    lease = grant_lease(&f, 30);
    registry_set_lease(f.reg, lease);
    add_written(&f, &inst);
    key_of(key, sizeof key, &inst);

    ck_assert_int_eq(registry_drain(f.reg, "user", inst.address, true), 0);
    ck_assert_msg(wait_key(&f, key, NULL, 0), "a drained instance stayed in etcd");
    struct found fo = info(&f, inst.address);
    ck_assert_int_eq(fo.ri.state, REG_WITHHELD);
    ck_assert(fo.ri.drained);
    /* It stays out: nothing heals it back while drained. */
    loop_for(&f.loop, 500);
    ck_assert(!get_key(&f, key).found);

    ck_assert_int_eq(registry_drain(f.reg, "user", inst.address, false), 0);
    ck_assert_msg(wait_key(&f, key, value, lease), "an undrained instance was not written back");
    wait_settled(&f);
    ck_assert_int_eq(info(&f, inst.address).ri.state, REG_REGISTERED);
    ck_assert_int_eq(registry_drain(f.reg, "user", "10.9.9.9:80", true), DA_ENOENT);
    free(value);
    fx_stop(&f);
}
END_TEST

/* A lost lease, then a new one: every key is written again under it. */
START_TEST(test_new_lease_rewrites_every_key)
{
    struct fx f;
    struct instance insts[3] = {inst_of("user", "10.0.3.1:80", 1, ""),
                                inst_of("user", "10.0.3.2:80", 1, ""),
                                inst_of("order", "10.0.3.3:80", 1, "")};
    char key[256];
    int64_t l1, l2;

    fx_start(&f);
    l1 = grant_lease(&f, 30);
    registry_set_lease(f.reg, l1);
    for (int i = 0; i < 3; i++)
        add_written(&f, &insts[i]);
    wait_settled(&f);

    registry_set_lease(f.reg, 0);
    ck_assert(!registry_settled(f.reg));
    revoke_lease(&f, l1); /* the keys go with it */
    for (int i = 0; i < 3; i++) {
        key_of(key, sizeof key, &insts[i]);
        ck_assert(!get_key(&f, key).found);
    }
    l2 = grant_lease(&f, 30);
    registry_set_lease(f.reg, l2);
    wait_settled(&f);
    for (int i = 0; i < 3; i++) {
        char *value = instance_to_value(&insts[i]);
        key_of(key, sizeof key, &insts[i]);
        struct res s = get_key(&f, key);
        ck_assert_msg(s.found, "%s was not written again under the new lease", key);
        ck_assert_str_eq(s.value, value);
        ck_assert_int_eq(s.lease, l2);
        free(value);
    }
    fx_stop(&f);
}
END_TEST

/* A key of ours deleted by someone else comes back. */
START_TEST(test_heal_deleted_key)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.4.1:80", 1, "");
    char key[256], *value = instance_to_value(&inst);
    int64_t lease;

    ck_assert_ptr_nonnull(value);
    fx_start(&f);
    lease = grant_lease(&f, 30);
    registry_set_lease(f.reg, lease);
    add_written(&f, &inst);
    key_of(key, sizeof key, &inst);
    /* The registry follows its service through the cache: let the cache
     * have seen our write before the key goes. */
    wait_settled(&f);
    loop_for(&f.loop, 300);

    ctl(&f, (const char *const[]){"del", key, NULL});
    ck_assert_msg(wait_key(&f, key, value, lease), "a deleted key of ours was not healed");
    free(value);
    fx_stop(&f);
}
END_TEST

/* After etcd's history restarts (wiped here), the revision the registry
 * wrote at means nothing: a read waiting for it would wait out the
 * timeout. It is dropped once the etcd client has seen the new history,
 * and set again by the next write. */
START_TEST(test_written_revision_dropped_after_wipe)
{
    struct fx f;
    struct instance inst = inst_of("user", "10.0.5.1:80", 1, "");
    char key[256];
    unsigned epoch;
    int64_t rev;

    fx_start(&f);
    registry_set_lease(f.reg, grant_lease(&f, 30));
    add_written(&f, &inst);
    key_of(key, sizeof key, &inst);
    rev = registry_written_revision(f.reg, "user");
    ck_assert_int_gt(rev, 0);
    ck_assert_int_eq(rev, get_key(&f, key).mod_revision);
    epoch = etcd_client_epoch(f.etcd);

    /* Give the wiped etcd a history longer than ours was, so that only the
     * new cluster id (not a revision going back) tells the client. */
    registry_set_lease(f.reg, 0);
    ck_assert_int_eq(etcd_member_wipe(f.cluster, 0), 0);
    for (int i = 0; i <= rev; i++)
        ctl(&f, (const char *const[]){"put", "/other/k", "v", NULL});
    struct res s = get_key(&f, key);
    ck_assert(!s.found);
    ck_assert_int_gt(s.revision, rev);
    ck_assert_uint_ne(etcd_client_epoch(f.etcd), epoch);
    ck_assert_int_eq(registry_written_revision(f.reg, "user"), 0);

    /* The next lease writes the key again, in the new history. */
    registry_set_lease(f.reg, grant_lease(&f, 30));
    wait_settled(&f);
    s = get_key(&f, key);
    ck_assert(s.found);
    ck_assert_int_eq(registry_written_revision(f.reg, "user"), s.mod_revision);
    fx_stop(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("registry");
    TCase *etcd = tcase_create("etcd");
    TCase *scripted = tcase_create("scripted");

    tcase_set_timeout(etcd, 60);
    tcase_add_test(etcd, test_add_writes_under_lease);
    tcase_add_test(etcd, test_remove_deletes);
    tcase_add_test(etcd, test_delete_spares_newer_write);
    tcase_add_test(etcd, test_ownership);
    tcase_add_test(etcd, test_drain_and_undrain);
    tcase_add_test(etcd, test_new_lease_rewrites_every_key);
    tcase_add_test(etcd, test_heal_deleted_key);
    tcase_add_test(etcd, test_written_revision_dropped_after_wipe);
    tcase_set_timeout(scripted, 30);
    tcase_add_test(scripted, test_put_waits_for_delete);
    suite_add_tcase(s, etcd);
    suite_add_tcase(s, scripted);
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
