/*
 * responder: a tiny scripted HTTP/1.1 server on 127.0.0.1 for tests of how
 * our code reacts to replies a real etcd cannot be made to produce (garbage,
 * resets, stalls, odd status codes).
 *
 * It runs in threads of the test process: one thread accepts, and each
 * connection gets its own thread, so a hanging reply never blocks other
 * connections.  Keep-alive is honoured: after a reply the connection is read
 * again, unless the reply asked to close (see below).
 */
#ifndef HARNESS_RESPONDER_H
#define HARNESS_RESPONDER_H

#include <stddef.h>

struct responder;

/*
 * Starts listening on a random free port of 127.0.0.1.  replies[i] is served
 * to the i-th request read (counting over all connections, from 0); requests
 * past n - 1 get replies[n - 1] again.  A request is read fully (headers, then
 * a body by Content-Length or chunked encoding; "Expect: 100-continue" is
 * answered) before its reply is written.
 *
 * A reply is raw bytes written as is: the test writes the status line and
 * headers itself.  The connection is closed after a reply that contains a
 * "Connection: close" header or has neither Content-Length nor
 * Transfer-Encoding (its body could only end at close).  Special strings:
 *   "@CLOSE"            close the connection (FIN) without a reply;
 *   "@RESET"            reset the connection (RST) without a reply;
 *   "@HANG"             never answer (until responder_stop());
 *   "@SLOW:<ms>:<raw>"  wait ms milliseconds, then write raw as above.
 *
 * replies and its strings are copied.  Returns a new responder, or NULL with
 * errno set (EINVAL for n == 0 or a malformed "@SLOW:").
 */
struct responder *responder_start(const char *const *replies, size_t n);

int responder_port(const struct responder *r);

/* "http://127.0.0.1:PORT", owned by r. */
char *responder_url(const struct responder *r);

/* How many requests were read fully so far. */
int responder_requests(const struct responder *r);

/*
 * The last request's raw bytes (headers and body, NUL-terminated), or NULL
 * before the first.  Owned by r and valid until responder_stop(): every
 * request is kept, so a later request does not invalidate it.
 */
const char *responder_last_request(const struct responder *r);

/* The i-th request (from 0) as above, or NULL if there is none yet. */
const char *responder_request(const struct responder *r, int i);

/*
 * Waits up to timeout_ms for at least count requests to have been read.
 * Returns 0, or -ETIMEDOUT.
 */
int responder_wait_requests(const struct responder *r, int count, int timeout_ms);

/* Closes every socket, wakes hanging replies, joins all threads, frees r.
 * Accepts NULL. */
void responder_stop(struct responder *r);

#endif
