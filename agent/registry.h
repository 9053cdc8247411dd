/* The instances this host registers: those of the configuration and those
 * registered over the socket. Each is written as
 * <prefix>/<name>/<address> = instance_to_value() under the session lease.
 *
 * The registry heals itself: it follows its own services through the watch
 * cache, and a key of ours that is deleted or overwritten by someone else
 * is written again (with backoff, so that two writers fighting over a key
 * do not spin). A new lease (after the old one was lost) makes it write
 * every key again. */
#ifndef DA_REGISTRY_H
#define DA_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "cache.h"
#include "check.h"
#include "etcd.h"
#include "instance.h"
#include "session.h"

typedef struct registry registry;

/* Who a registration belongs to: the configuration, a socket connection
 * (removed when it closes), or nobody in particular (made over the socket
 * with "persist": it lasts until deregistered or the agent stops). */
#define REG_OWNER_CONFIG 0
#define REG_OWNER_RUNTIME UINT64_MAX

/* WITHHELD: kept out of etcd on purpose (unhealthy, drained, or the host
 * in maintenance); the registration stays and comes back by itself. */
enum reg_state { REG_PENDING, REG_REGISTERED, REG_FAILING, REG_WITHHELD };

struct reg_info {
    const struct instance *inst;
    uint64_t owner;
    enum reg_state state;
    const char *error; /* last failure, "" if none */
    int64_t revision;  /* of our last write */
    bool healthy;      /* true when there is no check */
    bool drained;
    const checker *check; /* NULL when none; checker_state() for details */
};

/* checks may be NULL (then registrations with a check are refused). */
int registry_new(registry **out, uv_loop_t *loop, etcd_client *etcd, cache *cache, session *session,
                 const char *prefix, struct check_ctx *checks);

/* The zone and region (locality:) written into the Metadata of every
 * instance added from now on, unless it says its own; borrowed, must
 * outlive r. NULL: none. */
void registry_set_locality(registry *r, const struct policy_config *p);

/* Adds or updates a registration. owner is a connection id (pid: its
 * peer's process, 0 if unknown), REG_OWNER_RUNTIME or REG_OWNER_CONFIG.
 * An instance registered by the configuration cannot be taken over by a
 * connection (DA_EACCES, with a reason in err). One owned by a connection
 * passes to the new owner if that is a connection of the same process (a
 * client that reconnected); another process gets DA_EACCES while the
 * owning connection is open. A persistent one passes to anyone. done, if
 * set, is called once the key is written (err 0) or the first write failed
 * (err < 0; the registry keeps trying).
 *
 * Writes and deletes of one key are never in flight together, and a delete
 * compares the revision of our write, so no delete can remove a newer write
 * (proved by test_registry and test_registrations). A name or an address that breaks the rules
 * of validate.h is DA_EINVAL. */
int registry_add(registry *r, const struct instance *inst, uint64_t owner, pid_t pid,
                 const struct check_spec *check, void (*done)(int err, void *arg), void *arg,
                 char *err, size_t errlen);

/* An instance with a check starts unhealthy, so it is not registered until
 * its check has passed `rise` times; one without is healthy at once.
 * done is called with DA_EWITHHELD while it is kept out of etcd. */

/* Drain: keep an instance out of etcd (its key deleted) until undrained.
 * Returns 0 or DA_ENOENT. The state survives a reload. */
int registry_drain(registry *r, const char *name, const char *address, bool on);
/* Maintenance: every instance of the host out of etcd until turned off. */
void registry_maint(registry *r, bool on, const char *reason);
bool registry_in_maint(const registry *r, const char **reason);
/* A ttl check's report from the application: pass, or fail with why.
 * Returns 0, DA_ENOENT (no such instance), or DA_EINVAL (its check is not
 * a ttl check). */
int registry_check_report(registry *r, const char *name, const char *address, bool pass,
                          const char *why);

/* Removes a registration and deletes its key (only if it is still our
 * write). owner_check, pid: the same rule as registry_add's takeover; pass
 * REG_OWNER_CONFIG to remove a configured one (reload). Returns 0,
 * DA_ENOENT, or DA_EACCES. done as above, once the delete is answered. */
int registry_remove(registry *r, const char *name, const char *address, uint64_t owner_check,
                    pid_t pid, void (*done)(int err, void *arg), void *arg);

/* The revision of this agent's last write or delete under service name
 * (0: none, or made before etcd's history restarted), so that reads can
 * wait for the cache to show it. */
int64_t registry_written_revision(const registry *r, const char *name);

/* Drops every done callback registered with arg (its caller is gone). */
void registry_forget(registry *r, void *arg);

/* Removes every registration of a connection. */
void registry_remove_owner(registry *r, uint64_t owner);

/* The session's lease changed (0: lost). */
void registry_set_lease(registry *r, int64_t lease);

/* True when every registration is written under the current lease. */
bool registry_settled(const registry *r);
size_t registry_count(const registry *r);
void registry_foreach(const registry *r, void (*fn)(const struct reg_info *ri, void *arg),
                      void *arg);

/* Deletes every key of ours (keys not ours are left alone), then calls
 * done. Registrations made after this are refused. */
void registry_stop(registry *r, void (*done)(void *arg), void *arg);
registry *registry_close(registry *r); /* loop must run once more; NULL-safe */

#endif
