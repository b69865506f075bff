/* bd_flush, bd_shutdown, bd_free and re-entrant calls from the dispatch callback. */
#include "test_util.h"

static bool freed_once(void *arg) { return atomic_load(&((recorder *)arg)->freed) >= 1; }

static void check_delivered(recorder *r, uint32_t tag, size_t n) {
    tagseq *v;
    size_t got = rec_delivered(r, &v);
    size_t k = 0;
    for (size_t i = 0; i < got; i++) {
        if (v[i].tag == tag) {
            CHECK_EQ(v[i].seq, k);
            k++;
        }
    }
    CHECK_EQ(k, n);
    free(v);
}

/* bd_flush dispatches at once, ignoring the (60 s) window, and returns OK once done. */
static void flush_dispatches_now(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    for (uint32_t i = 0; i < 5; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    CHECK(now_ns() - t0 < 30000 * NS_PER_MS); /* well before the window would end */
    /* Everything accepted before the call was dispatched when it returned: no waiting here. */
    CHECK_EQ(rec_disp_entries(&r), 5);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.dispatched, 5);
    CHECK_EQ(s.queued_entries, 0);
    /* Again, with BD_NO_TIMEOUT. */
    CHECK_STATUS(enqueue_tagged(d, 1, 5), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, BD_NO_TIMEOUT), BD_STATUS_OK);
    CHECK_EQ(rec_disp_entries(&r), 6);
    check_delivered(&r, 1, 6);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* Flushing an empty dispatcher returns OK and makes no (empty) callback. */
static void flush_nothing_queued(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 20, &o);
    CHECK_STATUS(bd_flush(d, T(5000)), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, 0), BD_STATUS_OK);
    CHECK_EQ(rec_disp_calls(&r), 0);
    CHECK_STATUS(enqueue_tagged(d, 2, 0), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(5000)), BD_STATUS_OK);
    CHECK_EQ(rec_disp_calls(&r), 1);
    CHECK_STATUS(bd_flush(d, T(5000)), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(5000)), BD_STATUS_OK);
    CHECK_EQ(rec_disp_calls(&r), 1);
    bd_free(d);
    CHECK_EQ(rec_disp_calls(&r), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* bd_flush returns TIMEOUT when its deadline passes (callback blocked); flushing again once the
 * callback can finish returns OK. */
static void flush_timeout(void) {
    recorder r;
    rec_init(&r);
    atomic_store(&r.gate_calls, 1);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 3, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(&r, 1, T(5000)));
    CHECK_STATUS(enqueue_tagged(d, 3, 1), BD_STATUS_OK);
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_flush(d, 100), BD_STATUS_TIMEOUT);
    CHECK(at_least_ms_apart(now_ns(), t0, 100));
    CHECK_STATUS(bd_flush(d, 0), BD_STATUS_TIMEOUT);
    gate_open(&r.gate);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    CHECK_EQ(rec_disp_entries(&r), 2);
    check_delivered(&r, 3, 2);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* bd_shutdown dispatches everything at once, then enqueues get CLOSED; it is idempotent. */
static void shutdown_closes(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    for (uint32_t i = 0; i < 3; i++) {
        CHECK_STATUS(enqueue_tagged(d, 4, i), BD_STATUS_OK);
    }
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    CHECK(now_ns() - t0 < 30000 * NS_PER_MS);
    CHECK_EQ(rec_disp_entries(&r), 3);
    CHECK_STATUS(enqueue_tagged(d, 4, 3), BD_STATUS_CLOSED);
    CHECK_STATUS(bd_enqueue(d, NULL, 0), BD_STATUS_CLOSED);
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, 0), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, BD_NO_TIMEOUT), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(1000)), BD_STATUS_OK);
    CHECK_STATUS(enqueue_tagged(d, 4, 4), BD_STATUS_CLOSED);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.dispatched, 3);
    CHECK_EQ(s.rejected, 3);
    CHECK_EQ(s.abandoned, 0);
    CHECK_EQ(atomic_load(&r.freed), 0);
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    CHECK_EQ(rec_disp_entries(&r), 3);
    check_delivered(&r, 4, 3);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct shutter {
    const bd_dispatcher *d;
    pthread_barrier_t *start;
    bd_status status;
} shutter;

static void *shut_down(void *arg) {
    shutter *s = arg;
    pthread_barrier_wait(s->start);
    s->status = bd_shutdown(s->d, BD_NO_TIMEOUT);
    return NULL;
}

/* bd_shutdown from several threads at once: all return OK, nothing is lost. */
static void shutdown_concurrent(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    for (uint32_t i = 0; i < 500; i++) {
        CHECK_STATUS(enqueue_tagged(d, 5, i), BD_STATUS_OK);
    }
    pthread_barrier_t start;
    CHECK(pthread_barrier_init(&start, NULL, 4) == 0);
    shutter s[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        s[i] = (shutter){d, &start, 12345};
        CHECK(pthread_create(&th[i], NULL, shut_down, &s[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK_STATUS(s[i].status, BD_STATUS_OK);
    }
    pthread_barrier_destroy(&start);
    CHECK_EQ(rec_disp_entries(&r), 500);
    CHECK_STATUS(enqueue_tagged(d, 5, 500), BD_STATUS_CLOSED);
    bd_free(d);
    check_delivered(&r, 5, 500);
    CHECK_EQ(atomic_load(&r.freed), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* At a shutdown deadline, queued entries (not the batch in flight) go to on_drop with
 * SHUTDOWN_TIMEOUT on the calling thread, are counted as abandoned, and TIMEOUT is returned; the
 * batch in flight finishes afterwards. */
static void shutdown_timeout(void) {
    recorder r;
    rec_init(&r);
    atomic_store(&r.gate_calls, 1);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 6, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(&r, 1, T(5000))); /* entry 0 in flight, blocked */
    for (uint32_t i = 1; i <= 4; i++) {
        CHECK_STATUS(enqueue_tagged(d, 6, i), BD_STATUS_OK);
    }
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 100), BD_STATUS_TIMEOUT);
    CHECK(at_least_ms_apart(now_ns(), t0, 100));
    /* The abandoned entries were handed over before bd_shutdown returned, on this thread. */
    pthread_mutex_lock(&r.mu);
    CHECK_EQ(r.drops.ne, 4);
    for (size_t i = 0; i < r.drops.nb; i++) {
        CHECK_EQ(r.drops.b[i].reason, BD_DROP_REASON_SHUTDOWN_TIMEOUT);
        CHECK_EQ(r.drops.b[i].attempt, 0);
        CHECK(pthread_equal(r.drops.b[i].thread, pthread_self()));
    }
    for (size_t i = 0; i < 4; i++) {
        CHECK_EQ(rec_seq(&r.drops, i), i + 1);
    }
    pthread_mutex_unlock(&r.mu);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.abandoned, 4);
    CHECK_EQ(s.in_flight_entries, 1);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.enqueued, 5);
    CHECK_STATUS(enqueue_tagged(d, 6, 5), BD_STATUS_CLOSED);
    /* The batch in flight may finish. */
    gate_open(&r.gate);
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    s = get_stats(d);
    CHECK_EQ(s.dispatched, 1);
    CHECK_EQ(s.abandoned, 4);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_EQ(rec_disp_calls(&r), 1);
    CHECK_EQ(rec_drop_entries(&r), 4);
    bd_free(d);
    CHECK(wait_until(freed_once, &r, T(5000)));
    CHECK_EQ(atomic_load(&r.freed), 1);
    wait_worker_exit();
    rec_check_sane(&r);
    rec_destroy(&r);
}

static void *open_gate_later(void *arg) {
    sleep_ms(100); /* only so that bd_shutdown really has to wait; not for synchronisation */
    gate_open(arg);
    return NULL;
}

/* bd_shutdown(BD_NO_TIMEOUT) waits as long as it takes, and abandons nothing. */
static void shutdown_no_timeout(void) {
    recorder r;
    rec_init(&r);
    atomic_store(&r.gate_calls, 1);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 7, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(&r, 1, T(5000)));
    for (uint32_t i = 1; i <= 3; i++) {
        CHECK_STATUS(enqueue_tagged(d, 7, i), BD_STATUS_OK);
    }
    pthread_t th;
    CHECK(pthread_create(&th, NULL, open_gate_later, &r.gate) == 0);
    CHECK_STATUS(bd_shutdown(d, BD_NO_TIMEOUT), BD_STATUS_OK);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_EQ(rec_disp_entries(&r), 4);
    CHECK_EQ(rec_drop_entries(&r), 0);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.abandoned, 0);
    CHECK_EQ(s.dispatched, 4);
    bd_free(d);
    check_delivered(&r, 7, 4);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* bd_free shuts down without a deadline (nothing accepted is lost), then calls user_data_free
 * exactly once, after the last callback, on the calling thread. */
static void free_delivers_all(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    o.max_batch_entries = 30;
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    for (uint32_t i = 0; i < 100; i++) {
        CHECK_STATUS(enqueue_tagged(d, 8, i), BD_STATUS_OK);
    }
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    CHECK(pthread_equal(r.free_thread, pthread_self()));
    CHECK_EQ(rec_disp_entries(&r), 100);
    check_delivered(&r, 8, 100);
    rec_check_sane(&r); /* includes: no callback after user_data_free */
    rec_destroy(&r);
}

typedef struct freer {
    bd_dispatcher *d;
    atomic_int done;
} freer;

static void *free_it(void *arg) {
    freer *f = arg;
    bd_free(f->d);
    atomic_store(&f->done, 1);
    return NULL;
}

static bool freer_done(void *arg) { return atomic_load(&((freer *)arg)->done) != 0; }

/* After a bd_shutdown that returned TIMEOUT, bd_free does not wait for the blocked callback: the
 * dispatcher thread frees everything (user_data_free once) when its callback returns. */
static void free_after_shutdown_timeout(void) {
    recorder r;
    rec_init(&r);
    atomic_store(&r.gate_calls, 1);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 9, 0), BD_STATUS_OK);
    CHECK(rec_wait_calls(&r, 1, T(5000)));
    CHECK_STATUS(bd_shutdown(d, 100), BD_STATUS_TIMEOUT);
    freer f = {.d = d};
    atomic_init(&f.done, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, free_it, &f) == 0);
    /* bd_free must return while the callback is still blocked. */
    bool returned = wait_until(freer_done, &f, T(5000));
    if (!returned) {
        gate_open(&r.gate); /* let it finish, but fail */
    }
    CHECK(returned);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_EQ(atomic_load(&r.freed), 0); /* not before the last callback returned */
    gate_open(&r.gate);
    CHECK(wait_until(freed_once, &r, T(5000)));
    wait_worker_exit();
    CHECK_EQ(atomic_load(&r.freed), 1);
    CHECK(!pthread_equal(r.free_thread, pthread_self()));
    CHECK(pthread_equal(r.free_thread, r.disp.b[0].thread));
    CHECK_EQ(atomic_load(&r.ok_entries), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct reenq_ctx {
    bd_status st[3];
    bd_status stats_st;
    bd_stats stats;
    size_t count;
    uint64_t elapsed_ns;
} reenq_ctx;

static void reenq_hook(recorder *r, const bd_batch *b, size_t call) {
    if (call == 0) {
        reenq_ctx *c = r->ctx;
        c->count = b->count;
        uint64_t t0 = now_ns();
        for (uint32_t i = 0; i < 3; i++) {
            c->st[i] = enqueue_tagged(r->d, 11, i);
        }
        c->elapsed_ns = now_ns() - t0;
        c->stats_st = bd_stats_get(r->d, &c->stats);
    }
}

/* bd_enqueue from inside the callback works at once; the entries arrive in a later batch. */
static void reentrant_enqueue(void) {
    recorder r;
    rec_init(&r);
    reenq_ctx c;
    memset(&c, 0, sizeof c);
    r.ctx = &c;
    r.hook = reenq_hook;
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 10, 0), BD_STATUS_OK);
    CHECK(rec_wait_entries(&r, 4, T(5000))); /* no flush: the window delivers them */
    CHECK(rec_wait_hooks(&r, 1, T(5000)));
    for (int i = 0; i < 3; i++) {
        CHECK_STATUS(c.st[i], BD_STATUS_OK);
    }
    CHECK(c.elapsed_ns < T(5000) * NS_PER_MS);
    CHECK_STATUS(c.stats_st, BD_STATUS_OK);
    CHECK(stats_consistent(&c.stats));
    CHECK_EQ(c.stats.in_flight_entries, c.count);
    CHECK_EQ(c.stats.queued_entries, 3);
    pthread_mutex_lock(&r.mu);
    for (size_t i = 0; i < r.disp.ne; i++) {
        if (rec_tag(&r.disp, i) == 11) {
            CHECK(r.disp.e[i].batch >= 1);
        }
    }
    pthread_mutex_unlock(&r.mu);
    check_delivered(&r, 11, 3);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct reflush_ctx {
    bd_status flush_inf, flush_0, shut_inf, shut_0;
} reflush_ctx;

static void reflush_hook(recorder *r, const bd_batch *b, size_t call) {
    (void)b;
    if (call == 0) {
        reflush_ctx *c = r->ctx;
        c->flush_inf = bd_flush(r->d, BD_NO_TIMEOUT);
        c->flush_0 = bd_flush(r->d, 0);
        c->shut_inf = bd_shutdown(r->d, BD_NO_TIMEOUT);
        c->shut_0 = bd_shutdown(r->d, 0);
    }
}

/* bd_flush and bd_shutdown from inside the callback return REENTRANT at once and do nothing. */
static void reentrant_flush_shutdown(void) {
    recorder r;
    rec_init(&r);
    reflush_ctx c;
    memset(&c, 0, sizeof c);
    r.ctx = &c;
    r.hook = reflush_hook;
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 10, &o);
    CHECK_STATUS(enqueue_tagged(d, 12, 0), BD_STATUS_OK);
    CHECK(rec_wait_hooks(&r, 1, T(5000)));
    CHECK_STATUS(c.flush_inf, BD_STATUS_REENTRANT);
    CHECK_STATUS(c.flush_0, BD_STATUS_REENTRANT);
    CHECK_STATUS(c.shut_inf, BD_STATUS_REENTRANT);
    CHECK_STATUS(c.shut_0, BD_STATUS_REENTRANT);
    /* Not shut down: it still accepts and delivers. */
    CHECK_STATUS(enqueue_tagged(d, 12, 1), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    check_delivered(&r, 12, 2);
    bd_free(d);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct refree_ctx {
    atomic_int armed;
    bd_status st[3];
} refree_ctx;

static bool refree_armed(void *arg) { return atomic_load(&((refree_ctx *)arg)->armed) != 0; }

static void refree_hook(recorder *r, const bd_batch *b, size_t call) {
    (void)b;
    if (call == 0) {
        refree_ctx *c = r->ctx;
        CHECK(wait_until(refree_armed, c, T(5000))); /* main no longer uses the handle */
        for (uint32_t i = 0; i < 3; i++) {
            c->st[i] = enqueue_tagged(r->d, 14, i);
        }
        bd_free(r->d_mut); /* deferred until this callback returns */
    }
}

/* bd_free from inside the callback: deferred; the dispatcher delivers everything still queued,
 * then frees itself (user_data_free once) on its own thread. */
static void reentrant_free(void) {
    recorder r;
    rec_init(&r);
    refree_ctx c;
    memset(&c, 0, sizeof c);
    atomic_init(&c.armed, 0);
    r.ctx = &c;
    r.hook = refree_hook;
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 20, &o);
    for (uint32_t i = 0; i < 3; i++) {
        CHECK_STATUS(enqueue_tagged(d, 13, i), BD_STATUS_OK);
    }
    d = NULL; /* from here on, the callback owns it */
    atomic_store(&c.armed, 1);
    CHECK(wait_until(freed_once, &r, T(5000)));
    wait_worker_exit();
    CHECK_EQ(atomic_load(&r.freed), 1);
    for (int i = 0; i < 3; i++) {
        CHECK_STATUS(c.st[i], BD_STATUS_OK);
    }
    CHECK(!pthread_equal(r.free_thread, pthread_self()));
    check_delivered(&r, 13, 3);
    check_delivered(&r, 14, 3);
    rec_check_sane(&r); /* includes: no callback after user_data_free */
    rec_destroy(&r);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"flush_dispatches_now", flush_dispatches_now},
        {"flush_nothing_queued", flush_nothing_queued},
        {"flush_timeout", flush_timeout},
        {"shutdown_closes", shutdown_closes},
        {"shutdown_concurrent", shutdown_concurrent},
        {"shutdown_timeout", shutdown_timeout},
        {"shutdown_no_timeout", shutdown_no_timeout},
        {"free_delivers_all", free_delivers_all},
        {"free_after_shutdown_timeout", free_after_shutdown_timeout},
        {"reentrant_enqueue", reentrant_enqueue},
        {"reentrant_flush_shutdown", reentrant_flush_shutdown},
        {"reentrant_free", reentrant_free},
    };
    return RUN_TESTS(tests, argc, argv);
}
