/* Helpers for tests that drive a libuv loop: run it until a condition holds
 * or a deadline passes, and tear everything down checking that no handle
 * leaked (uv_loop_close() == 0, as libuv's own tests do). */
#ifndef HARNESS_LOOPTEST_H
#define HARNESS_LOOPTEST_H

#include <stdbool.h>
#include <uv.h>

/* Runs loop until *flag becomes true or timeout_ms passes; returns *flag. */
bool loop_until(uv_loop_t *loop, const volatile bool *flag, int timeout_ms);

/* Same with a predicate. */
bool loop_until_fn(uv_loop_t *loop, bool (*pred)(void *), void *arg, int timeout_ms);

/* Runs the loop for ms milliseconds. */
void loop_for(uv_loop_t *loop, int ms);

/* Runs the loop until nothing is left and closes it; returns
 * uv_loop_close()'s result. */
int loop_finish(uv_loop_t *loop);

#endif
