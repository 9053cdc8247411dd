/*
 * proc: child processes for integration tests.  See proc.h.
 *
 * Tests may run threads (the scripted responder), so everything the child
 * needs (the resolved path, the environment array, the file descriptors) is
 * prepared before fork(), and the child only calls async-signal-safe
 * functions until execve().
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;

struct proc {
    pid_t pid;
    int reaped;
    int status;
};

/* Finds an executable the way execvp() would, but before fork(). */
static int resolve_path(const char *name, char *buf, size_t buflen)
{
    const char *path, *p;
    int n;

    if (name == NULL || name[0] == '\0')
        return -ENOENT;
    if (strchr(name, '/') != NULL) {
        n = snprintf(buf, buflen, "%s", name);
        return (n < 0 || (size_t)n >= buflen) ? -ENAMETOOLONG : 0;
    }
    path = getenv("PATH");
    if (path == NULL || path[0] == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    for (p = path;;) {
        const char *end = strchr(p, ':');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);

        /* An empty PATH element means the current folder, as in POSIX. */
        if (len == 0)
            n = snprintf(buf, buflen, "./%s", name);
        else
            n = snprintf(buf, buflen, "%.*s/%s", (int)len, p, name);
        if (n > 0 && (size_t)n < buflen && access(buf, X_OK) == 0)
            return 0;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return -ENOENT;
}

static size_t name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');

    return eq != NULL ? (size_t)(eq - kv) : strlen(kv);
}

/*
 * Builds environ plus env_add, where an added NAME replaces the inherited
 * one.  The array is new; the strings are borrowed from environ and env_add.
 */
static char **build_env(const char *const env_add[])
{
    size_t ne = 0, na = 0, i, j, k = 0;
    char **envp;

    while (environ != NULL && environ[ne] != NULL)
        ne++;
    while (env_add != NULL && env_add[na] != NULL)
        na++;
    envp = calloc(ne + na + 1, sizeof(*envp));
    if (envp == NULL)
        return NULL;
    for (i = 0; i < ne; i++) {
        size_t len = name_len(environ[i]);
        int replaced = 0;

        for (j = 0; j < na && !replaced; j++)
            replaced = name_len(env_add[j]) == len && strncmp(env_add[j], environ[i], len) == 0;
        if (!replaced)
            envp[k++] = environ[i];
    }
    for (j = 0; j < na; j++)
        envp[k++] = (char *)env_add[j];
    envp[k] = NULL;
    return envp;
}

/*
 * Forks and execs path with the given stdio descriptors.  Returns the pid or
 * a negative errno.
 */
static pid_t spawn_fds(const char *path, const char *const argv[], char **envp, int in_fd,
                       int out_fd, int err_fd)
{
    pid_t parent = getpid();
    pid_t pid = fork();

    if (pid < 0)
        return -errno;
    if (pid == 0) {
        sigset_t none;

        /*
         * The kernel kills us when the test process dies, so no etcd is left
         * behind by a crashed or timed-out test.  If the parent already died
         * between fork() and prctl(), the signal would never come: give up.
         */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        /* Signal masks and ignored signals survive exec; reset what tests
         * commonly change so the child behaves as when started by a shell. */
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        /* Move the sources above 2 first so that dup2() cannot clobber one
         * source with another when the caller's fds are low numbers. */
        in_fd = fcntl(in_fd, F_DUPFD_CLOEXEC, 3);
        out_fd = fcntl(out_fd, F_DUPFD_CLOEXEC, 3);
        err_fd = fcntl(err_fd, F_DUPFD_CLOEXEC, 3);
        if (in_fd < 0 || out_fd < 0 || err_fd < 0 || dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 ||
            dup2(err_fd, 2) < 0)
            _exit(127);
        /* Nothing else of the test (sockets, Check's files) leaks into it. */
        close_range(3, ~0U, 0);
        execve(path, (char *const *)argv, envp);
        _exit(127);
    }
    return pid;
}

static pid_t spawn_common(const char *const argv[], const char *const env_add[], int out_fd,
                          int err_fd)
{
    char path[PATH_MAX];
    char **envp;
    int in_fd, err;
    pid_t pid;

    if (argv == NULL || argv[0] == NULL)
        return -EINVAL;
    err = resolve_path(argv[0], path, sizeof(path));
    if (err < 0)
        return err;
    envp = build_env(env_add);
    if (envp == NULL)
        return -ENOMEM;
    in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in_fd < 0) {
        err = -errno;
        free(envp);
        return err;
    }
    pid = spawn_fds(path, argv, envp, in_fd, out_fd, err_fd);
    close(in_fd);
    free(envp);
    return pid;
}

struct proc *proc_spawn(const char *const argv[], const char *const env_add[], const char *log_path)
{
    struct proc *p;
    int fd;
    pid_t pid;

    if (log_path == NULL)
        log_path = "/dev/null";
    fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return NULL;
    pid = spawn_common(argv, env_add, fd, fd);
    close(fd);
    if (pid < 0) {
        errno = (int)-pid;
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        errno = ENOMEM;
        return NULL;
    }
    p->pid = pid;
    return p;
}

pid_t proc_pid(const struct proc *p)
{
    return (p == NULL || p->reaped) ? -1 : p->pid;
}

int proc_signal(struct proc *p, int sig)
{
    if (p == NULL || p->reaped)
        return -ESRCH;
    return kill(p->pid, sig) < 0 ? -errno : 0;
}

/* One non-blocking reap attempt: 1 if reaped now or before, 0 if running. */
static int try_reap(struct proc *p)
{
    pid_t r;

    if (p->reaped)
        return 1;
    do
        r = waitpid(p->pid, &p->status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        /* ECHILD means someone else reaped it; treat it as gone. */
        p->reaped = 1;
        return 1;
    }
    return 0;
}

int proc_wait(struct proc *p, int timeout_ms, int *status)
{
    long long deadline = now_ms() + timeout_ms;
    long nap = 1;

    if (p == NULL)
        return -EINVAL;
    /*
     * Polling keeps this free of SIGCHLD handlers, which would interfere with
     * Check and with the code under test; a few ms of latency is harmless.
     */
    while (!try_reap(p)) {
        long long left = deadline - now_ms();

        if (timeout_ms >= 0 && left <= 0)
            return -ETIMEDOUT;
        if (timeout_ms >= 0 && nap > left)
            nap = (long)left;
        sleep_ms(nap);
        if (nap < 20)
            nap *= 2;
    }
    if (status != NULL)
        *status = p->status;
    return 0;
}

int proc_wait_stopped(struct proc *p, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;

    if (p == NULL)
        return -EINVAL;
    for (;;) {
        siginfo_t si;

        if (p->reaped)
            return -ESRCH;
        memset(&si, 0, sizeof(si));
        /* WNOWAIT leaves an exit to be reaped by proc_wait() as usual. */
        if (waitid(P_PID, (id_t)p->pid, &si, WSTOPPED | WEXITED | WNOHANG | WNOWAIT) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (si.si_pid == p->pid)
            return si.si_code == CLD_STOPPED ? 0 : -ESRCH;
        if (now_ms() >= deadline)
            return -ETIMEDOUT;
        sleep_ms(2);
    }
}

int proc_alive(struct proc *p)
{
    return p != NULL && !try_reap(p);
}

int proc_stop(struct proc *p, int sig, int timeout_ms)
{
    int status = 0, err;

    if (p == NULL)
        return -EINVAL;
    if (!try_reap(p)) {
        kill(p->pid, sig);
        /* A stopped child cannot act on SIGTERM until it is continued. */
        kill(p->pid, SIGCONT);
        if (proc_wait(p, timeout_ms, &status) < 0) {
            kill(p->pid, SIGKILL);
            err = proc_wait(p, -1, &status);
            if (err < 0)
                return err;
        }
    }
    return p->status;
}

struct proc *proc_free(struct proc *p)
{
    if (p == NULL)
        return NULL;
    if (!try_reap(p)) {
        kill(p->pid, SIGKILL);
        proc_wait(p, -1, NULL);
    }
    free(p);
    return NULL;
}

int proc_run_full(char *out, size_t outlen, int timeout_ms, const char *const argv[],
                  const char *const env_add[], const char *err_path)
{
    struct proc p = {0};
    long long deadline = now_ms() + timeout_ms;
    size_t used = 0;
    int fds[2], eof = 0, timed_out = 0, err_fd = STDERR_FILENO;
    pid_t pid;

    if (out != NULL && outlen > 0)
        out[0] = '\0';
    if (err_path != NULL) {
        err_fd = open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (err_fd < 0)
            return -1;
    }
    if (pipe2(fds, O_CLOEXEC) < 0) {
        if (err_fd != STDERR_FILENO)
            close(err_fd);
        return -1;
    }
    pid = spawn_common(argv, env_add, fds[1], err_fd);
    close(fds[1]);
    if (err_fd != STDERR_FILENO)
        close(err_fd);
    if (pid < 0) {
        close(fds[0]);
        return -1;
    }
    p.pid = pid;
    /*
     * Read until EOF; but a command may exit while a background grandchild
     * still holds the pipe, so also notice the exit and then only drain what
     * is already buffered.
     */
    while (!eof) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        long long left = deadline - now_ms();
        int exited = try_reap(&p);
        char buf[4096];
        ssize_t n;

        if (!exited && left <= 0) {
            timed_out = 1;
            break;
        }
        if (poll(&pfd, 1, exited ? 0 : (int)(left < 20 ? left : 20)) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd.revents == 0) {
            if (exited)
                break;
            continue;
        }
        n = read(fds[0], buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            eof = 1;
            break;
        }
        if (out != NULL && outlen > 0 && used < outlen - 1) {
            size_t take = (size_t)n;

            if (take > outlen - 1 - used)
                take = outlen - 1 - used;
            memcpy(out + used, buf, take);
            used += take;
            out[used] = '\0';
        }
    }
    close(fds[0]);
    if (!timed_out) {
        long long left = deadline - now_ms();

        if (proc_wait(&p, left > 0 ? (int)left : 0, NULL) < 0)
            timed_out = 1;
    }
    if (timed_out) {
        kill(pid, SIGKILL);
        proc_wait(&p, -1, NULL);
        return -1;
    }
    if (WIFEXITED(p.status))
        return WEXITSTATUS(p.status);
    if (WIFSIGNALED(p.status))
        return 128 + WTERMSIG(p.status);
    return -1;
}

int proc_run_env(char *out, size_t outlen, int timeout_ms, const char *const argv[],
                 const char *const env_add[])
{
    return proc_run_full(out, outlen, timeout_ms, argv, env_add, NULL);
}

int proc_run(char *out, size_t outlen, int timeout_ms, const char *const argv[])
{
    return proc_run_env(out, outlen, timeout_ms, argv, NULL);
}
