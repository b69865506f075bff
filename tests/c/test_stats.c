/* bd_stats_get: values, the accounting identity and monotonicity under load. */
#include "test_util.h"

static void stats_basic(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    bd_stats s = get_stats(d);
    bd_stats zero;
    memset(&zero, 0, sizeof zero);
    CHECK(memcmp(&s, &zero, sizeof s) == 0);
    CHECK_STATUS(enqueue_sized(d, 1, 0, 8), BD_STATUS_OK);
    CHECK_STATUS(enqueue_sized(d, 1, 1, 10), BD_STATUS_OK);
    CHECK_STATUS(enqueue_sized(d, 1, 2, 12), BD_STATUS_OK);
    s = get_stats(d);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.queued_entries, 3);
    CHECK_EQ(s.queued_bytes, 30);
    CHECK_EQ(s.dispatched, 0);
    CHECK_EQ(s.batches, 0);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    s = get_stats(d);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.dispatched, 3);
    CHECK_EQ(s.batches, 1);
    CHECK_EQ(s.retries, 0);
    CHECK_EQ(s.failed + s.evicted + s.abandoned + s.rejected, 0);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.queued_bytes, 0);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    CHECK_STATUS(enqueue_sized(d, 1, 3, 8), BD_STATUS_CLOSED);
    s = get_stats(d);
    CHECK_EQ(s.rejected, 1);
    CHECK_EQ(s.enqueued, 3);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct during_ctx {
    uint64_t prev_ok, prev_failed, prev_calls;
    int mismatches;
    size_t checked;
} during_ctx;

static int fail_every_third(recorder *r, const bd_batch *b, size_t call) {
    (void)r;
    (void)b;
    return call % 3 == 2 ? 1 : 0;
}

static void during_hook(recorder *r, const bd_batch *b, size_t call) {
    during_ctx *c = r->ctx;
    bd_stats s;
    if (bd_stats_get(r->d, &s) != BD_STATUS_OK || !stats_consistent(&s)) {
        c->mismatches++;
        return;
    }
    /* The batch being dispatched is in flight, not dispatched (nor failed) yet. */
    if (s.dispatched != c->prev_ok || s.failed != c->prev_failed ||
        s.in_flight_entries != b->count || s.batches != c->prev_calls) {
        fprintf(stderr,
                "call %zu: dispatched %" PRIu64 " (expected %" PRIu64 "), failed %" PRIu64
                " (expected %" PRIu64 "), in_flight %" PRIu64 " (batch %zu), batches %" PRIu64
                " (expected %" PRIu64 ")\n",
                call, s.dispatched, c->prev_ok, s.failed, c->prev_failed, s.in_flight_entries,
                b->count, s.batches, c->prev_calls);
        c->mismatches++;
    }
    if (fail_every_third(r, b, call)) {
        c->prev_failed += b->count;
    } else {
        c->prev_ok += b->count;
    }
    c->prev_calls++;
    c->checked++;
}

/* An entry counts as dispatched only once the callback that carried it returned success. */
static void stats_dispatched_after_return(void) {
    recorder r;
    rec_init(&r);
    during_ctx c;
    memset(&c, 0, sizeof c);
    r.ctx = &c;
    r.hook = during_hook;
    r.result_fn = fail_every_third;
    bd_options o = rec_options();
    o.max_batch_entries = 4;
    bd_dispatcher *d = rec_new(&r, 5, &o);
    for (uint32_t i = 0; i < 40; i++) {
        CHECK_STATUS(enqueue_tagged(d, 2, i), BD_STATUS_OK);
    }
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    CHECK(c.checked >= 10);
    CHECK_EQ(c.mismatches, 0);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.dispatched, c.prev_ok);
    CHECK_EQ(s.failed, c.prev_failed);
    CHECK_EQ(s.dispatched, atomic_load(&r.ok_entries));
    CHECK_EQ(s.dispatched + s.failed, 40);
    CHECK(s.failed > 0);
    CHECK_EQ(s.failed, rec_drop_entries(&r));
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

static int fail_pattern(recorder *r, const bd_batch *b, size_t call) {
    (void)r;
    (void)b;
    /* A batch first tried at a call = 1 (mod 5) fails twice: for good with max_attempts 2. */
    return (call % 5 == 1 || call % 5 == 2) ? 1 : 0;
}

typedef struct snapper {
    const bd_dispatcher *d;
    atomic_int stop;
    size_t snapshots;
    int errors;
    size_t max_queued;
} snapper;

static void *snapshot_loop(void *arg) {
    snapper *sn = arg;
    bd_stats prev;
    memset(&prev, 0, sizeof prev);
    while (!atomic_load(&sn->stop)) {
        bd_stats s;
        if (bd_stats_get(sn->d, &s) != BD_STATUS_OK) {
            sn->errors++;
            continue;
        }
        if (!stats_consistent(&s)) {
            fprintf(stderr,
                    "inconsistent: enqueued %" PRIu64 " != dispatched %" PRIu64 " + failed %" PRIu64
                    " + evicted %" PRIu64 " + abandoned %" PRIu64 " + queued %" PRIu64
                    " + in_flight %" PRIu64 "\n",
                    s.enqueued, s.dispatched, s.failed, s.evicted, s.abandoned, s.queued_entries,
                    s.in_flight_entries);
            sn->errors++;
        }
        if (s.enqueued < prev.enqueued || s.rejected < prev.rejected ||
            s.dispatched < prev.dispatched || s.failed < prev.failed ||
            s.evicted < prev.evicted || s.abandoned < prev.abandoned ||
            s.batches < prev.batches || s.retries < prev.retries) {
            fprintf(stderr, "a counter went backwards\n");
            sn->errors++;
        }
        if (s.queued_entries > sn->max_queued) {
            fprintf(stderr, "queued_entries %" PRIu64 " above the bound %zu\n", s.queued_entries,
                    sn->max_queued);
            sn->errors++;
        }
        prev = s;
        sn->snapshots++;
    }
    return NULL;
}

typedef struct load_producer {
    const bd_dispatcher *d;
    uint32_t tag, n;
} load_producer;

static void *load_produce(void *arg) {
    load_producer *p = arg;
    for (uint32_t i = 0; i < p->n; i++) {
        CHECK_STATUS(enqueue_tagged(p->d, p->tag, i), BD_STATUS_OK); /* DROP_OLDEST: never full */
    }
    return NULL;
}

static bool some_evicted(void *arg) {
    bd_stats s;
    CHECK_STATUS(bd_stats_get(arg, &s), BD_STATUS_OK);
    return s.evicted > 0;
}

/* Under load (producers, failing batches, retries, DROP_OLDEST evictions), every snapshot taken
 * from another thread satisfies the identity, and counters never go backwards. */
static void stats_under_load(void) {
    const uint32_t per_thread = 20000;
    recorder r;
    rec_init(&r);
    r.result_fn = fail_pattern;
    r.max_count = 20;
    atomic_store(&r.gate_calls, 1);
    bd_options o = rec_options();
    o.max_queue_entries = 50;
    o.max_batch_entries = 20;
    o.overflow = BD_OVERFLOW_DROP_OLDEST;
    o.max_attempts = 2;
    o.retry_backoff_ms = 1;
    o.retry_backoff_max_ms = 2;
    bd_dispatcher *d = rec_new(&r, 2, &o);
    snapper sn = {.d = d, .max_queued = 50};
    atomic_init(&sn.stop, 0);
    pthread_t snap_th;
    CHECK(pthread_create(&snap_th, NULL, snapshot_loop, &sn) == 0);
    load_producer p[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        p[i] = (load_producer){d, (uint32_t)i, per_thread};
        CHECK(pthread_create(&th[i], NULL, load_produce, &p[i]) == 0);
    }
    /* The first callback holds the worker until the queue overflowed at least once. */
    CHECK(wait_until(some_evicted, d, T(10000)));
    gate_open(&r.gate);
    for (int i = 0; i < 3; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
    }
    CHECK_STATUS(bd_flush(d, T(20000)), BD_STATUS_OK);
    atomic_store(&sn.stop, 1);
    CHECK(pthread_join(snap_th, NULL) == 0);
    CHECK_EQ(sn.errors, 0);
    CHECK(sn.snapshots >= 10);

    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 3 * per_thread);
    CHECK_EQ(s.rejected, 0);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_EQ(s.dispatched + s.failed + s.evicted, 3 * per_thread);
    CHECK(s.evicted > 0);
    CHECK(s.failed > 0);
    CHECK(s.retries > 0);
    CHECK_EQ(s.dispatched, atomic_load(&r.ok_entries));
    CHECK_EQ(s.batches, rec_disp_calls(&r));
    /* on_drop saw exactly the failed and evicted entries. */
    pthread_mutex_lock(&r.mu);
    uint64_t failed = 0, evicted = 0;
    for (size_t i = 0; i < r.drops.nb; i++) {
        if (r.drops.b[i].reason == BD_DROP_REASON_FAILED) {
            failed += r.drops.b[i].count;
        } else if (r.drops.b[i].reason == BD_DROP_REASON_EVICTED) {
            evicted += r.drops.b[i].count;
            CHECK_EQ(r.drops.b[i].attempt, 0);
        } else {
            CHECK(!"unexpected drop reason");
        }
    }
    pthread_mutex_unlock(&r.mu);
    CHECK_EQ(failed, s.failed);
    CHECK_EQ(evicted, s.evicted);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"stats_basic", stats_basic},
        {"stats_dispatched_after_return", stats_dispatched_after_return},
        {"stats_under_load", stats_under_load},
    };
    return RUN_TESTS(tests, argc, argv);
}
