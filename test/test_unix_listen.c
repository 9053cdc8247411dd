/* Tests of the one unix-socket listener (agent/unix_listen.c) that the
 * socket server and the xDS server both use. test_server covers it through
 * server_start(); these cover what only the function itself shows: its
 * descriptor's flags, and that it never removes a file it did not make. */
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "testutil.h"
#include "unix_listen.h"

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "%s/test_unix_listen.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    rm_rf(dir);
}

/* A socket bound at path by someone else; fd, with nothing listening if
 * !listening (a stale socket once closed). */
static int bound(const char *path, bool listening)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    if (listening)
        ck_assert_int_eq(listen(fd, 1), 0);
    return fd;
}

START_TEST(test_open_makes_folders_mode_and_flags)
{
    struct unix_listener l;
    char path[320], err[256];
    struct stat st;

    /* Even with no umask at all, the file never has more than mode. */
    mode_t old = umask(0);
    snprintf(path, sizeof path, "%s/a/b/x.sock", dir);
    ck_assert_int_eq(unix_listen_open(path, 0600, 16, &l, err, sizeof err), 0);
    umask(old);
    ck_assert_int_eq(lstat(path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert(st.st_dev == l.dev && st.st_ino == l.ino);
    ck_assert(fcntl(l.fd, F_GETFL) & O_NONBLOCK);
    ck_assert(fcntl(l.fd, F_GETFD) & FD_CLOEXEC);

    unix_listen_unlink(path, l.dev, l.ino);
    close(l.fd);
    ck_assert_int_eq(access(path, F_OK), -1);
}
END_TEST

START_TEST(test_prepare_live_stale_and_other_files)
{
    char path[320], err[256];
    int fd;

    snprintf(path, sizeof path, "%s/x.sock", dir);
    ck_assert_int_eq(unix_listen_prepare(path, err, sizeof err), 0);

    fd = bound(path, true);
    ck_assert_int_eq(unix_listen_prepare(path, err, sizeof err), -EADDRINUSE);
    ck_assert_ptr_nonnull(strstr(err, "another agent is listening on"));
    close(fd); /* the file stays behind: stale */
    ck_assert_int_eq(access(path, F_OK), 0);
    ck_assert_int_eq(unix_listen_prepare(path, err, sizeof err), 0);
    ck_assert_int_eq(access(path, F_OK), -1);

    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(unix_listen_prepare(path, err, sizeof err), -EEXIST);
    ck_assert_ptr_nonnull(strstr(err, "is not a socket"));
    ck_assert_int_eq(access(path, F_OK), 0);
}
END_TEST

START_TEST(test_path_too_long)
{
    struct unix_listener l;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 16], err[512];

    memset(path, 'a', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    ck_assert_int_eq(unix_listen_open(path, 0600, 16, &l, err, sizeof err), -ENAMETOOLONG);
    ck_assert_int_eq(unix_listen_prepare(path, err, sizeof err), -ENAMETOOLONG);
}
END_TEST

START_TEST(test_unlink_only_ours)
{
    struct unix_listener l;
    char path[320], err[256];
    int other;

    snprintf(path, sizeof path, "%s/x.sock", dir);
    ck_assert_int_eq(unix_listen_open(path, 0660, 16, &l, err, sizeof err), 0);
    /* Another agent replaced the file since (ours had gone stale). */
    ck_assert_int_eq(unlink(path), 0);
    other = bound(path, true);
    unix_listen_unlink(path, l.dev, l.ino);
    ck_assert_int_eq(access(path, F_OK), 0);
    close(l.fd);
    close(other);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("unix_listen");
    TCase *tc = tcase_create("listen");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_open_makes_folders_mode_and_flags);
    tcase_add_test(tc, test_prepare_live_stale_and_other_files);
    tcase_add_test(tc, test_path_too_long);
    tcase_add_test(tc, test_unlink_only_ours);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
