/* Unit tests of etcd_parse.c and b64.c. Replies the parser must refuse live
 * as data in test/data/etcd-replies/invalid and test/data/etcd-watch/invalid:
 * each file is one body, and each must give DA_EPROTO (never a crash). */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "error.h"
#include "etcd_parse.h"

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/data"
#endif

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = malloc(1 << 16);

    ck_assert_ptr_nonnull(f);
    *len = fread(buf, 1, (1 << 16) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int each_case(const char *sub, int (*fn)(const char *, size_t))
{
    char dir[512], path[1024];
    DIR *d;
    struct dirent *e;
    int n = 0;

    snprintf(dir, sizeof dir, "%s/%s", TEST_DATA_DIR, sub);
    d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d))) {
        size_t len;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *body = slurp(path, &len);
        int rc = fn(body, len);
        ck_assert_msg(rc == DA_EPROTO, "%s: got %d, want DA_EPROTO", e->d_name, rc);
        free(body);
        n++;
    }
    closedir(d);
    return n;
}

static int reply_case(const char *body, size_t len)
{
    struct etcd_result r;
    struct etcd_error e;
    int rc = etcd_parse_reply(body, len, &r, &e);
    if (!rc)
        etcd_result_clear(&r);
    return rc;
}

static int watch_case(const char *body, size_t len)
{
    struct etcd_watch_msg m;
    struct etcd_error e;
    int rc = etcd_parse_watch_line(body, len, &m, &e);
    if (!rc)
        etcd_watch_msg_clear(&m);
    return rc;
}

START_TEST(test_invalid_replies)
{
    ck_assert_int_ge(each_case("etcd-replies/invalid", reply_case), 20);
}
END_TEST

START_TEST(test_invalid_watch_lines)
{
    ck_assert_int_ge(each_case("etcd-watch/invalid", watch_case), 9);
}
END_TEST

#define PARSE(body, r, e) etcd_parse_reply(body, strlen(body), r, e)

START_TEST(test_range_reply)
{
    struct etcd_result r;
    struct etcd_error e;
    const char *body =
        "{\"header\":{\"cluster_id\":\"1\",\"member_id\":\"3319814642761637952\","
        "\"revision\":\"42\",\"raft_term\":\"2\"},\"kvs\":[{\"key\":\"L21pY3JvL2EvMQ==\","
        "\"create_revision\":\"2\",\"mod_revision\":\"40\",\"version\":\"3\",\"value\":\"djE=\","
        "\"lease\":\"7\"},{\"key\":\"L2I=\"}],\"count\":\"2\",\"more\":true}";

    ck_assert_int_eq(PARSE(body, &r, &e), 0);
    ck_assert_int_eq(r.revision, 42);
    ck_assert_uint_eq(r.member_id, 3319814642761637952ull);
    ck_assert_uint_eq(r.n_kvs, 2);
    ck_assert_str_eq(r.kvs[0].key, "/micro/a/1");
    ck_assert_str_eq(r.kvs[0].value, "v1");
    ck_assert_int_eq(r.kvs[0].mod_revision, 40);
    ck_assert_int_eq(r.kvs[0].lease, 7);
    ck_assert_str_eq(r.kvs[1].key, "/b");
    ck_assert_uint_eq(r.kvs[1].value_len, 0);
    ck_assert_int_eq(r.count, 2);
    ck_assert(r.more);
    etcd_result_clear(&r);
}
END_TEST

START_TEST(test_lease_replies)
{
    struct etcd_result r;
    struct etcd_error e;

    ck_assert_int_eq(PARSE("{\"result\":{\"header\":{},\"ID\":\"12\",\"TTL\":\"10\"}}", &r, &e), 0);
    ck_assert_int_eq(r.lease_id, 12);
    ck_assert_int_eq(r.ttl, 10);
    etcd_result_clear(&r);
    /* A keep-alive of a lease that is gone: no TTL. */
    ck_assert_int_eq(PARSE("{\"result\":{\"header\":{},\"ID\":\"12\"}}", &r, &e), 0);
    ck_assert_int_eq(r.ttl, -1);
    etcd_result_clear(&r);
    ck_assert_int_eq(PARSE("{\"error\":\"etcdserver: requested lease not found\",\"message\":"
                           "\"etcdserver: requested lease not found\",\"code\":5}",
                           &r, &e),
                     DA_ELEASE);
    ck_assert_int_eq(e.code, 5);
}
END_TEST

START_TEST(test_txn_and_errors)
{
    struct etcd_result r;
    struct etcd_error e;

    ck_assert_int_eq(PARSE("{\"header\":{\"revision\":\"8\"},\"responses\":[{\"response_range\":"
                           "{\"header\":{\"revision\":\"8\"},\"kvs\":[{\"key\":\"YQ==\",\"value\":"
                           "\"Yg==\"}],\"count\":\"1\"}}]}",
                           &r, &e),
                     0);
    ck_assert(!r.succeeded);
    ck_assert_uint_eq(r.n_kvs, 1);
    ck_assert_str_eq(r.kvs[0].value, "b");
    etcd_result_clear(&r);
    ck_assert_int_eq(PARSE("{\"error\":\"etcdserver: no leader\",\"message\":\"etcdserver: no "
                           "leader\",\"code\":14}",
                           &r, &e),
                     DA_ENOLEADER);
    ck_assert_int_eq(PARSE("{\"error\":\"etcdserver: invalid auth token\",\"code\":16}", &r, &e),
                     DA_EAUTH);
    ck_assert_str_eq(e.message, "etcdserver: invalid auth token");
    ck_assert_int_eq(PARSE("{\"error\":\"x\",\"code\":3}", &r, &e), DA_EETCD);
}
END_TEST

START_TEST(test_watch_lines)
{
    struct etcd_watch_msg m;
    struct etcd_error e;
    const char *ev = "{\"result\":{\"header\":{\"revision\":\"3\"},\"events\":[{\"kv\":{\"key\":"
                     "\"YQ==\",\"mod_revision\":\"2\",\"value\":\"djE=\"}},{\"type\":\"DELETE\","
                     "\"kv\":{\"key\":\"YQ==\",\"mod_revision\":\"3\"}}]}}";

    ck_assert_int_eq(etcd_parse_watch_line(ev, strlen(ev), &m, &e), 0);
    ck_assert_int_eq(m.revision, 3);
    ck_assert_uint_eq(m.n_events, 2);
    ck_assert_int_eq(m.events[0].type, ETCD_EVENT_PUT);
    ck_assert_str_eq(m.events[0].kv.value, "v1");
    ck_assert_int_eq(m.events[1].type, ETCD_EVENT_DELETE);
    ck_assert_int_eq(m.events[1].kv.mod_revision, 3);
    etcd_watch_msg_clear(&m);

    const char *cancel =
        "{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"6\"}}";
    ck_assert_int_eq(etcd_parse_watch_line(cancel, strlen(cancel), &m, &e), 0);
    ck_assert(m.canceled);
    ck_assert_int_eq(m.compact_revision, 6);
    etcd_watch_msg_clear(&m);

    const char *err = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: "
                      "no leader\",\"http_status\":\"Service Unavailable\"}}";
    ck_assert_int_eq(etcd_parse_watch_line(err, strlen(err), &m, &e), DA_ENOLEADER);
    ck_assert_int_eq(e.code, 14);
}
END_TEST

START_TEST(test_b64)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char buf[64], *out;
    size_t len;

    for (int i = 0; i < 7; i++) {
        b64_encode(plain[i], strlen(plain[i]), buf);
        ck_assert_str_eq(buf, enc[i]);
        ck_assert_int_eq(b64_decode(enc[i], strlen(enc[i]), &out, &len), 0);
        ck_assert_uint_eq(len, strlen(plain[i]));
        ck_assert_mem_eq(out, plain[i], len);
        free(out);
    }
    /* Every byte value survives a round trip. */
    unsigned char all[256];
    char e[B64_ENCODED_SIZE(256)];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    b64_encode(all, 256, e);
    ck_assert_int_eq(b64_decode(e, strlen(e), &out, &len), 0);
    ck_assert_uint_eq(len, 256);
    ck_assert_mem_eq(out, all, 256);
    free(out);
    static const char *const bad[] = {"Zg=", "Z===", "Zg=a", "=Zg=", "Zm9v!A==", "Zm\n9v"};
    for (int i = 0; i < 6; i++)
        ck_assert_msg(b64_decode(bad[i], strlen(bad[i]), &out, &len) == -EINVAL, "%s", bad[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("etcd_parse");
    TCase *tc = tcase_create("parse");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_invalid_replies);
    tcase_add_test(tc, test_invalid_watch_lines);
    tcase_add_test(tc, test_range_reply);
    tcase_add_test(tc, test_lease_replies);
    tcase_add_test(tc, test_txn_and_errors);
    tcase_add_test(tc, test_watch_lines);
    tcase_add_test(tc, test_b64);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
