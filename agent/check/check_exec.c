/* exec probes: a command run without a shell (uv_spawn), exit 0 passes.
 *
 * The command runs in a process group of its own (UV_PROCESS_DETACHED makes
 * it a session leader), so that a timeout kills the whole group, scripts'
 * children included. stdout and stderr share one pipe whose read end we
 * watch with a uv_poll_t; only the first bytes are kept, the rest is read
 * and dropped so that a chatty command never blocks on a full pipe. When
 * the process exits, whatever it wrote is already in the pipe and is read
 * at once (non-blocking), so the result never waits for the pipe's EOF,
 * which a background grandchild could hold off for ever. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_internal.h"
#include "error.h"

/* Bytes of output kept for the output's first line. */
#define OUT_KEEP 512

struct exec_probe {
    struct check__probe base;
    uv_process_t proc;
    uv_poll_t poll;
    int fd;         /* read end of the output pipe, or -1 */
    int open;       /* handles not yet closed: p is freed at 0 */
    bool poll_open; /* poll initialised and not yet closed */
    bool killed;
    size_t out_len;
    char out[OUT_KEEP];
};

static int exec_init(checker *k, char *err, size_t errlen)
{
    (void)k;
    (void)err;
    (void)errlen;
    return 0; /* everything needed is in k->spec */
}

static void exec_fini(checker *k)
{
    (void)k;
}

static void handle_closed(uv_handle_t *h)
{
    struct exec_probe *p = h->data;

    if (--p->open == 0) {
        if (p->fd >= 0)
            close(p->fd);
        free(p);
    }
}

/* Reads what the pipe holds now. Returns false at EOF or on an error. */
static bool drain(struct exec_probe *p)
{
    char buf[4096];

    for (;;) {
        ssize_t n = read(p->fd, buf, sizeof buf);
        if (n > 0) {
            size_t keep = sizeof p->out - p->out_len;
            if (keep > (size_t)n)
                keep = (size_t)n;
            memcpy(p->out + p->out_len, buf, keep);
            p->out_len += keep;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

static void readable(uv_poll_t *h, int status, int events)
{
    struct exec_probe *p = h->data;

    (void)events;
    if (status < 0 || !drain(p))
        uv_poll_stop(h); /* EOF: the exit callback ends the probe */
}

static void close_all(struct exec_probe *p)
{
    if (p->poll_open) {
        p->poll_open = false;
        uv_close((uv_handle_t *)&p->poll, handle_closed);
    }
    if (!uv_is_closing((uv_handle_t *)&p->proc))
        uv_close((uv_handle_t *)&p->proc, handle_closed);
}

static void exited(uv_process_t *proc, int64_t status, int term_signal)
{
    struct exec_probe *p = proc->data;
    char line[CHECK_OUTPUT_MAX];

    if (p->fd >= 0)
        drain(p);
    check__first_line(line, sizeof line, p->out, p->out_len);
    /* Counted only if the probe is still attached and not timed out. */
    if (term_signal)
        check__report(&p->base, false, "killed by signal %d%s%s", term_signal, *line ? ": " : "",
                      line);
    else
        check__report(&p->base, status == 0, "exit %lld%s%s", (long long)status, *line ? ": " : "",
                      line);
    close_all(p);
}

static struct check__probe *exec_start(checker *k)
{
    uv_loop_t *loop = k->ctx->loop;
    struct exec_probe *p = calloc(1, sizeof *p);
    uv_stdio_container_t stdio[3];
    uv_process_options_t o;
    int fds[2], rc;

    if (!p) {
        check__report_k(k, false, "out of memory");
        return NULL;
    }
    p->fd = -1;
    if (pipe2(fds, O_CLOEXEC) < 0) {
        rc = -errno;
        free(p);
        check__report_k(k, false, "pipe: %s", strerror(-rc));
        return NULL;
    }
    /* Only our end is non-blocking: the command writes to a normal pipe. */
    fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
    p->fd = fds[0];

    memset(&o, 0, sizeof o);
    stdio[0].flags = UV_IGNORE; /* /dev/null */
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = fds[1];
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = fds[1];
    o.file = k->spec.exec_argv[0];
    o.args = k->spec.exec_argv;
    o.flags = UV_PROCESS_DETACHED;
    o.stdio = stdio;
    o.stdio_count = 3;
    o.exit_cb = exited;
    p->proc.data = p;
    rc = uv_spawn(loop, &p->proc, &o);
    close(fds[1]);
    p->open = 1; /* the process handle is initialised even when spawn fails */
    if (rc < 0) {
        uv_close((uv_handle_t *)&p->proc, handle_closed);
        check__report_k(k, false, "spawn %s: %s", k->spec.exec_argv[0], strerror(-rc));
        return NULL;
    }
    if (uv_poll_init(loop, &p->poll, p->fd) == 0) {
        p->poll.data = p;
        p->poll_open = true;
        p->open++;
        uv_poll_start(&p->poll, UV_READABLE, readable);
    }
    return &p->base;
}

static void exec_abandon(struct check__probe *base)
{
    struct exec_probe *p = check__container_of(base, struct exec_probe, base);

    /* Stays attached until exited() reaps it (see check_internal.h). The
     * group id is the command's pid: it leads its own session. */
    if (!p->killed) {
        p->killed = true;
        uv_kill(-p->proc.pid, SIGKILL);
    }
}

const struct check__type check__exec = {
    .init = exec_init,
    .fini = exec_fini,
    .start = exec_start,
    .abandon = exec_abandon,
};
