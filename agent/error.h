/* Error codes of the daemon: negative numbers, errno values where one fits,
 * our own (below -4000) where none does. One table gives the code, its name
 * and its text, as libuv's UV_ERRNO_MAP does, so that the three never drift. */
#ifndef DA_ERROR_H
#define DA_ERROR_H

#include <errno.h>

#define DA_ERRNO_MAP(XX)                                                                           \
    XX(NOMEM, -ENOMEM, "out of memory")                                                            \
    XX(INVAL, -EINVAL, "invalid argument")                                                         \
    XX(NOENT, -ENOENT, "not found")                                                                \
    XX(TIMEDOUT, -ETIMEDOUT, "timed out")                                                          \
    XX(CONNREFUSED, -ECONNREFUSED, "connection refused")                                           \
    XX(CANCELED, -ECANCELED, "canceled")                                                           \
    XX(MSGSIZE, -EMSGSIZE, "reply too large")                                                      \
    XX(ACCES, -EACCES, "permission denied")                                                        \
    XX(FBIG, -EFBIG, "file too large")                                                             \
    XX(PROTO, -4001, "malformed reply")                                                            \
    XX(TRANSPORT, -4002, "connection to etcd failed")                                              \
    XX(NOLEADER, -4003, "etcd member has no leader")                                               \
    XX(HTTP, -4004, "unexpected HTTP status from etcd")                                            \
    XX(ETCD, -4005, "etcd refused the request")                                                    \
    XX(AUTH, -4006, "etcd authentication failed")                                                  \
    XX(COMPACTED, -4007, "revision has been compacted")                                            \
    XX(LEASE, -4008, "lease not found")                                                            \
    XX(UNAVAIL, -4009, "no etcd endpoint reachable")                                               \
    XX(WITHHELD, -4010, "kept out of etcd: unhealthy, drained or in maintenance")

enum {
#define XX(name, code, text) DA_E##name = (code),
    DA_ERRNO_MAP(XX)
#undef XX
};

/* A static string; an unknown code gives a generic text. */
const char *da_strerror(int err);

#endif
