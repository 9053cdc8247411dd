/* systemd's socket activation (sd_listen_fds(3)), written here in a few
 * lines as notify.c writes the notify protocol, rather than linking
 * libsystemd. When systemd (or systemd-socket-activate) starts the agent
 * from discovery-agent.socket, it passes the listening sockets for
 * agent.sock and xds.sock as descriptors 3, 4, ... and says so in
 * $LISTEN_PID (which must be ours), $LISTEN_FDS (how many) and
 * $LISTEN_FDNAMES (their FileDescriptorName=, ':'-separated). systemd keeps
 * its own copy of each socket, so while the agent restarts the sockets stay
 * open and connections wait in their backlog instead of being refused.
 *
 * Without those variables (not socket-activated) nothing is passed and the
 * agent makes its sockets itself, as it always did. */
#ifndef DA_LISTEN_FDS_H
#define DA_LISTEN_FDS_H

/* Reads the variables once per process (later calls return the same
 * count): when $LISTEN_PID is this process, descriptors 3 to 3+N-1 become
 * the agent's, each marked close-on-exec so that no child (an exec check)
 * inherits them, and the three variables are removed from the environment
 * for the same reason. Returns N, 0 when not socket-activated, or a
 * negative errno when the variables are malformed (nothing is taken). */
int listen_fds_init(void);

/* Takes the passed socket for one of the agent's listeners: the one bound
 * to path, else the one socket whose name in $LISTEN_FDNAMES is name
 * ("agent", "xds": two socket units with FileDescriptorName= each, for
 * sockets bound where the agent cannot see the same path). A name that
 * several sockets share (one unit names all its sockets alike) picks none. Returns the descriptor, now the caller's and non-blocking (closing
 * it leaves systemd's copy listening), or -ENOENT when none was passed for
 * it, or -ENOTSOCK when the passed one is not a listening unix stream
 * socket (it is then closed). Each descriptor is taken at most once. */
int listen_fds_take(const char *name, const char *path);

/* Closes the passed descriptors nobody took (a socket unit listing xds.sock
 * for an agent with xds.enabled false); systemd keeps its copies. Returns
 * how many were closed. */
int listen_fds_close_rest(void);

#endif
