/* Unit tests for agent/duration.c. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../agent/duration.h"

static const struct {
    const char *text;
    uint64_t ms;
} good[] = {
    { "0s", 0 },
    { "0ms", 0 },
    { "1ms", 1 },
    { "500ms", 500 },
    { "10s", 10000 },
    { "2m", 120000 },
    { "1h", 3600000 },
    { "1m30s", 90000 },
    { "1h30m", 5400000 },
    { "1s500ms", 1500 },
    { "1h2m3s4ms", 3723004 },
    { "90s", 90000 },
    { "007s", 7000 },
    { "18446744073709551615ms", UINT64_MAX },
    { "5124095576030h", 5124095576030ull * 3600000u },
    { "5124095576030h25m51s615ms", UINT64_MAX },
};

static const char *const bad[] = {
    "",                         /* empty */
    "10",                       /* bare number */
    "0",
    "10x",                      /* unknown unit */
    "10S",
    "10sec",
    "10 s",
    " 10s",
    "10s ",
    "-5s",                      /* negative */
    "+5s",
    "1.5s",                     /* fractions are not supported */
    "s",                        /* unit without number */
    "ms",
    "30s1m",                    /* units out of order */
    "1m1m",                     /* a unit twice */
    "1s1h",
    "10s5",                     /* trailing number */
    "18446744073709551616ms",   /* number overflow */
    "99999999999999999999999s",
    "5124095576031h",           /* multiplication overflow */
    "5124095576030h26m",        /* addition overflow */
    "5124095576030h25m51s616ms",
    "0x10s",
    "1d",
    "1us",
};

START_TEST(parses_good_values)
{
    uint64_t ms = 12345;

    ck_assert_int_eq(duration_parse(good[_i].text, &ms), 0);
    ck_assert_msg(ms == good[_i].ms, "%s gave %llu", good[_i].text,
                  (unsigned long long)ms);
}
END_TEST

START_TEST(rejects_bad_values)
{
    uint64_t ms = 12345;

    ck_assert_msg(duration_parse(bad[_i], &ms) == -EINVAL, "'%s' accepted",
                  bad[_i]);
    ck_assert_msg(ms == 12345, "'%s' changed *ms on failure", bad[_i]);
}
END_TEST

START_TEST(rejects_null)
{
    uint64_t ms;

    ck_assert_int_eq(duration_parse(NULL, &ms), -EINVAL);
    ck_assert_int_eq(duration_parse("1s", NULL), -EINVAL);
}
END_TEST

static const struct {
    uint64_t ms;
    const char *text;
} formats[] = {
    { 0, "0s" },
    { 1, "1ms" },
    { 500, "500ms" },
    { 1000, "1s" },
    { 1500, "1500ms" },
    { 1001000, "1001s" },
    { 61500, "61500ms" },
    { 10000, "10s" },
    { 60000, "1m" },
    { 90000, "90s" },
    { 100000, "100s" },
    { 120000, "2m" },
    { 3600000, "1h" },
    { 3601000, "1h1s" },
    { 5400000, "90m" },
    { 86400000, "24h" },
    { 3723004, "3723s4ms" },
    { 3723000, "3723s" },
    { 3600004, "1h4ms" },
    { 60001, "1m1ms" },
};

START_TEST(formats_shortest)
{
    char buf[DURATION_FORMAT_MAX];

    ck_assert_int_eq(duration_format(formats[_i].ms, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, formats[_i].text);
}
END_TEST

/* Whatever duration_format() prints, duration_parse() must read back as the
 * same value, and nothing it prints may be longer than a simple single-unit
 * form of the value. */
static void check_round_trip(uint64_t ms)
{
    char buf[DURATION_FORMAT_MAX], plain[32];
    uint64_t back = ms + 1;

    ck_assert_int_eq(duration_format(ms, buf, sizeof(buf)), 0);
    ck_assert_int_eq(duration_parse(buf, &back), 0);
    ck_assert_msg(back == ms, "%llu printed as %s read back as %llu",
                  (unsigned long long)ms, buf, (unsigned long long)back);
    snprintf(plain, sizeof(plain), "%llums", (unsigned long long)ms);
    ck_assert_msg(strlen(buf) <= strlen(plain), "%s longer than %s", buf,
                  plain);
}

START_TEST(round_trips)
{
    static const uint64_t edges[] = {
        0, 1, 999, 1000, 1001, 59999, 60000, 60001, 3599999, 3600000,
        3600001, UINT64_MAX, UINT64_MAX - 1, UINT64_MAX / 3600000 * 3600000,
        UINT64_MAX / 1000 * 1000, UINT64_MAX / 60000 * 60000,
    };
    uint64_t x = 0x9E3779B97F4A7C15ull;

    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        check_round_trip(edges[i]);
    /* A fixed xorshift sequence, scaled to hit every magnitude. */
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        check_round_trip(x >> (i % 64));
        check_round_trip((x >> (i % 64)) / 1000 * 1000);
        check_round_trip((x % 1000) * 60000);
    }
}
END_TEST

START_TEST(longest_output_fits)
{
    char buf[DURATION_FORMAT_MAX];
    size_t longest = 0;

    /* Every term present with its largest count is the worst case. */
    for (uint64_t h = UINT64_MAX / 3600000 - 3; h <= UINT64_MAX / 3600000;
         h++) {
        uint64_t ms = h * 3600000 + 3599999;

        if (ms < h * 3600000)
            continue;  /* wrapped */
        ck_assert_int_eq(duration_format(ms, buf, sizeof(buf)), 0);
        if (strlen(buf) > longest)
            longest = strlen(buf);
    }
    ck_assert_int_eq(duration_format(UINT64_MAX, buf, sizeof(buf)), 0);
    ck_assert_uint_lt(strlen(buf), DURATION_FORMAT_MAX);
    ck_assert_uint_lt(longest, DURATION_FORMAT_MAX);
}
END_TEST

START_TEST(format_small_buffer)
{
    char buf[8];

    memset(buf, 'x', sizeof(buf));
    ck_assert_int_eq(duration_format(1500, buf, 6), -ENOSPC);
    ck_assert_str_eq(buf, "");
    ck_assert_int_eq(duration_format(1500, buf, 7), 0);
    ck_assert_str_eq(buf, "1500ms");
    ck_assert_int_eq(duration_format(1500, buf, 0), -ENOSPC);
    ck_assert_int_eq(duration_format(1500, NULL, 8), -EINVAL);
}
END_TEST

static Suite *duration_suite(void)
{
    Suite *s = suite_create("duration");
    TCase *tc = tcase_create("parse");

    tcase_add_loop_test(tc, parses_good_values, 0,
                        sizeof(good) / sizeof(good[0]));
    tcase_add_loop_test(tc, rejects_bad_values, 0,
                        sizeof(bad) / sizeof(bad[0]));
    tcase_add_test(tc, rejects_null);
    suite_add_tcase(s, tc);

    tc = tcase_create("format");
    tcase_add_loop_test(tc, formats_shortest, 0,
                        sizeof(formats) / sizeof(formats[0]));
    tcase_add_test(tc, round_trips);
    tcase_add_test(tc, longest_output_fits);
    tcase_add_test(tc, format_small_buffer);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(duration_suite());
    int failed;

    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
