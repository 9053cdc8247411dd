/* Regression tests for what the fuzzers (fuzz/) found: each test feeds the
 * input a fuzzer reported to the same function the fuzzer calls, and
 * checks the promise the fuzzer found broken. The raw inputs are also in
 * fuzz/regressions/TARGET/, which `make fuzz-quick` replays through the
 * fuzzers themselves.
 *
 * This file includes etcd_watch.c and etcd_watch_stream.c to reach their
 * static line splitter and handlers, as fuzz/fuzz_watch_stream.c does; linking with libagent.a is still fine,
 * because an archive member is only pulled in for symbols still missing. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_watch.c"
#include "etcd_watch_stream.c"

/* ---- FUZZ REGRESSION 1: watch events out of revision order --------------
 * Found by fuzz_watch_stream (and fuzz_watch_line). A watch response whose
 * events go down in revision (2, then 1) was accepted: the watch delivered
 * both, in that order, and moved its resume point back to revision 2, so a
 * resumed stream would deliver revision 2 again and the cache applied an
 * older change after a newer one. etcd never sends this, but the parsers
 * promise to check every shape of what they read. */

static const char unordered_line[] =
    "{\"result\":{\"events\":[{\"kv\":{\"key\":\"L2EvMg==\",\"mod_revision\":\"2\"}},"
    "{\"kv\":{\"key\":\"L2EvMQ==\",\"mod_revision\":\"1\"}}]}}";

START_TEST(test_watch_line_events_out_of_order)
{
    struct etcd_watch_msg m;
    struct etcd_error e;
    int rc = etcd_parse_watch_line(unordered_line, strlen(unordered_line), &m, &e);

    if (rc == 0) {
        for (size_t i = 1; i < m.n_events; i++)
            ck_assert_msg(m.events[i].kv.mod_revision >= m.events[i - 1].kv.mod_revision,
                          "event %zu (revision %lld) after revision %lld", i,
                          (long long)m.events[i].kv.mod_revision,
                          (long long)m.events[i - 1].kv.mod_revision);
        etcd_watch_msg_clear(&m);
    } else {
        ck_assert_int_eq(rc, DA_EPROTO);
    }
}
END_TEST

static int64_t delivered;

static void on_update(etcd_watch *w, const struct etcd_watch_update *u, void *arg)
{
    (void)w;
    (void)arg;
    ck_assert_int_eq(u->kind, ETCD_WATCH_EVENTS);
    for (size_t i = 0; i < u->n_events; i++) {
        ck_assert_msg(u->events[i].kv.mod_revision > delivered,
                      "revision %lld delivered after revision %lld",
                      (long long)u->events[i].kv.mod_revision, (long long)delivered);
        delivered = u->events[i].kv.mod_revision;
    }
}

START_TEST(test_watch_stream_events_out_of_order)
{
    static const char *const endpoints[] = {"http://127.0.0.1:1"};
    struct etcd_options o = {.endpoints = endpoints, .n_endpoints = 1};
    etcd_client *client;
    etcd_watch *w;
    char chunk[sizeof unordered_line + 1];

    /* The client only records the outcome; nothing is sent: the watch is
     * put on a stream by hand (id 0, as a line without watch_id names) and
     * stopped before the loop runs. */
    ck_assert_int_eq(etcd_client_new(&client, uv_default_loop(), NULL, &o), 0);
    ck_assert_int_eq(etcd_watch_start(client, "/a/", 3, NULL, 0, 1, on_update, NULL, &w), 0);
    ck_assert_ptr_nonnull(get(client));
    w->need_snapshot = false;
    w->on_stream = true;
    delivered = 0;
    memcpy(chunk, unordered_line, sizeof unordered_line - 1);
    chunk[sizeof unordered_line - 1] = '\n';
    /* Either the line is refused (the stream ends: 1) or it is delivered
     * in order; on_update checks the latter. */
    (void)on_chunk(NULL, chunk, sizeof chunk, client->ws);
    ck_assert_int_le(w->next_rev, 3);
    ck_assert_int_ge(w->next_rev - 1, delivered);
    etcd_watch_close(w);
    etcd_client_free(client);
    uv_run(uv_default_loop(), UV_RUN_NOWAIT);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fuzz_regressions");
    TCase *tc = tcase_create("regressions");
    SRunner *sr;
    int failed;

    /* The refusals these tests expect are logged as warnings. */
    log_level = LOG_LVL_ERROR;
    tcase_add_test(tc, test_watch_line_events_out_of_order);
    tcase_add_test(tc, test_watch_stream_events_out_of_order);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
