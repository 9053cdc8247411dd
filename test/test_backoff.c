/* Unit tests for agent/backoff.c: full jitter within its window, the
 * window's growth and cap, uniform picks, and a seed per process. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backoff.h"

START_TEST(delay_within_window)
{
    for (unsigned a = 0; a < 12; a++) {
        uint64_t window = 100ull << a > 5000 ? 5000 : 100ull << a;
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t d = backoff_delay(100, 5000, a);
            ck_assert_uint_le(d, window);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        /* Full jitter: the draws cover the whole window, the lower half
         * included (the old "half to all" never went below window / 2).
         * 2,000 uniform draws all missing a tenth of the window at either
         * end has a chance of 0.9^2000. */
        ck_assert_uint_lt(lo, window / 10 + 1);
        ck_assert_uint_gt(hi, window - window / 10 - 1);
    }
}
END_TEST

START_TEST(delay_no_overflow)
{
    /* A huge attempt count stops at the cap instead of shifting past it. */
    for (int i = 0; i < 100; i++)
        ck_assert_uint_le(backoff_delay(1000, 60000, 1000), 60000);
    ck_assert_uint_le(backoff_delay(UINT32_MAX, UINT64_MAX, 40), UINT64_MAX);
    ck_assert_uint_eq(backoff_delay(0, 0, 3), 0);
}
END_TEST

START_TEST(state_grows_and_resets)
{
    struct backoff b = BACKOFF_INIT(200, 1000);

    ck_assert(backoff_is_fresh(&b));
    for (int i = 0; i < 50; i++)
        ck_assert_uint_le(backoff_next(&b), 1000);
    ck_assert(!backoff_is_fresh(&b));
    ck_assert_uint_eq(b.attempt, 50);
    backoff_reset(&b);
    ck_assert(backoff_is_fresh(&b));
    /* The first window after a reset is the base again. */
    for (int i = 0; i < 200; i++) {
        struct backoff c = BACKOFF_INIT(200, 1000);
        ck_assert_uint_le(backoff_next(&c), 200);
    }
}
END_TEST

START_TEST(pick_is_uniform)
{
    unsigned seen[3] = {0};

    ck_assert_uint_eq(backoff_pick(0), 0);
    ck_assert_uint_eq(backoff_pick(1), 0);
    for (int i = 0; i < 6000; i++) {
        uint64_t k = backoff_pick(3);
        ck_assert_uint_lt(k, 3);
        seen[k]++;
    }
    /* 2,000 expected each; the standard deviation is 37, so 1,700 to
     * 2,300 is eight of them either way. */
    for (int i = 0; i < 3; i++) {
        ck_assert_uint_gt(seen[i], 1700);
        ck_assert_uint_lt(seen[i], 2300);
    }
}
END_TEST

/* A child's first draw, through a pipe. */
static uint64_t child_draw(void)
{
    int fds[2];
    uint64_t v = 0;
    pid_t pid;
    int status;

    ck_assert_int_eq(pipe(fds), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        v = backoff_pick(UINT64_MAX);
        _exit(write(fds[1], &v, sizeof v) == (ssize_t)sizeof v ? 0 : 1);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], &v, sizeof v), (ssize_t)sizeof v);
    close(fds[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return v;
}

START_TEST(seeded_per_process)
{
    /* The parent has drawn already: a child that kept its state would draw
     * the parent's next number, and two children the same one, which is
     * the herd of agents retrying in step. */
    (void)backoff_pick(10);
    uint64_t a = child_draw(), b = child_draw();
    uint64_t mine = backoff_pick(UINT64_MAX);

    ck_assert_uint_ne(a, b);
    ck_assert_uint_ne(a, mine);
    ck_assert_uint_ne(b, mine);
}
END_TEST

static Suite *backoff_suite(void)
{
    Suite *s = suite_create("backoff");
    TCase *tc = tcase_create("backoff");

    tcase_add_test(tc, delay_within_window);
    tcase_add_test(tc, delay_no_overflow);
    tcase_add_test(tc, state_grows_and_resets);
    tcase_add_test(tc, pick_is_uniform);
    tcase_add_test(tc, seeded_per_process);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(backoff_suite());
    int failed;

    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
