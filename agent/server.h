/* The local socket server's transport: a unix stream listener on the libuv
 * loop, its connections, newline framing of their input, bounded buffering
 * of their output, and each peer's credentials. It knows nothing of JSON:
 * every complete line goes to a callback, and the caller writes replies.
 *
 * Bounds, all set at start: an input line longer than max_line gets a fixed
 * reply and a close; a connection whose unsent output would pass max_output
 * is dropped (it stopped reading), so one stuck client never grows the
 * daemon or slows the others; past max_clients, or when the descriptor a
 * new connection arrived on is within the reserve the agent keeps for its
 * own work (fdlimit.h), the connection gets busy_reply and is closed at
 * once. Running out of descriptors or memory pauses accepting for a while
 * (the connection waits in the backlog) rather than spinning the loop.
 *
 * When on_close runs: always from the loop, in the connection's close
 * callback (a later loop turn than the call or event that closed it), with
 * one exception: server_close() calls it for every connection before it
 * returns, so that no callback of the server runs after server_close().
 * server_send() and server_conn_close() therefore never call on_close
 * themselves. A connection being closed takes no more input (on_line is not
 * called for it again) and silently discards further server_send() data.
 *
 * libuv writes with write(2): the program must ignore SIGPIPE.
 *
 * Ownership: strings in the options are copied; lines passed to on_line are
 * borrowed for the call (the callee may modify them in place); the server
 * and its connections belong to the server and are freed by the loop. */
#ifndef DA_SERVER_H
#define DA_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct server server;
typedef struct server_conn server_conn;

struct server_options {
    const char *path;           /* socket path; shorter than sun_path (107 bytes) */
    unsigned mode;              /* applied with chmod after bind; 0 means 0660 */
    size_t max_line;            /* default (0) 64 KiB: a longer line gets too_long_reply, then the
                         * connection is closed after that reply is flushed */
    size_t max_output;          /* default (0) 8 MiB: a client whose unsent output would pass this
                         * is dropped; others are not slowed */
    size_t max_clients;         /* default (0) 16384; over it, new connections are accepted, sent
                         * busy_reply and closed at once (no callback sees them) */
    const char *too_long_reply; /* a full line (with its \n) sent before closing on an
                                 * over-long line; copied; NULL: close without one */
    const char *busy_reply;     /* a full line (with its \n) sent to a connection refused
                             * past max_clients or for want of descriptors (fdlimit.h);
                             * copied; NULL: close without one */
    int listen_fd;              /* > 0: a listening socket passed by systemd (listen_fds.h), used
                    * instead of making one at path (given, for messages); stolen,
                    * even when server_start fails: closed by the server, its file
                    * never removed; 0: make one */
};

struct server_callbacks {
    /* Required. One complete line without its '\n' (a trailing '\r' is
     * kept; NUL-terminated at line[len]). Empty lines are skipped; a last
     * line without '\n' before the peer's EOF is not a line. The callback
     * may send, close the connection or close the server; once the
     * connection is closing, the rest of its input is discarded. */
    void (*on_line)(server *s, server_conn *c, char *line, size_t len, void *arg);
    /* Optional. Called once when a connection goes away for any reason
     * (peer closed, error, over-long line, dropped for slow reading,
     * server_conn_close, server_close); see "When on_close runs" above.
     * After it returns the conn pointer is invalid. It may call any
     * function of this file, server_close() included. */
    void (*on_close)(server *s, server_conn *c, void *arg);
    /* Optional. The peer closed its sending side (a half-close): no more
     * lines come, but it may still read. Without on_eof the connection is
     * ended at once (queued output flushed, then closed); with it, the
     * owner ends it with server_conn_end() when it has answered. */
    void (*on_eof)(server *s, server_conn *c, void *arg);
};

/* Listens on o->path as unix_listen_open() does (unix_listen.h): creates
 * the socket's folder (mode 0755, parents too) if missing; refuses a path
 * longer than sun_path (-ENAMETOOLONG); if a socket is at path and
 * something accepts a connection there, refuses with -EADDRINUSE and the
 * message "another agent is listening on PATH"; if nothing does, removes
 * that stale socket. A file at path that is not a socket is never removed:
 * -EEXIST. Binds with mode, then listens, so no client connects through
 * wider permissions. The sockets are non-blocking and close-on-exec.
 *
 * On success *out is the new server (owned by the caller until
 * server_close()). On failure returns a negative code, writes a one-line
 * reason into err (when errlen > 0), never calls a callback and leaves
 * nothing to close, though a failure after the loop handles were made
 * (rare: out of memory) needs one more loop run to free them. cb and arg are
 * copied / borrowed: arg must outlive the server's last callback. */
int server_start(server **out, uv_loop_t *loop, const struct server_options *o,
                 const struct server_callbacks *cb, void *arg, char *err, size_t errlen);

/* Queues len bytes (copied; written at once when the socket takes them).
 * Returns 0 when queued, or discarded because c is already closing. A
 * non-zero return means c has been dropped: DA_EMSGSIZE when its unsent
 * output would pass max_output, DA_ENOMEM, or a negative errno when the
 * socket failed (the peer went away). on_close then follows from the loop,
 * never from inside this call; the caller must not use c after a non-zero
 * return except to recognize it in that on_close. */
int server_send(server_conn *c, const char *data, size_t len);

/* server_send() of the concatenation of bufs (borrowed for the call), in
 * one writev when the socket takes it all: a caller sending one shared text
 * to many connections passes it by reference and copies nothing unless a
 * socket is full. Same returns as server_send(). */
int server_sendv(server_conn *c, const uv_buf_t *bufs, unsigned nbufs);

/* Closes now: unread input and pending output are discarded; on_close
 * follows from the loop. Safe to call on a connection already closing. */
void server_conn_close(server_conn *c);

/* Flushes what is queued, then closes (on_close follows). For a
 * connection whose peer half-closed; safe on one already closing. */
void server_conn_end(server_conn *c);

/* A pointer of the caller's, NULL until set; borrowed. */
void server_conn_set_data(server_conn *c, void *data);
void *server_conn_data(const server_conn *c);

/* Unique within the server and increasing, from 1. */
uint64_t server_conn_id(const server_conn *c);

/* The peer's credentials (SO_PEERCRED, read at accept); any pointer may be
 * NULL. Returns 0, or DA_ENOENT if the kernel did not give them. */
int server_conn_peer(const server_conn *c, pid_t *pid, uid_t *uid, gid_t *gid);

/* Bytes queued for c and not yet written to its socket. */
size_t server_conn_queued(const server_conn *c);

/* Connections open and not closing. */
size_t server_clients(const server *s);

/* Stops listening, unlinks the socket file (only if it is still the one
 * this server made), closes every connection and calls on_close for each
 * before returning. The server is freed by the loop (run it once more);
 * until then a second call is harmless. Accepts NULL. */
void server_close(server *s);

#endif
