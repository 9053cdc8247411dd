/* systemd's notify protocol (sd_notify(3)): a datagram of "KEY=VALUE" lines
 * to the socket named by $NOTIFY_SOCKET. Written here in a few lines rather
 * than linking libsystemd for one sendto(). Without $NOTIFY_SOCKET (not run
 * by systemd) every call does nothing. */
#ifndef DA_NOTIFY_H
#define DA_NOTIFY_H

#include <stdint.h>

/* Sends state ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=..."). Returns
 * 0, or a negative errno (the caller may ignore it: systemd's own
 * sd_notify is advisory too). */
int notify_send(const char *state);

/* The watchdog interval systemd asks for ($WATCHDOG_USEC, when
 * $WATCHDOG_PID is ours or unset), in milliseconds; 0 when off. */
uint64_t notify_watchdog_ms(void);

#endif
