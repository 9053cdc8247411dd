/*
 * proc: child processes for integration tests.
 *
 * A test starts real programs (etcd members, the daemon under test, etcdctl,
 * curl) through this file so that every child is killed when the test process
 * dies, however it dies: the child asks the kernel for SIGKILL on its parent's
 * death before it execs.  Errors are returned as negative errno values; the
 * functions never exit or abort.
 */
#ifndef HARNESS_PROC_H
#define HARNESS_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct proc;

/*
 * Starts argv[0] (looked up in PATH when it has no '/') with argv, a
 * NULL-terminated array.  env_add is NULL or a NULL-terminated array of
 * "NAME=VALUE" strings that are added to (or replace entries of) the current
 * environment.  The child's stdout and stderr are appended to log_path, which
 * is created if needed; a NULL log_path means /dev/null.  stdin is /dev/null.
 * Returns a new object the caller frees with proc_free(), or NULL with errno
 * set.  The strings are borrowed only during the call.
 *
 * The child gets SIGKILL when the calling *thread* ends (that is how
 * PR_SET_PDEATHSIG works), so spawn long-lived children from the test's main
 * thread.
 */
struct proc *proc_spawn(const char *const argv[], const char *const env_add[],
                        const char *log_path);

/* The child's pid, or -1 once it has been reaped. */
pid_t proc_pid(const struct proc *p);

/* Sends sig to the child; 0, or -ESRCH once the child has been reaped. */
int proc_signal(struct proc *p, int sig);

/*
 * Waits up to timeout_ms (negative: forever) for the child to exit and reaps
 * it.  Returns 0 and stores the raw wait status in *status (if non-NULL), or
 * -ETIMEDOUT with the child still running.  Calling it again after the child
 * was reaped returns 0 and the same status.
 */
int proc_wait(struct proc *p, int timeout_ms, int *status);

/*
 * Waits up to timeout_ms for the child to be stopped (after SIGSTOP), without
 * consuming the report.  0, -ETIMEDOUT, or -ESRCH if it exited instead.
 */
int proc_wait_stopped(struct proc *p, int timeout_ms);

/* 1 while the child has not been reaped (stopped children count as alive). */
int proc_alive(struct proc *p);

/*
 * Sends sig, waits up to timeout_ms, then SIGKILL and waits for good.
 * Returns the raw wait status, or a negative errno.
 */
int proc_stop(struct proc *p, int sig, int timeout_ms);

/* Kills (SIGKILL) and reaps the child if needed, frees p.  Accepts NULL. */
struct proc *proc_free(struct proc *p);

/*
 * Runs argv to completion and captures its stdout into out (always
 * NUL-terminated when outlen > 0; output past outlen - 1 bytes is read and
 * dropped).  stderr is inherited so that a failing command explains itself in
 * the test log.  Returns the exit status, 128 + signal number if the command
 * was killed by a signal, or -1 if it could not be started or ran longer than
 * timeout_ms (it is then killed and reaped).
 */
int proc_run(char *out, size_t outlen, int timeout_ms, const char *const argv[]);

/* proc_run() with environment additions, as in proc_spawn(). */
int proc_run_env(char *out, size_t outlen, int timeout_ms, const char *const argv[],
                 const char *const env_add[]);

/* proc_run_env() with stderr appended to err_path instead (NULL: inherit),
 * for tools that are chatty on success, like openssl. */
int proc_run_full(char *out, size_t outlen, int timeout_ms, const char *const argv[],
                  const char *const env_add[], const char *err_path);

#endif
