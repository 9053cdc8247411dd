/* Tests of agent/mkdir_p.c, the one mkdir -p of the agent (socket folders,
 * cache.dir) and of the bench. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mkdir_p.h"
#include "testutil.h"

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "%s/test_mkdir_p.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    rm_rf(dir);
}

static mode_t mode_of(const char *path)
{
    struct stat st;

    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    return st.st_mode & 07777;
}

START_TEST(test_makes_every_level)
{
    char path[512], top[512];
    mode_t old = umask(022);

    snprintf(top, sizeof top, "%s/a", dir);
    snprintf(path, sizeof path, "%s/a/b/c", dir);
    ck_assert_int_eq(mkdir_p(path, 0750), 0);
    ck_assert_uint_eq(mode_of(path), 0750);
    ck_assert_uint_eq(mode_of(top), 0755);
    /* Again: nothing to do, and an existing folder keeps its mode. */
    ck_assert_int_eq(mkdir_p(path, 0700), 0);
    ck_assert_uint_eq(mode_of(path), 0750);
    /* A trailing '/' names the same folder. */
    snprintf(path, sizeof path, "%s/a/b/c/", dir);
    ck_assert_int_eq(mkdir_p(path, 0750), 0);
    umask(old);
}
END_TEST

START_TEST(test_refuses)
{
    char path[PATH_MAX + 16];
    int fd;

    snprintf(path, sizeof path, "%s/file", dir);
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(mkdir_p(path, 0755), -ENOTDIR);
    snprintf(path, sizeof path, "%s/file/below", dir);
    ck_assert_int_eq(mkdir_p(path, 0755), -ENOTDIR);

    memset(path, 'a', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    ck_assert_int_eq(mkdir_p(path, 0755), -ENAMETOOLONG);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mkdir_p");
    TCase *tc = tcase_create("mkdir_p");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_makes_every_level);
    tcase_add_test(tc, test_refuses);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
