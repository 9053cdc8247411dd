/* Small helpers every test and the harness need, written once: a monotonic
 * clock in milliseconds, a sleep that survives signals, and rm -rf for a
 * test's own temporary folder. */
#ifndef HARNESS_TESTUTIL_H
#define HARNESS_TESTUTIL_H

/* CLOCK_MONOTONIC in milliseconds: for deadlines, never for asserting how
 * long something took. */
long long now_ms(void);

/* Sleeps ms milliseconds, resuming after a signal (a test's children send
 * SIGCHLD). */
void sleep_ms(long ms);

/* Removes path and everything below it, without following links; keeps
 * going past what it cannot remove. Only for a test's own folders. */
void rm_rf(const char *path);

#endif
