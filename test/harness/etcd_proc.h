/*
 * etcd_proc: real etcd 3.4 members for integration tests.
 *
 * A cluster lives in a fresh temp folder (mkdtemp under $TMPDIR or /tmp) with
 * one data folder and one log file per member (DIR/mN, DIR/mN.log).  Members
 * listen on free loopback ports and run with short heartbeat and election
 * timeouts so that elections take well under a second.  Every member is
 * killed by the kernel if the test process dies (see proc.h; "dies" means
 * the thread that called etcd_cluster_start() or etcd_member_start() ends,
 * so call them from the test's main thread), and a small janitor process
 * removes the temp folder then, so a failed Check assertion (which ends a
 * forked test with _exit()) or a Check timeout leaves nothing behind.
 *
 * Set ETCD_HARNESS_KEEP=1 in the environment to keep the temp folder (and its
 * logs) after etcd_cluster_stop(); its path is printed on stderr.
 *
 * Functions that can fail print why on stderr (a test wants to see it) and
 * return NULL or a negative errno value.
 *
 * Members are "live" when their process runs and is not frozen; etcdctl(),
 * etcd_cluster_leader() and etcd_cluster_wait_healthy() talk only to live
 * members.
 */
#ifndef HARNESS_ETCD_PROC_H
#define HARNESS_ETCD_PROC_H

#include <stddef.h>

#define ETCD_MAX_MEMBERS 5
/* The credentials created when etcd_cluster_opts.auth is set. */
#define ETCD_ROOT_USER "root"
#define ETCD_ROOT_PASSWORD "rootpw"

struct etcd_cluster;

struct etcd_cluster_opts {
    int members; /* 1, 3 or 5; 0 means 1 */
    /*
     * If set, user root with password "rootpw" is created (with the root
     * role) and auth is enabled once the cluster is up.
     */
    int auth;
    /*
     * If set, client URLs are https, with a CA, a server certificate (SAN
     * IP:127.0.0.1) and a client certificate (CN "client", which is no etcd
     * user, so auth still needs a password) generated with the openssl CLI
     * into the temp folder.  Members require client certificates
     * (--client-cert-auth).  Peer URLs stay plain http.
     */
    int tls;
};

/* Starts every member and waits (up to 15 s) for a leader.  Returns a new
 * cluster to be freed with etcd_cluster_stop(), or NULL. */
struct etcd_cluster *etcd_cluster_start(const struct etcd_cluster_opts *opts);

int etcd_cluster_size(const struct etcd_cluster *c);

/* Client URL of member i, "http://127.0.0.1:PORT" (https with tls); owned by
 * c.  NULL if i is out of range. */
const char *etcd_member_url(const struct etcd_cluster *c, int i);

/* Every member's client URL, comma-separated, whatever their state; owned by
 * c. */
const char *etcd_cluster_urls(const struct etcd_cluster *c);

/* The temp folder; tests may put files there.  Owned by c. */
const char *etcd_cluster_dir(const struct etcd_cluster *c);

/* PEM files of a tls cluster (NULL otherwise); owned by c. */
const char *etcd_cluster_ca_file(const struct etcd_cluster *c);
const char *etcd_cluster_client_cert(const struct etcd_cluster *c);
const char *etcd_cluster_client_key(const struct etcd_cluster *c);

/* Member i's log file (DIR/mN.log); owned by c. */
const char *etcd_member_log(const struct etcd_cluster *c, int i);

/* The pid of member i's process, or -1 if it is not running (for /proc
 * readings: the fleet benchmark's CPU and memory per member). */
int etcd_member_pid(struct etcd_cluster *c, int i);

/* 1 if member i's process runs (frozen or not), else 0. */
int etcd_member_running(struct etcd_cluster *c, int i);

/* SIGKILL and reap.  0, or a negative errno (-ESRCH if not running). */
int etcd_member_kill(struct etcd_cluster *c, int i);

/* SIGTERM, wait up to 10 s, then SIGKILL.  0 or a negative errno. */
int etcd_member_stop(struct etcd_cluster *c, int i);

/*
 * Starts a stopped member again with the same data folder and ports
 * (--initial-cluster-state existing).  Waits up to 15 s until it answers on
 * its client port and, when a quorum of members is running, until it sees a
 * leader.  0 or a negative errno (-EBUSY if it is running).
 */
int etcd_member_start(struct etcd_cluster *c, int i);

/* SIGSTOP / SIGCONT.  0 or a negative errno. */
int etcd_member_freeze(struct etcd_cluster *c, int i);
int etcd_member_thaw(struct etcd_cluster *c, int i);

/*
 * Single-member clusters only (-EINVAL otherwise): kills the member, deletes
 * its data folder and starts it as a NEW cluster (new cluster token) on the
 * same ports, so keys, leases and users are gone and the revision restarts.
 * With opts.auth, root/rootpw is created and auth enabled again, so the same
 * credentials keep working against the new cluster.  0 or a negative errno.
 */
int etcd_member_wipe(struct etcd_cluster *c, int i);

/*
 * Index of the current leader: asks every live member's
 * /v3/maintenance/status and finds the member whose header.member_id is the
 * reported leader.  Waits up to 10 s for one; -1 if none.
 */
int etcd_cluster_leader(struct etcd_cluster *c);

/* Waits until every live member answers /health with "true" and all of
 * them agree on a leader.  0, or -ETIMEDOUT. */
int etcd_cluster_wait_healthy(struct etcd_cluster *c, int timeout_ms);

/*
 * Runs `etcdctl --endpoints=<live members> [--user root:rootpw] [tls flags]
 * args...` (args NULL-terminated) with ETCDCTL_API=3, captures stdout into
 * out (see proc_run()), and returns the exit status, or -1 on timeout (20 s)
 * or failure to run.  stderr goes to the test's stderr.
 */
int etcdctl(struct etcd_cluster *c, char *out, size_t outlen, const char *const args[]);

/* etcdctl() as the given "user:password", or with no user at all when user
 * is NULL, whatever opts.auth says. */
int etcdctl_as(struct etcd_cluster *c, const char *user, char *out, size_t outlen,
               const char *const args[]);

/* Kills every member and removes the temp folder.  Accepts NULL. */
void etcd_cluster_stop(struct etcd_cluster *c);

#endif
