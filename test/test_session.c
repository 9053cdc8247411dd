/* In-process tests of the session (agent/session.c): a libuv loop, the
 * http client, an etcd client and one session, against a real etcd
 * started by the harness, and against the scripted responder for the
 * exact sequence of etcd's answers. The agent-level tests (test_agent,
 * test_faults) cover the same lease through a whole agent. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "etcd.h"
#include "etcd_proc.h"
#include "http.h"
#include "log.h"
#include "looptest.h"
#include "responder.h"
#include "session.h"

/* ---- fixture ----------------------------------------------------------- */

#define MAX_CALLS 16

struct fx {
    uv_loop_t loop;
    http_client *http;
    etcd_client *etcd;
    session *s;
    struct etcd_cluster *cluster;
    struct responder *resp;
    /* Every lease the session callback was given, in order. */
    int64_t calls[MAX_CALLS];
    int n_calls;
    int want; /* see wait_calls() */
};

static void session_cb_rec(session *s, int64_t lease, void *arg)
{
    struct fx *f = arg;

    ck_assert_ptr_eq(s, f->s);
    ck_assert_int_lt(f->n_calls, MAX_CALLS);
    f->calls[f->n_calls++] = lease;
}

static void fx_open(struct fx *f, const char *ep, int64_t ttl_s)
{
    struct etcd_options o = {0};

    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    o.endpoints = &ep;
    o.n_endpoints = 1;
    o.timeout_ms = 2000;
    o.max_reply = 1 << 20;
    ck_assert_int_eq(etcd_client_new(&f->etcd, &f->loop, f->http, &o), 0);
    ck_assert_int_eq(session_new(&f->s, &f->loop, f->etcd, ttl_s, session_cb_rec, f), 0);
}

static void fx_start(struct fx *f, int64_t ttl_s)
{
    struct etcd_cluster_opts co = {.members = 1};

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    fx_open(f, etcd_member_url(f->cluster, 0), ttl_s);
}

static void fx_start_scripted(struct fx *f, const char *const *replies, size_t n, int64_t ttl_s)
{
    memset(f, 0, sizeof *f);
    f->resp = responder_start(replies, n);
    ck_assert_ptr_nonnull(f->resp);
    fx_open(f, responder_url(f->resp), ttl_s);
}

static void fx_stop(struct fx *f)
{
    f->s = session_close(f->s);
    f->etcd = etcd_client_free(f->etcd);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
    responder_stop(f->resp);
    etcd_cluster_stop(f->cluster);
}

static bool calls_at_least(void *arg)
{
    struct fx *f = arg;

    return f->n_calls >= f->want;
}

/* Runs the loop until the callback has been called n times. */
static bool wait_calls(struct fx *f, int n, int timeout_ms)
{
    f->want = n;
    return loop_until_fn(&f->loop, calls_at_least, f, timeout_ms);
}

/* What etcd says of a lease. */
struct res {
    bool done;
    int err;
    int64_t ttl, granted_ttl;
    size_t n_kvs;
};

static void res_cb(int err, const struct etcd_result *r, void *arg)
{
    struct res *s = arg;

    s->done = true;
    s->err = err;
    if (err)
        return;
    s->ttl = r->ttl;
    s->n_kvs = r->n_kvs;
}

static void lease_hex(char *buf, size_t len, int64_t lease);

/* The lease as etcd sees it, asked with etcdctl (a Go clientv3 client, so
 * the judge is not the code under test): ttl -1 once it is gone. */
static struct res lease_ttl(struct fx *f, int64_t lease)
{
    struct res s = {0};
    char hex[32], out[512];
    const char *args[] = {"lease", "timetolive", hex, NULL};
    const char *p;

    lease_hex(hex, sizeof hex, lease);
    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
    if (strstr(out, "already expired")) {
        s.ttl = -1;
    } else {
        ck_assert_msg((p = strstr(out, "TTL(")) != NULL, "etcdctl said: %s", out);
        ck_assert_int_eq(
            sscanf(p, "TTL(%" SCNd64 "s), remaining(%" SCNd64 "s)", &s.granted_ttl, &s.ttl), 2);
    }
    return s;
}

static void lease_hex(char *buf, size_t len, int64_t lease)
{
    snprintf(buf, len, "%" PRIx64, (uint64_t)lease);
}

/* ---- against etcd -------------------------------------------------------- */

START_TEST(test_grant_with_configured_ttl)
{
    struct fx f;

    fx_start(&f, 7);
    ck_assert_int_eq(session_lease(f.s), 0);
    ck_assert_int_eq(session_since_keepalive(f.s), -1);
    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    ck_assert_int_ne(f.calls[0], 0);
    ck_assert_int_eq(session_lease(f.s), f.calls[0]);
    ck_assert_int_eq(session_ttl(f.s), 7);
    ck_assert_uint_eq(session_grants(f.s), 1);
    ck_assert_int_gt(session_remaining_ms(f.s), 0);
    ck_assert_int_ge(session_since_keepalive(f.s), 0);

    struct res s = lease_ttl(&f, f.calls[0]);
    ck_assert_int_eq(s.granted_ttl, 7);
    ck_assert_int_gt(s.ttl, 0);
    fx_stop(&f);
}
END_TEST

/* Kept alive for several TTLs: the same lease, granted once, alive. */
START_TEST(test_keepalives_renew)
{
    struct fx f;
    size_t before;

    fx_start(&f, 2);
    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    before = etcd_client_requests(f.etcd);
    loop_for(&f.loop, 5000);
    ck_assert_int_eq(f.n_calls, 1);
    ck_assert_int_eq(session_lease(f.s), f.calls[0]);
    ck_assert_uint_eq(session_grants(f.s), 1);
    /* A keep-alive every third of the TTL: several in two and a half TTLs. */
    ck_assert_uint_ge(etcd_client_requests(f.etcd) - before, 3);
    struct res s = lease_ttl(&f, f.calls[0]);
    ck_assert_msg(s.ttl > 0, "the lease expired although the session kept it alive");
    fx_stop(&f);
}
END_TEST

/* A lease revoked behind the session's back is noticed at the next
 * keep-alive: the callback hears 0, then the new lease. */
START_TEST(test_revoked_lease_replaced)
{
    struct fx f;
    char hex[32], out[1024];

    fx_start(&f, 3);
    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    lease_hex(hex, sizeof hex, f.calls[0]);
    ck_assert_int_eq(
        etcdctl(f.cluster, out, sizeof out, (const char *const[]){"lease", "revoke", hex, NULL}),
        0);
    ck_assert_msg(wait_calls(&f, 3, 10000), "the revoked lease was not replaced (%d calls)",
                  f.n_calls);
    ck_assert_int_eq(f.n_calls, 3);
    ck_assert_int_eq(f.calls[1], 0);
    ck_assert_int_ne(f.calls[2], 0);
    ck_assert_int_ne(f.calls[2], f.calls[0]);
    ck_assert_int_eq(session_lease(f.s), f.calls[2]);
    ck_assert_uint_eq(session_grants(f.s), 2);
    ck_assert_int_gt(lease_ttl(&f, f.calls[2]).ttl, 0);
    fx_stop(&f);
}
END_TEST

/* etcd out of reach for longer than the TTL is no lost lease: etcd itself
 * extends leases when it comes back, and only etcd may say one is gone. */
START_TEST(test_unreachable_keeps_lease)
{
    struct fx f;

    fx_start(&f, 2);
    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    ck_assert_int_eq(etcd_member_stop(f.cluster, 0), 0);
    loop_for(&f.loop, 3000);
    ck_assert_int_eq(f.n_calls, 1);
    ck_assert_int_eq(session_lease(f.s), f.calls[0]);
    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);
    loop_for(&f.loop, 2000);
    ck_assert_int_eq(f.n_calls, 1);
    ck_assert_int_eq(session_lease(f.s), f.calls[0]);
    ck_assert_int_gt(lease_ttl(&f, f.calls[0]).ttl, 0);
    fx_stop(&f);
}
END_TEST

struct stopped {
    bool done;
};

static void stop_done(void *arg)
{
    ((struct stopped *)arg)->done = true;
}

/* Stop revokes the lease (its keys go at once), and nothing is sent or
 * called back after. */
START_TEST(test_stop_revokes)
{
    struct fx f;
    struct res s = {0};
    struct stopped st = {0};
    int64_t lease;
    size_t after;

    fx_start(&f, 3);
    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    lease = f.calls[0];
    ck_assert_int_eq(etcd_put(f.etcd, "/s/k", 4, "v", 1, lease, res_cb, &s, NULL), 0);
    ck_assert(loop_until(&f.loop, &s.done, 10000));
    ck_assert_int_eq(s.err, 0);

    session_stop(f.s, stop_done, &st);
    ck_assert(loop_until(&f.loop, &st.done, 10000));
    ck_assert_int_eq(session_lease(f.s), 0);
    ck_assert_int_eq(lease_ttl(&f, lease).ttl, -1);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(etcd_range(f.etcd, "/s/k", 4, NULL, 0, 0, 0, res_cb, &s, NULL), 0);
    ck_assert(loop_until(&f.loop, &s.done, 10000));
    ck_assert_uint_eq(s.n_kvs, 0);

    /* Past the next keep-alive's time: nothing. */
    after = etcd_client_requests(f.etcd);
    loop_for(&f.loop, 1500);
    ck_assert_uint_eq(etcd_client_requests(f.etcd), after);
    ck_assert_int_eq(f.n_calls, 1);
    session_check(f.s);
    ck_assert_uint_eq(etcd_client_requests(f.etcd), after);
    fx_stop(&f);
}
END_TEST

/* ---- scripted --------------------------------------------------------------- */

#define HDR200 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
#define ETCD_HEADER                                                                                \
    "\"header\":{\"cluster_id\":\"7\",\"member_id\":\"1\",\"revision\":\"5\",\"raft_term\":\"2\"}"

static void reply_of(char *buf, size_t len, const char *body)
{
    snprintf(buf, len, HDR200 "%zu\r\n\r\n%s", strlen(body), body);
}

/* The exact sequence: a grant with the configured TTL, a keep-alive that
 * etcd answers without a TTL (the lease is gone: the gateway drops a zero
 * TTL), then a new grant, and keep-alives of the new lease. The callback
 * hears 100, 0, 200, in that order, and nothing more. */
START_TEST(test_gone_lease_sequence)
{
    struct fx f;
    char g1[512], gone[512], g2[512], kept[512];

    reply_of(g1, sizeof g1, "{" ETCD_HEADER ",\"ID\":\"100\",\"TTL\":\"3\"}");
    reply_of(gone, sizeof gone, "{\"result\":{" ETCD_HEADER ",\"ID\":\"100\"}}");
    reply_of(g2, sizeof g2, "{" ETCD_HEADER ",\"ID\":\"200\",\"TTL\":\"3\"}");
    reply_of(kept, sizeof kept, "{\"result\":{" ETCD_HEADER ",\"ID\":\"200\",\"TTL\":\"3\"}}");
    const char *replies[] = {g1, gone, g2, kept};
    fx_start_scripted(&f, replies, 4, 3);

    session_start(f.s);
    ck_assert(wait_calls(&f, 3, 10000));
    /* One more keep-alive of the new lease, answered alive. */
    for (int i = 0; i < 300 && responder_requests(f.resp) < 4; i++)
        loop_for(&f.loop, 10);
    loop_for(&f.loop, 100);
    ck_assert_int_eq(f.n_calls, 3);
    ck_assert_int_eq(f.calls[0], 100);
    ck_assert_int_eq(f.calls[1], 0);
    ck_assert_int_eq(f.calls[2], 200);
    ck_assert_int_eq(session_lease(f.s), 200);
    ck_assert_uint_eq(session_grants(f.s), 2);

    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 0), "POST /v3/lease/grant "));
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 0), "\"TTL\":\"3\""));
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 1), "POST /v3/lease/keepalive "));
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 1), "\"ID\":\"100\""));
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 2), "POST /v3/lease/grant "));
    ck_assert_ptr_nonnull(strstr(responder_request(f.resp, 3), "\"ID\":\"200\""));
    fx_stop(&f);
}
END_TEST

/* Keep-alives that fail on the transport are retried inside the TTL and
 * never taken for a lost lease: the callback hears nothing. */
START_TEST(test_failed_keepalives_retried)
{
    struct fx f;
    char g1[512], kept[512];

    reply_of(g1, sizeof g1, "{" ETCD_HEADER ",\"ID\":\"100\",\"TTL\":\"6\"}");
    reply_of(kept, sizeof kept, "{\"result\":{" ETCD_HEADER ",\"ID\":\"100\",\"TTL\":\"6\"}}");
    const char *replies[] = {g1, "@RESET", "@RESET", "@RESET", kept};
    fx_start_scripted(&f, replies, 5, 6);

    session_start(f.s);
    ck_assert(wait_calls(&f, 1, 10000));
    for (int i = 0; i < 1000 && responder_requests(f.resp) < 6; i++)
        loop_for(&f.loop, 10);
    ck_assert_int_ge(responder_requests(f.resp), 6);
    ck_assert_int_eq(f.n_calls, 1);
    ck_assert_int_eq(session_lease(f.s), 100);
    ck_assert_uint_eq(session_grants(f.s), 1);
    for (int i = 1; i < 6; i++)
        ck_assert_ptr_nonnull(strstr(responder_request(f.resp, i), "POST /v3/lease/keepalive "));
    fx_stop(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("session");
    TCase *etcd = tcase_create("etcd");
    TCase *scripted = tcase_create("scripted");

    tcase_set_timeout(etcd, 60);
    tcase_add_test(etcd, test_grant_with_configured_ttl);
    tcase_add_test(etcd, test_keepalives_renew);
    tcase_add_test(etcd, test_revoked_lease_replaced);
    tcase_add_test(etcd, test_unreachable_keeps_lease);
    tcase_add_test(etcd, test_stop_revokes);
    tcase_set_timeout(scripted, 30);
    tcase_add_test(scripted, test_gone_lease_sequence);
    tcase_add_test(scripted, test_failed_keepalives_retried);
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
