#include "looptest.h"

static void tick(uv_timer_t *t)
{
    (void)t; /* only wakes uv_run(UV_RUN_ONCE) */
}

static bool flag_pred(void *arg)
{
    return *(const volatile bool *)arg;
}

bool loop_until_fn(uv_loop_t *loop, bool (*pred)(void *), void *arg, int timeout_ms)
{
    uv_timer_t t;
    uint64_t deadline;
    bool ok;

    uv_update_time(loop);
    deadline = uv_now(loop) + (uint64_t)timeout_ms;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 10, 10);
    while (!(ok = pred(arg)) && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

bool loop_until(uv_loop_t *loop, const volatile bool *flag, int timeout_ms)
{
    return loop_until_fn(loop, flag_pred, (void *)flag, timeout_ms);
}

static bool never(void *arg)
{
    (void)arg;
    return false;
}

void loop_for(uv_loop_t *loop, int ms)
{
    loop_until_fn(loop, never, NULL, ms);
}

int loop_finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    return uv_loop_close(loop);
}
