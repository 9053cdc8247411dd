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
    {"0s", 0},
    {"0ms", 0},
    {"1ms", 1},
    {"500ms", 500},
    {"10s", 10000},
    {"2m", 120000},
    {"1h", 3600000},
    {"1m30s", 90000},
    {"1h30m", 5400000},
    {"1s500ms", 1500},
    {"1h2m3s4ms", 3723004},
    {"90s", 90000},
    {"007s", 7000},
    {"18446744073709551615ms", UINT64_MAX},
    {"5124095576030h", 5124095576030ull * 3600000u},
    {"5124095576030h25m51s615ms", UINT64_MAX},
};

static const char *const bad[] = {
    "",   /* empty */
    "10", /* bare number */
    "0",
    "10x", /* unknown unit */
    "10S",
    "10sec",
    "10 s",
    " 10s",
    "10s ",
    "-5s", /* negative */
    "+5s",
    "1.5s", /* fractions are not supported */
    "s",    /* unit without number */
    "ms",
    "30s1m", /* units out of order */
    "1m1m",  /* a unit twice */
    "1s1h",
    "10s5",                   /* trailing number */
    "18446744073709551616ms", /* number overflow */
    "99999999999999999999999s",
    "5124095576031h",    /* multiplication overflow */
    "5124095576030h26m", /* addition overflow */
    "5124095576030h25m51s616ms",
    "0x10s",
    "1d",
    "1us",
};

START_TEST(parses_good_values)
{
    uint64_t ms = 12345;

    ck_assert_int_eq(duration_parse(good[_i].text, &ms), 0);
    ck_assert_msg(ms == good[_i].ms, "%s gave %llu", good[_i].text, (unsigned long long)ms);
}
END_TEST

START_TEST(rejects_bad_values)
{
    uint64_t ms = 12345;

    ck_assert_msg(duration_parse(bad[_i], &ms) == -EINVAL, "'%s' accepted", bad[_i]);
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

static Suite *duration_suite(void)
{
    Suite *s = suite_create("duration");
    TCase *tc = tcase_create("parse");

    tcase_add_loop_test(tc, parses_good_values, 0, sizeof(good) / sizeof(good[0]));
    tcase_add_loop_test(tc, rejects_bad_values, 0, sizeof(bad) / sizeof(bad[0]));
    tcase_add_test(tc, rejects_null);
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
