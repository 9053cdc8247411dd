/* Floors: what the same work costs with nothing but the kernel in the way.
 *
 * floor_echo_start() is a unix-socket server that answers every line with a
 * fixed reply of the agent's reply size: one thread, epoll, a read and a
 * write per request, as the agent's loop does, but without parsing or
 * building anything. floor_fanout_cpu() is the least CPU a process spends
 * writing an update line to many watchers. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

#define MAX_EVENTS 256

struct econn {
    int fd;
    size_t pending; /* bytes of a line not yet ended */
};

/* Writes n copies of reply; a floor client has at most one request in
 * flight, so the socket buffer always takes them. */
static void reply_n(int fd, const char *reply, size_t len, int n)
{
    for (int i = 0; i < n; i++) {
        size_t off = 0;
        while (off < len) {
            ssize_t w = send(fd, reply + off, len - off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                continue; /* cannot happen with one request in flight */
            if (w <= 0)
                return;
            off += (size_t)w;
        }
    }
}

static void echo_serve(int lfd, const char *reply, size_t len)
{
    struct epoll_event ev = {.events = EPOLLIN}, evs[MAX_EVENTS];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    char buf[65536];

    ev.data.ptr = NULL; /* the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            struct econn *c = evs[i].data.ptr;
            if (!c) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                ev.events = EPOLLIN;
                ev.data.ptr = c;
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                continue;
            }
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c);
                continue;
            }
            int lines = 0;
            for (ssize_t k = 0; k < r; k++)
                if (buf[k] == '\n')
                    lines++;
            if (lines)
                reply_n(c->fd, reply, len, lines);
        }
    }
}

pid_t floor_echo_start(const char *path, const char *reply, size_t len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    pid_t pid;
    int lfd;

    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    unlink(path);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 4096) != 0) {
        if (lfd >= 0)
            close(lfd);
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        echo_serve(lfd, reply, len);
        _exit(0);
    }
    close(lfd);
    return pid;
}

void floor_stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

double floor_fanout_cpu(const char *line, size_t len, int fanout, int count)
{
    int(*sp)[2] = calloc((size_t)fanout, sizeof *sp);
    struct epoll_event ev = {.events = EPOLLIN}, evs[MAX_EVENTS];
    struct rusage ru;
    char buf[65536];
    size_t want = (size_t)fanout * (size_t)count * len, got = 0;
    int ep = -1, status, k;
    double cpu = -1;
    pid_t pid;

    if (!sp)
        return -1;
    for (k = 0; k < fanout; k++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp[k]) != 0)
            goto out;
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < fanout; i++)
            close(sp[i][0]);
        for (int n = 0; n < count; n++)
            for (int i = 0; i < fanout; i++) {
                size_t off = 0;
                while (off < len) {
                    ssize_t w = send(sp[i][1], line + off, len - off, MSG_NOSIGNAL);
                    if (w <= 0 && errno != EINTR)
                        _exit(1);
                    if (w > 0)
                        off += (size_t)w;
                }
            }
        _exit(0);
    }
    for (int i = 0; i < fanout; i++) {
        close(sp[i][1]);
        sp[i][1] = -1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < fanout; i++) {
        ev.data.fd = sp[i][0];
        epoll_ctl(ep, EPOLL_CTL_ADD, sp[i][0], &ev);
    }
    while (got < want) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 5000);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            ssize_t r = recv(evs[i].data.fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r > 0)
                got += (size_t)r;
        }
    }
    if (pid > 0 && wait4(pid, &status, 0, &ru) == pid)
        cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
              ru.ru_stime.tv_usec / 1e6;
out:
    if (ep >= 0)
        close(ep);
    for (int i = 0; i < k && i < fanout; i++) {
        if (sp[i][0] >= 0)
            close(sp[i][0]);
        if (sp[i][1] >= 0)
            close(sp[i][1]);
    }
    free(sp);
    return cpu;
}

double floor_keepalive_cpu(const char *url, int count)
{
    struct rusage ru;
    int status;
    pid_t pid = fork();

    if (pid < 0)
        return -1;
    if (pid == 0) {
        struct gw g;
        char *reply = NULL, body[96];
        const char *id;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (gw_open(&g, url) < 0 ||
            gw_post(&g, "/v3/lease/grant", "{\"TTL\":\"60\"}", &reply) < 0 ||
            !(id = strstr(reply, "\"ID\":\"")))
            _exit(1);
        snprintf(body, sizeof body, "{\"ID\":\"%lld\"}", strtoll(id + 6, NULL, 10));
        free(reply);
        for (int i = 0; i < count; i++)
            if (gw_post(&g, "/v3/lease/keepalive", body, NULL) < 0)
                _exit(1);
        gw_post(&g, "/v3/lease/revoke", body, NULL);
        _exit(0);
    }
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return ((double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
            ru.ru_stime.tv_usec / 1e6) /
           count;
}

/* CPU of the calling thread so far, in nanoseconds, from the scheduler. */
static long long thread_cpu_ns(void)
{
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    long long ns = -1;

    if (f) {
        if (fscanf(f, "%lld", &ns) != 1)
            ns = -1;
        fclose(f);
    }
    return ns;
}

pid_t floor_paced_keepalive_start(const char *url, int count, int interval_ms, int *rfd)
{
    int p[2];
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        struct gw g;
        char *reply = NULL, body[96];
        const char *id;
        double per = -1;
        long long sum = 0;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        if (gw_open(&g, url) == 0 &&
            gw_post(&g, "/v3/lease/grant", "{\"TTL\":\"60\"}", &reply) == 0 &&
            (id = strstr(reply, "\"ID\":\""))) {
            snprintf(body, sizeof body, "{\"ID\":\"%lld\"}", strtoll(id + 6, NULL, 10));
            int i;
            for (i = 0; i < count; i++) {
                sleep_ms(interval_ms);
                long long a = thread_cpu_ns();
                if (gw_post(&g, "/v3/lease/keepalive", body, NULL) < 0)
                    break;
                sum += thread_cpu_ns() - a;
            }
            if (i == count && count > 0)
                per = (double)sum / 1e9 / count;
            gw_post(&g, "/v3/lease/revoke", body, NULL);
        }
        free(reply);
        if (write(p[1], &per, sizeof per) != (ssize_t)sizeof per)
            _exit(1);
        _exit(0);
    }
    close(p[1]);
    *rfd = p[0];
    return pid;
}

double floor_paced_keepalive_end(pid_t pid, int rfd)
{
    double per = -1;
    int status;

    if (pid <= 0)
        return -1;
    if (read(rfd, &per, sizeof per) != (ssize_t)sizeof per)
        per = -1;
    close(rfd);
    waitpid(pid, &status, 0);
    return per;
}
