/* The agent's file descriptors: the limit it runs under, and a reserve that
 * local clients can never take.
 *
 * Every client of the socket server and of the xDS listener holds a
 * descriptor for as long as it stays connected, and a host's clients are
 * not under the agent's control. The agent's own work needs descriptors at
 * moments it does not choose: a new connection to etcd after a restart or a
 * failover (without it the lease expires and the host's instances vanish),
 * health checks (a TCP or HTTP connection, or the pipes of a command), DNS
 * lookups, and the files of cache.dir. So a client is refused when the
 * descriptor it arrived on is numbered within FDLIMIT_RESERVE of the limit.
 * The kernel always hands out the lowest free number, so a descriptor that
 * high means every lower one is taken; and since clients are never let
 * keep one up there, the top FDLIMIT_RESERVE numbers stay for the agent.
 *
 * The one rule for every listener: server.c and xds_grpc.c both ask
 * fdlimit_client_ok() about each connection they accept. */
#ifndef DA_FDLIMIT_H
#define DA_FDLIMIT_H

#include <stdbool.h>

/* Descriptors kept for the agent's own work, whatever its clients do: the
 * etcd connections (lease keep-alive, the shared watch stream, up to 8
 * reads, writes, and the spare ones a failover opens), health checks
 * running at once, DNS, HTTP, cache.dir files, gRPC's own descriptors and
 * libuv's. docs/operations.md says how to size LimitNOFILE around it. */
#define FDLIMIT_RESERVE 64

/* Raises the soft RLIMIT_NOFILE to the hard limit (the daemon calls it
 * once at start; a process that cannot raise it keeps what it has).
 * Returns the soft limit now in force, or -1 if it cannot be read. */
long fdlimit_raise(void);

/* The soft RLIMIT_NOFILE now in force, or -1 if it cannot be read. */
long fdlimit_get(void);

/* Whether a client connection just accepted on descriptor fd may be kept:
 * false when fd is among the top FDLIMIT_RESERVE descriptors the limit
 * allows (the caller then refuses it and closes fd). */
bool fdlimit_client_ok(int fd);

#endif
