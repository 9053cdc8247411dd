/* The agent's etcd session: one lease of session.ttl, kept alive with a
 * keep-alive every third of the TTL. Failed keep-alives are retried
 * quickly inside the TTL; the lease is taken as lost only when etcd says so
 * (a keep-alive reply without TTL), never because etcd was unreachable for
 * a while: etcd extends leases across its own restarts and elections. A lost
 * lease is replaced by a new grant, retried with backoff for as long as the
 * agent runs. */
#ifndef DA_SESSION_H
#define DA_SESSION_H

#include <stdint.h>
#include <uv.h>

#include "etcd.h"

typedef struct session session;

/* Called with the new lease after every grant, and with 0 when the lease
 * is lost (before the next grant). */
typedef void (*session_cb)(session *s, int64_t lease, void *arg);

int session_new(session **out, uv_loop_t *loop, etcd_client *etcd, int64_t ttl_s, session_cb cb,
                void *arg);
void session_start(session *s);

/* Asks etcd now whether the lease is alive (a keep-alive out of turn), for
 * when something suggests it is not (a key of ours vanished). */
void session_check(session *s);

int64_t session_lease(const session *s); /* 0 when none */
int64_t session_ttl(const session *s);   /* configured, seconds */
/* Milliseconds since the last successful keep-alive or grant; -1 if none. */
int64_t session_since_keepalive(const session *s);
/* What etcd last said of the TTL left, minus the time since; <= 0 when it
 * may have expired. */
int64_t session_remaining_ms(const session *s);
uint64_t session_grants(const session *s); /* leases granted so far */

/* Revokes the lease (its keys go at once) and calls done, whatever etcd
 * answered; no session callback after this. */
void session_stop(session *s, void (*done)(void *arg), void *arg);
/* Frees; the loop must run once more. Accepts NULL; returns NULL. */
session *session_close(session *s);

#endif
