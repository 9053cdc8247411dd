/* libdiscovery: the client side of discovery-agent's unix socket.
 *
 * A program opens a client on the agent's socket, then resolves service
 * names to address lists, watches them for changes, and registers its own
 * instances (which the agent keeps in etcd under its session lease).
 *
 *     disc_client *c;
 *     struct disc_list *l;
 *     if (disc_client_open(&c, NULL) == 0 &&
 *         disc_resolve(c, "user-server", NULL, 5000, &l) == 0) {
 *         for (size_t i = 0; i < l->n; i++)
 *             printf("%s\n", l->instances[i].address);
 *         disc_list_free(l);
 *     }
 *     disc_client_close(c);
 *
 * Errors. Every function that can fail returns 0 or a negative DISC_E*
 * code; disc_strerror() and disc_err_name() describe it, and
 * disc_client_last_error() gives the details of a client's last failure
 * (the agent's own error code and message, or the system call that
 * failed). The library never prints, never exits and never aborts.
 *
 * Threads. A client and everything made from it (watches, lists handed to
 * callbacks) must be used from one thread at a time; the library takes no
 * locks. Different clients are independent. Lists returned to the caller
 * (disc_resolve) are plain memory and may move between threads.
 *
 * Callbacks run only inside disc_client_process() and disc_client_wait(),
 * never inside the call that set them up and never inside a blocking call
 * (disc_resolve, disc_register, ...). Update lines that arrive while a
 * blocking call waits for its own reply are queued, in order, and handed to
 * the watch callbacks by the next disc_client_process() / disc_client_wait()
 * (disc_client_timeout() returns 0 while any are queued). A callback may
 * call any function of this library on its client, blocking calls,
 * disc_unwatch() of any watch (its own included) and disc_client_close()
 * included.
 *
 * Reconnection. When the agent goes away (end of file, a socket error, a
 * malformed or over-long line) the library closes the socket and opens a
 * new one by itself, with growing delays (50 ms doubling to 2 s), on the
 * next disc_client_process(), disc_client_wait() or call. On the new
 * connection it sends again every registration made with disc_register()
 * and every watch, so the instances come back in etcd and every watcher's
 * callback is called with the current list. While disconnected each
 * watcher is told once, with err DISC_ENOAGENT and a NULL list; its last
 * list stays its last list (an empty list is never invented). The socket,
 * and so disc_client_fd(), changes on every reconnect.
 *
 * SIGPIPE is never raised by the library (it writes with MSG_NOSIGNAL), and
 * its socket is close-on-exec. */
#ifndef DISCOVERY_DISCOVERY_H
#define DISCOVERY_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version. The build passes the file VERSION as DA_VERSION;
 * `make install` writes the version itself into the installed header. */
#define DISC_VERSION DA_VERSION

/* Where the agent listens unless $DISCOVERY_SOCKET or the caller says. */
#define DISC_DEFAULT_SOCKET "/run/discovery-agent/agent.sock"

/* A reply or update line longer than this (without its '\n') is a
 * protocol error: DISC_EPROTO, and the connection is dropped and opened
 * again. */
#define DISC_MAX_REPLY_LINE ((size_t)16 * 1024 * 1024)
/* The agent refuses request lines longer than this (and closes the
 * connection), so the library refuses them first with DISC_EINVAL. */
#define DISC_MAX_REQUEST_LINE ((size_t)64 * 1024)

/* ---- errors --------------------------------------------------------------- */

/* The codes, their names and their texts: one table (lib/error.c). */
#define DISC_ERRNO_MAP(XX)                                                                         \
    XX(EINVAL, -1, "invalid argument")                                                             \
    XX(ENOMEM, -2, "out of memory")                                                                \
    XX(ENOAGENT, -3, "no agent at the socket")                                                     \
    XX(EACCES, -4, "permission denied on the agent's socket")                                      \
    XX(ECLOSED, -5, "the connection to the agent closed before it answered")                       \
    XX(ETIMEDOUT, -6, "the agent did not answer in time")                                          \
    XX(EPROTO, -7, "malformed line from the agent")                                                \
    XX(EREFUSED, -8, "the agent refused the request")                                              \
    XX(EINPROGRESS, -9, "accepted by the agent, not yet written to etcd")                          \
    XX(EUNAVAIL, -10, "the agent has no list yet: etcd has not answered")                          \
    XX(EINTR, -11, "interrupted by a signal")                                                      \
    XX(ESYSTEM, -12, "a system call failed")

enum disc_errno {
#define DISC_XX_ENUM(name, code, text) DISC_##name = (code),
    DISC_ERRNO_MAP(DISC_XX_ENUM)
#undef DISC_XX_ENUM
};

/* A static text for code ("unknown error" for a code not in the table). */
const char *disc_strerror(int code);
/* "DISC_ENOAGENT" for DISC_ENOAGENT; "DISC_UNKNOWN" for a code not in the
 * table. Static. */
const char *disc_err_name(int code);

/* ---- client --------------------------------------------------------------- */

typedef struct disc_client disc_client;

/* Opens a client on the agent's socket: socket_path, or when NULL
 * $DISCOVERY_SOCKET (if set and not empty), or DISC_DEFAULT_SOCKET. The
 * path is copied.
 *
 * Returns 0 when connected. When no agent answers it returns DISC_ENOAGENT
 * (or DISC_EACCES, DISC_ESYSTEM) and STILL sets *out to a working client
 * that connects by itself later, so that a program may start before its
 * agent: calls made meanwhile fail with DISC_ENOAGENT, and watches and
 * registrations made meanwhile are sent once the agent answers. The caller
 * that does not want that closes it; disc_client_last_error() says why the
 * connect failed. Only on DISC_EINVAL (path empty or longer than a unix
 * socket address allows) and DISC_ENOMEM is *out set to NULL. */
int disc_client_open(disc_client **out, const char *socket_path);

/* Closes the socket and frees the client, its watches (their callbacks are
 * not called again) and their queued updates. Registrations made without
 * persist vanish from etcd as the agent sees the connection close; those
 * made with persist stay. Accepts NULL; returns NULL. When called from a
 * callback the memory is freed once the library call that ran the callback
 * returns (it then returns DISC_ECLOSED). */
disc_client *disc_client_close(disc_client *c);

/* The socket path in use (borrowed, valid until disc_client_close()). */
const char *disc_client_path(const disc_client *c);

/* Details of the client's last failure: returns its DISC_E* code (0 if
 * none yet), and sets *code to the agent's error code ("conflict",
 * "not_found", ... for DISC_EREFUSED; "" for a failure of the library's
 * own) and *message to a human text, e.g. "connect: No such file or
 * directory" or the agent's message. Either pointer may be NULL; the
 * strings are borrowed until the next call on c. Inside a watch callback
 * called with err DISC_EREFUSED, they are the agent's reason. */
int disc_client_last_error(const disc_client *c, const char **code, const char **message);

/* ---- instance lists ------------------------------------------------------- */

struct disc_instance {
    const char *name;
    const char *address; /* host:port, [v6]:port */
    const char *group;   /* "" when none */
    int32_t weight;      /* as registered; 0 or less counts as 1 */
    size_t n_meta;       /* metadata, sorted by key */
    const char *const *meta_keys;
    const char *const *meta_values;
};

struct disc_list {
    const char *service;
    int64_t revision; /* the etcd revision the list reflects */
    bool stale;       /* the agent could not confirm it with etcd lately */
    size_t n;
    const struct disc_instance *instances; /* sorted by address */
};

/* Frees a list returned by disc_resolve() or disc_list_dup(). Never pass a
 * list received in a callback (the library frees those when the callback
 * returns). Accepts NULL; returns NULL. */
struct disc_list *disc_list_free(struct disc_list *list);

/* A copy the caller owns (free with disc_list_free()), for keeping a list
 * received in a callback. NULL when out of memory. */
struct disc_list *disc_list_dup(const struct disc_list *list);

/* ---- blocking calls ------------------------------------------------------- */
/* Each waits at most timeout_ms (negative: no limit) for the agent's reply.
 * On DISC_EREFUSED, disc_client_last_error() gives the agent's code and
 * message. If the connection is down a call first tries to reconnect at
 * once, and returns DISC_ENOAGENT if that fails. A call that times out
 * leaves the request with the agent; its late reply is dropped. */

/* The instances of service (only those of group, when group is not NULL),
 * sorted by address. The agent may take up to its etcd timeout to answer
 * for a service it did not follow yet, and then refuses with code
 * "unavailable". On success *out is a new list (free with
 * disc_list_free()); on error it is NULL. */
int disc_resolve(disc_client *c, const char *service, const char *group, int timeout_ms,
                 struct disc_list **out);

struct disc_registration {
    const char *name;    /* service name: no '/', spaces or control bytes */
    const char *address; /* host:port where clients reach the instance */
    int32_t weight;      /* 0 or less counts as 1 */
    const char *group;   /* NULL or "" for none */
    size_t n_meta;       /* n_meta keys and values, strings */
    const char *const *meta_keys;
    const char *const *meta_values;
    bool persist; /* stays in etcd after this client closes, until
                          * deregistered or the agent stops */
};

/* Registers an instance (r and its strings are copied). The client then
 * remembers it and sends it again after every reconnect, until
 * disc_deregister() or disc_client_close(). Returns:
 *   0                  written in etcd;
 *   DISC_EINPROGRESS   accepted, but etcd did not confirm it in time: the
 *                      agent keeps trying (last_error's message says why);
 *   DISC_EREFUSED      refused (e.g. "conflict": the agent's configuration
 *                      has it, "bad_request": a bad address); forgotten;
 *   DISC_EINVAL, DISC_ENOMEM  forgotten;
 *   any other error    (DISC_ENOAGENT, DISC_ECLOSED, DISC_ETIMEDOUT, ...)
 *                      no answer: remembered, so it is sent again when a
 *                      connection is made (disc_deregister() drops it).
 * Registering the same name and address again replaces the first one.
 * Note that the agent may answer a resolve made right after this returns
 * from a cached revision older than the write. */
int disc_register(disc_client *c, const struct disc_registration *r, int timeout_ms);

/* Forgets a registration and asks the agent to delete it from etcd. The
 * client forgets it whatever the agent answers. Returns 0, DISC_EREFUSED
 * (code "not_found": the agent does not have it; "forbidden": it belongs to
 * the agent's configuration or another connection), or a transport error. */
int disc_deregister(disc_client *c, const char *name, const char *address, int timeout_ms);

/* Sends one request, a JSON object given as text without "id" (the library
 * adds its own), and waits for its reply: for the agent's "status",
 * "services" and "ping". On success *reply_out is the reply line as the
 * agent sent it, without '\n' but with the library's "id" (a new string,
 * free with free()); on any error it is NULL. A reply with "ok":false
 * returns DISC_EREFUSED. "watch" and "unwatch" are refused (DISC_EINVAL):
 * use disc_watch(); a "register" sent this way is not sent again after a
 * reconnect. */
int disc_request_json(disc_client *c, const char *json_line, int timeout_ms, char **reply_out);

/* ---- watches -------------------------------------------------------------- */

/* A watch (opaque). The type keeps its struct tag, with no typedef: a
 * typedef disc_watch would clash with the function disc_watch(). */
struct disc_watch;

/* Called with the list once the agent answers the watch, then after every
 * change (the list, its revision or its staleness), and again with the
 * current list after each reconnect. err is 0 with a list, or, with list
 * NULL: DISC_ENOAGENT once when the connection is lost, DISC_EUNAVAIL when
 * the agent has no list yet (it keeps the watch and sends the list when
 * etcd answers), DISC_EREFUSED when the agent refused the watch (see
 * disc_client_last_error(); the watch is tried again after a reconnect).
 * list is borrowed until the callback returns (disc_list_dup() keeps it). */
typedef void (*disc_watch_cb)(struct disc_watch *w, const struct disc_list *list, int err,
                              void *arg);

/* Starts watching service (only the instances of group, if not NULL). Does
 * not wait: the request is sent now (or when the agent answers, if it is
 * away) and the callback is called from disc_client_process() or
 * disc_client_wait(). On success *out is the watch (owned by the client;
 * end it with disc_unwatch() or disc_client_close()). Returns 0,
 * DISC_EINVAL (bad service name) or DISC_ENOMEM; on error cb is never
 * called and *out is NULL. */
int disc_watch(disc_client *c, const char *service, const char *group, disc_watch_cb cb, void *arg,
               struct disc_watch **out);

/* disc_watch() with prefer_zone: the agent applies its zone policy
 * (docs/traffic.md) and the lists hold the instances to call now, each
 * with the weight to use; the rest are on standby (not in the list). */
int disc_watch_zone(disc_client *c, const char *service, const char *group, bool prefer_zone,
                    disc_watch_cb cb, void *arg, struct disc_watch **out);

/* Ends a watch: its callback is not called again, queued updates for it are
 * dropped, and the agent is told (without waiting). Accepts NULL. */
void disc_unwatch(struct disc_watch *w);

/* The watched service and group (NULL if none); borrowed. */
const char *disc_watch_service(const struct disc_watch *w);
const char *disc_watch_group(const struct disc_watch *w);

/* ---- event loops ---------------------------------------------------------- */
/* A program with its own loop polls disc_client_fd() for
 * disc_client_events(), wakes up after disc_client_timeout() at the latest,
 * and then calls disc_client_process(). After every call into the library
 * it checks disc_client_fd() again: the socket is replaced on each
 * reconnect, and the new one may even reuse the old number, so re-add it
 * to an epoll set whenever the library reconnected (any call may). */

/* The socket, or -1 while disconnected. */
int disc_client_fd(const disc_client *c);

/* POLLIN, plus POLLOUT while requests wait to be written (the <poll.h>
 * values); 0 while disconnected. */
int disc_client_events(const disc_client *c);

/* Milliseconds until disc_client_process() must be called even if the
 * socket has nothing: 0 while updates are queued for callbacks, the time to
 * the next reconnect attempt while disconnected, else -1 (no limit). */
int disc_client_timeout(const disc_client *c);

/* Never blocks: reconnects if disconnected and due, writes what it can,
 * reads what is readable, and runs the callbacks of every queued update.
 * Returns 0, or the trouble met during this call: DISC_ENOAGENT when the
 * connection was lost, DISC_EPROTO when the agent sent a malformed or
 * over-long line (the connection is then dropped and reopened), DISC_ECLOSED
 * when a callback closed the client. The library recovers by itself from
 * all of them; the caller may log them. */
int disc_client_process(disc_client *c);

/* For simple blocking programs: waits up to timeout_ms (negative: no
 * limit) until there is something to process, and processes it, reconnecting
 * as needed. Returns after the first batch of callbacks or at the timeout
 * with 0, DISC_EINTR when a signal interrupted the wait (the caller checks
 * its flags and calls again), or an error as disc_client_process(). */
int disc_client_wait(disc_client *c, int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif
