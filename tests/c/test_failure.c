/* Failed dispatches, on_drop(FAILED) and retries with backoff. */
#include "test_util.h"

static int always_fail(recorder *r, const bd_batch *b, size_t call) {
    (void)r;
    (void)b;
    (void)call;
    return 1;
}

/* Default max_attempts = 1: a failed batch is not retried; its entries are counted as failed
 * and handed to on_drop(FAILED) on the dispatcher's thread. */
static void fail_no_retry(void) {
    recorder r;
    rec_init(&r);
    r.result_fn = always_fail;
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    for (uint32_t i = 0; i < 5; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK); /* "dispatched or dropped" */
    pthread_mutex_lock(&r.mu);
    CHECK_EQ(r.disp.ne, 5);          /* each entry was tried exactly once */
    CHECK_EQ(r.drops.ne, 5);         /* and dropped once */
    CHECK_EQ(r.drops.nb, r.disp.nb); /* one drop per failed batch */
    for (size_t i = 0; i < r.disp.nb; i++) {
        CHECK_EQ(r.disp.b[i].attempt, 1);
        CHECK_EQ(r.drops.b[i].reason, BD_DROP_REASON_FAILED);
        CHECK_EQ(r.drops.b[i].count, r.disp.b[i].count);
        CHECK(pthread_equal(r.drops.b[i].thread, r.disp.b[0].thread)); /* dispatcher thread */
        CHECK(!pthread_equal(r.drops.b[i].thread, pthread_self()));
    }
    for (size_t i = 0; i < 5; i++) {
        CHECK_EQ(rec_seq(&r.disp, i), i);
        CHECK_EQ(rec_seq(&r.drops, i), i);
    }
    size_t calls = r.disp.nb;
    pthread_mutex_unlock(&r.mu);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 5);
    CHECK_EQ(s.failed, 5);
    CHECK_EQ(s.dispatched, 0);
    CHECK_EQ(s.retries, 0);
    CHECK_EQ(s.batches, calls);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_EQ(s.queued_entries, 0);

    /* The dispatcher goes on after a failure. */
    CHECK_STATUS(enqueue_tagged(d, 1, 5), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    s = get_stats(d);
    CHECK_EQ(s.failed, 6);
    CHECK_EQ(rec_drop_entries(&r), 6);
    bd_free(d);
    CHECK_EQ(s.retries, 0);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* Call 0 (the single "preface" entry) succeeds; calls 1 .. `fails` fail; later calls succeed. */
static size_t g_fails;
static int fail_some(recorder *r, const bd_batch *b, size_t call) {
    (void)r;
    (void)b;
    return (call >= 1 && call <= g_fails) ? 1 : 0;
}

/* Queues 5 entries (tag 1) behind a preface entry (tag 0) whose callback waits on the gate, so
 * that the 5 are dispatched together as the second call. */
static bd_dispatcher *setup_five(recorder *r, uint64_t ms_delay, bd_options *o) {
    atomic_store(&r->gate_calls, 1);
    bd_dispatcher *d = rec_new(r, ms_delay, o);
    CHECK_STATUS(enqueue_tagged(d, 0, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(r, 1, T(5000)));
    for (uint32_t i = 0; i < 5; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    gate_open(&r->gate);
    return d;
}

/* Batch `i` of the dispatches holds exactly tag 1, seq 0..4. */
static void check_is_five(recorder *r, size_t i) {
    const rec_batch *b = &r->disp.b[i];
    CHECK_EQ(b->count, 5);
    for (size_t k = 0; k < 5; k++) {
        CHECK_EQ(rec_tag(&r->disp, b->first + k), 1);
        CHECK_EQ(rec_seq(&r->disp, b->first + k), k);
    }
}

static void newer_hook(recorder *r, const bd_batch *b, size_t call) {
    (void)b;
    if (call == 1) {
        /* Newer entries, enqueued while their predecessors are failing. */
        CHECK_STATUS(enqueue_tagged(r->d, 2, 0), BD_STATUS_OK);
        CHECK_STATUS(enqueue_tagged(r->d, 2, 1), BD_STATUS_OK);
    }
}

/* max_attempts 3: a failed batch is retried after its backoff with the same entries in the same
 * order (attempt 1, 2, 3), before anything newer; stats.retries counts the retries. */
static void retry_then_success(void) {
    const uint64_t ms_delay = 10, backoff = 40;
    recorder r;
    rec_init(&r);
    g_fails = 2;
    r.result_fn = fail_some;
    r.hook = newer_hook;
    bd_options o = rec_options();
    o.max_attempts = 3;
    o.retry_backoff_ms = backoff;
    o.retry_backoff_max_ms = 1000;
    bd_dispatcher *d = setup_five(&r, ms_delay, &o);
    CHECK(rec_wait_calls(&r, 4, T(5000)));
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    pthread_mutex_lock(&r.mu);
    for (size_t i = 1; i <= 3; i++) {
        check_is_five(&r, i);
        CHECK_EQ(r.disp.b[i].attempt, i);
        CHECK_EQ(r.disp.b[i].result, i < 3 ? 1 : 0);
    }
    /* Retry 1 waits >= max(backoff/2, ms_delay); retry 2 >= max(2*backoff/2, ms_delay). */
    CHECK(at_least_ms_apart(r.disp.b[2].start_ns, r.disp.b[1].start_ns, backoff / 2));
    CHECK(at_least_ms_apart(r.disp.b[2].start_ns, r.disp.b[1].start_ns, ms_delay));
    CHECK(at_least_ms_apart(r.disp.b[3].start_ns, r.disp.b[2].start_ns, backoff));
    /* The newer entries come only after the retried batch succeeded. */
    size_t newer = 0;
    for (size_t i = 0; i < r.disp.ne; i++) {
        if (rec_tag(&r.disp, i) == 2) {
            CHECK(r.disp.e[i].batch >= 4);
            CHECK_EQ(rec_seq(&r.disp, i), newer);
            newer++;
        }
    }
    CHECK_EQ(newer, 2);
    for (size_t i = 4; i < r.disp.nb; i++) {
        CHECK_EQ(r.disp.b[i].attempt, 1);
    }
    size_t calls = r.disp.nb;
    pthread_mutex_unlock(&r.mu);
    CHECK_EQ(rec_drop_entries(&r), 0);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.retries, 2);
    CHECK_EQ(s.batches, calls);
    CHECK_EQ(s.dispatched, 8);
    CHECK_EQ(s.failed, 0);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* Every attempt fails: max_attempts calls, then on_drop(FAILED) once with the entries. The
 * backoff is capped by retry_backoff_max_ms but still jittered into [b/2, b]. */
static void retry_exhausted(void) {
    const uint64_t ms_delay = 5, backoff = 20;
    recorder r;
    rec_init(&r);
    g_fails = 1000;
    r.result_fn = fail_some;
    bd_options o = rec_options();
    o.max_attempts = 3;
    o.retry_backoff_ms = backoff;
    o.retry_backoff_max_ms = backoff;
    bd_dispatcher *d = setup_five(&r, ms_delay, &o);
    CHECK(rec_wait_drop_entries(&r, 5, T(5000)));
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    pthread_mutex_lock(&r.mu);
    CHECK_EQ(r.disp.nb, 4);
    for (size_t i = 1; i <= 3; i++) {
        check_is_five(&r, i);
        CHECK_EQ(r.disp.b[i].attempt, i);
        CHECK_EQ(r.disp.b[i].result, 1);
    }
    for (size_t i = 2; i <= 3; i++) {
        CHECK(at_least_ms_apart(r.disp.b[i].start_ns, r.disp.b[i - 1].start_ns, backoff / 2));
        CHECK(at_least_ms_apart(r.disp.b[i].start_ns, r.disp.b[i - 1].start_ns, ms_delay));
    }
    CHECK_EQ(r.drops.nb, 1);
    CHECK_EQ(r.drops.b[0].reason, BD_DROP_REASON_FAILED);
    CHECK(pthread_equal(r.drops.b[0].thread, r.disp.b[1].thread));
    CHECK(r.drops.b[0].start_ns >= r.disp.b[3].start_ns); /* after the last attempt */
    for (size_t k = 0; k < 5; k++) {
        CHECK_EQ(rec_tag(&r.drops, k), 1);
        CHECK_EQ(rec_seq(&r.drops, k), k);
    }
    pthread_mutex_unlock(&r.mu);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.retries, 2);
    CHECK_EQ(s.batches, 4);
    CHECK_EQ(s.failed, 5);
    CHECK_EQ(s.dispatched, 1);
    CHECK_EQ(s.in_flight_entries, 0);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

static int fail_second(recorder *r, const bd_batch *b, size_t call) {
    (void)r;
    (void)b;
    return call == 1 ? 1 : 0; /* call 0 is the warm-up */
}

/* A retry also respects ms_delay when it is longer than the backoff. */
static void retry_respects_ms_delay(void) {
    const uint64_t ms_delay = 150;
    recorder r;
    rec_init(&r);
    r.result_fn = fail_second;
    bd_options o = rec_options();
    o.max_attempts = 2;
    o.retry_backoff_ms = 10;
    o.retry_backoff_max_ms = 10;
    bd_dispatcher *d = rec_new(&r, ms_delay, &o);
    warm_up(&r, d);
    CHECK_STATUS(enqueue_tagged(d, 3, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(&r, 3, T(5000)));
    pthread_mutex_lock(&r.mu);
    CHECK_EQ(r.disp.b[1].attempt, 1);
    CHECK_EQ(r.disp.b[1].result, 1);
    CHECK_EQ(r.disp.b[2].attempt, 2);
    CHECK_EQ(r.disp.b[2].count, 1);
    CHECK_EQ(rec_tag(&r.disp, r.disp.b[2].first), 3);
    CHECK(at_least_ms_apart(r.disp.b[2].start_ns, r.disp.b[1].start_ns, ms_delay));
    pthread_mutex_unlock(&r.mu);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.retries, 1);
    CHECK_EQ(s.dispatched, 2);
    CHECK_EQ(s.failed, 0);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"fail_no_retry", fail_no_retry},
        {"retry_then_success", retry_then_success},
        {"retry_exhausted", retry_exhausted},
        {"retry_respects_ms_delay", retry_respects_ms_delay},
    };
    return RUN_TESTS(tests, argc, argv);
}
