/* Unit tests for agent/validate.c: the one set of rules for names, groups,
 * weights, addresses and metadata that the config loader, the socket
 * protocol, the registry, the checks, xDS and libdiscovery share. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "validate.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    ck_assert_ptr_nonnull(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

START_TEST(host_and_port)
{
    static const struct {
        const char *s;
        int want;
    } cases[] = {
        {"10.0.0.5:8082", VALIDATE_OK},
        {"[::1]:50051", VALIDATE_OK},
        {"[fe80::1:2:3:4]:1", VALIDATE_OK},
        {"localhost:65535", VALIDATE_OK},
        {"a.b-c.d_e:80", VALIDATE_OK},
        {"1a.example:80", VALIDATE_OK},
        {"x:0", VALIDATE_PORT_RANGE},
        {"x:65536", VALIDATE_PORT_RANGE},
        {"x:99999999999999999999999", VALIDATE_PORT_RANGE},
        {"x:", VALIDATE_BAD},
        {":80", VALIDATE_BAD},
        {"x", VALIDATE_BAD},
        {"x:-1", VALIDATE_BAD},
        {"x:+1", VALIDATE_BAD},
        {"x: 1", VALIDATE_BAD},
        {"x:01", VALIDATE_BAD},
        {"::1:80", VALIDATE_BAD},
        {"[::1]", VALIDATE_BAD},
        {"[::1]80", VALIDATE_BAD},
        {"[::1:80", VALIDATE_BAD},
        {"[]:80", VALIDATE_BAD},
        {"[10.0.0.1]:80", VALIDATE_BAD},
        {"[fe80::1%eth0]:80", VALIDATE_BAD},
        {"1.2.3:80", VALIDATE_BAD},
        {"1.2.3.4.5:80", VALIDATE_BAD},
        {"01.2.3.4:80", VALIDATE_BAD},
        {"-a.b:80", VALIDATE_BAD},
        {"a-.b:80", VALIDATE_BAD},
        {"a..b:80", VALIDATE_BAD},
        {"a.:80", VALIDATE_BAD},
        {".a:80", VALIDATE_BAD},
        {"a b:80", VALIDATE_BAD},
        {"a/b:80", VALIDATE_BAD},
        {"\xc3\xbc.example:80", VALIDATE_BAD},
        /* Issue 12 item 6: the socket took these, the config did not. */
        {"1.2.3.4:05", VALIDATE_BAD},
        {"-:5", VALIDATE_BAD},
        {"..:5", VALIDATE_BAD},
        {".:5", VALIDATE_BAD},
    };
    char label[80];
    struct validate_hostport hp;

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char why[160] = "";
        int r = validate_hostport(cases[i].s, strlen(cases[i].s), 0, &hp, why, sizeof why);

        ck_assert_msg(r == cases[i].want, "%s: got %d, want %d (%s)", cases[i].s, r, cases[i].want,
                      why);
        ck_assert_msg(r == VALIDATE_OK || why[0], "%s: no reason", cases[i].s);
        ck_assert_int_eq(validate_address(cases[i].s, NULL, 0), r == VALIDATE_OK);
    }
    /* Labels of 63 bytes are fine, 64 are not. */
    memset(label, 'a', sizeof label);
    memcpy(label + 63, ":1", 3);
    ck_assert_int_eq(validate_hostport(label, strlen(label), 0, NULL, NULL, 0), VALIDATE_OK);
    label[63] = 'a';
    memcpy(label + 64, ":1", 3);
    ck_assert_int_eq(validate_hostport(label, strlen(label), 0, NULL, NULL, 0), VALIDATE_BAD);
}
END_TEST

START_TEST(host_and_port_parts)
{
    struct validate_hostport hp;
    char why[160];

    ck_assert_int_eq(validate_hostport("[::1]:50051", 11, 0, &hp, NULL, 0), VALIDATE_OK);
    ck_assert_str_eq(hp.host, "::1");
    ck_assert(hp.ipv6);
    ck_assert_uint_eq(hp.host_len, 5);
    ck_assert_uint_eq(hp.port, 50051);
    ck_assert_uint_eq(hp.port_at, 6);
    ck_assert_int_eq(validate_hostport("x:70000", 7, 0, &hp, why, sizeof why), VALIDATE_PORT_RANGE);
    ck_assert_uint_eq(hp.port_at, 2);
    /* Only len bytes are read: a URL's authority, say. */
    ck_assert_int_eq(validate_hostport("etcd:2379/v3", 9, 0, &hp, NULL, 0), VALIDATE_OK);
    ck_assert_str_eq(hp.host, "etcd");
    ck_assert_uint_eq(hp.port, 2379);

    /* Flags: a URL's port may be left out; an address to bind may have no
     * host and port 0. Neither is a registration's address. */
    ck_assert_int_eq(validate_hostport("etcd", 4, VALIDATE_PORT_OPTIONAL, &hp, NULL, 0),
                     VALIDATE_OK);
    ck_assert_uint_eq(hp.port, 0);
    ck_assert_uint_eq(hp.port_at, 4);
    ck_assert_int_eq(validate_hostport(":50051", 6, VALIDATE_LISTEN, &hp, NULL, 0), VALIDATE_OK);
    ck_assert_str_eq(hp.host, "");
    ck_assert_int_eq(validate_hostport("[::]:0", 6, VALIDATE_LISTEN, &hp, NULL, 0), VALIDATE_OK);
    ck_assert_str_eq(hp.host, "::");
    ck_assert_int_eq(validate_hostport("0.0.0.0:0", 9, VALIDATE_LISTEN, &hp, NULL, 0), VALIDATE_OK);
    ck_assert_int_eq(validate_hostport("x:05", 4, VALIDATE_LISTEN, &hp, NULL, 0), VALIDATE_BAD);
    ck_assert(!validate_address(":50051", NULL, 0));
    ck_assert(!validate_address("localhost:0", NULL, 0));
    ck_assert(!validate_address(NULL, NULL, 0));

    /* Host names end at 253 bytes. (A buffer on the stack: GCC's bounds
     * check under the sanitizers cannot see through repeat()'s malloc.) */
    {
        char name[261];
        memset(name, 'a', 260);
        name[260] = '\0';
        for (size_t i = 63; i < 253; i += 64)
            name[i] = '.';
        memcpy(name + 253, ":1", 3);
        ck_assert_int_eq(validate_hostport(name, strlen(name), 0, &hp, NULL, 0), VALIDATE_OK);
        ck_assert_uint_eq(strlen(hp.host), 253);
        ck_assert_uint_le(strlen(name) + 1, VALIDATE_ADDRESS_MAX);
        memcpy(name + 253, "a:1", 4);
        ck_assert_int_eq(validate_hostport(name, strlen(name), 0, &hp, NULL, 0), VALIDATE_BAD);
    }

    /* The reasons are the config loader's. */
    validate_hostport("1.2.3.4:05", 10, 0, NULL, why, sizeof why);
    ck_assert_str_eq(why, "write the port without leading zeros");
    validate_hostport("-:5", 3, 0, NULL, why, sizeof why);
    ck_assert_str_eq(why, "the host must be an IPv4 address, an IPv6 address in brackets or "
                          "a host name");
    validate_hostport("1.2.3.4", 7, 0, NULL, why, sizeof why);
    ck_assert_str_eq(why, "the port is missing: write host:port, e.g. 10.0.0.5:8082");
}
END_TEST

START_TEST(names)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"user-server", true}, {"a", true},     {"x.y_z:1", true},
        {"caf\xc3\xa9", true}, {"...", true},   {"", false},
        {".", false},          {"..", false},   {"a/b", false},
        {"a b", false},        {"a\tb", false}, {"a\x7f", false},
        {"\xff", false},       {"\xc3", false}, {"\xed\xa0\x80", false}, /* a surrogate */
        {"\xc0\xaf", false},                                             /* an overlong '/' */
    };
    char why[160];
    char *s;

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        why[0] = '\0';
        ck_assert_msg(validate_name(cases[i].s, why, sizeof why) == cases[i].ok, "'%s'",
                      cases[i].s);
        ck_assert(cases[i].ok || why[0]);
    }
    ck_assert(!validate_name(NULL, NULL, 0));
    validate_name("..", why, sizeof why);
    ck_assert_str_eq(why, "a name may not be '.' or '..'");
    validate_name("a/b", why, sizeof why);
    ck_assert_str_eq(why, "a name may not contain '/', spaces or control characters");

    s = repeat('n', VALIDATE_NAME_MAX);
    ck_assert(validate_name(s, NULL, 0));
    free(s);
    s = repeat('n', 300);
    ck_assert(!validate_name(s, why, sizeof why));
    ck_assert_str_eq(why, "a name is at most 253 bytes, not 300");
    free(s);
}
END_TEST

START_TEST(groups_and_weights)
{
    char why[160];
    char *s;

    ck_assert(validate_group("", NULL, 0));
    ck_assert(validate_group(NULL, NULL, 0));
    ck_assert(validate_group("A", NULL, 0));
    ck_assert(validate_group("blue green", NULL, 0));
    ck_assert(!validate_group("a\nb", why, sizeof why));
    ck_assert_str_eq(why, "a group may not contain control characters");
    ck_assert(!validate_group("\xfe", NULL, 0));
    s = repeat('g', VALIDATE_GROUP_MAX);
    ck_assert(validate_group(s, NULL, 0));
    free(s);
    s = repeat('g', VALIDATE_GROUP_MAX + 1);
    ck_assert(!validate_group(s, NULL, 0));
    free(s);

    ck_assert(validate_weight(INT32_MAX, NULL, 0));
    ck_assert(validate_weight(INT32_MIN, NULL, 0));
    ck_assert(validate_weight(0, NULL, 0));
    ck_assert(!validate_weight((long long)INT32_MAX + 1, why, sizeof why));
    ck_assert(why[0]);
    ck_assert(!validate_weight((long long)INT32_MIN - 1, NULL, 0));
}
END_TEST

START_TEST(metadata)
{
    char why[160];
    char *s;

    ck_assert(validate_meta_key("version", NULL, 0));
    ck_assert(!validate_meta_key("", why, sizeof why));
    ck_assert_str_eq(why, "a metadata key may not be empty");
    ck_assert(!validate_meta_key(NULL, NULL, 0));
    ck_assert(!validate_meta_key("\x80", NULL, 0));
    s = repeat('k', VALIDATE_META_KEY_MAX + 1);
    ck_assert(!validate_meta_key(s, NULL, 0));
    s[VALIDATE_META_KEY_MAX] = '\0';
    ck_assert(validate_meta_key(s, NULL, 0));
    free(s);

    ck_assert(validate_meta_value("", 0, NULL, 0));
    ck_assert(validate_meta_value("line\none", 8, NULL, 0));
    ck_assert(!validate_meta_value("a\0b", 3, why, sizeof why));
    ck_assert_str_eq(why, "a metadata value may not contain a NUL byte");
    ck_assert(!validate_meta_value("\xc3(", 2, NULL, 0));

    ck_assert(validate_meta_size(VALIDATE_META_MAX, NULL, 0));
    ck_assert(!validate_meta_size(VALIDATE_META_MAX + 1, why, sizeof why));
    ck_assert(why[0]);
}
END_TEST

START_TEST(utf8_and_excerpt)
{
    char buf[VALIDATE_EXCERPT + 4];
    char *s;
    const char *e;

    ck_assert(validate_utf8("", 0));
    ck_assert(validate_utf8("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
    ck_assert(!validate_utf8("\xf4\x90\x80\x80", 4)); /* above it */
    ck_assert(!validate_utf8("\xe0\x80\x80", 3));     /* overlong */
    ck_assert(!validate_utf8("\xe2\x82", 2));         /* cut short */

    ck_assert_str_eq(validate_excerpt("short", buf, sizeof buf), "short");
    s = repeat('x', 300);
    e = validate_excerpt(s, buf, sizeof buf);
    ck_assert_uint_eq(strlen(e), VALIDATE_EXCERPT + 3);
    ck_assert_str_eq(e + VALIDATE_EXCERPT, "...");
    /* A two-byte character across the cut is left out whole. */
    s[VALIDATE_EXCERPT - 1] = '\xc3';
    s[VALIDATE_EXCERPT] = '\xa9';
    e = validate_excerpt(s, buf, sizeof buf);
    ck_assert_uint_eq(strlen(e), VALIDATE_EXCERPT - 1 + 3);
    ck_assert(validate_utf8(e, strlen(e)));
    free(s);
}
END_TEST

static Suite *validate_suite(void)
{
    Suite *s = suite_create("validate");
    TCase *tc = tcase_create("rules");

    tcase_add_test(tc, host_and_port);
    tcase_add_test(tc, host_and_port_parts);
    tcase_add_test(tc, names);
    tcase_add_test(tc, groups_and_weights);
    tcase_add_test(tc, metadata);
    tcase_add_test(tc, utf8_and_excerpt);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(validate_suite());
    int failed;

    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
