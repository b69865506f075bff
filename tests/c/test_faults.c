/*
 * Faulty dispatch callbacks through the C ABI: failing ones under load, ones that block until
 * released, and one that blocks forever.
 *
 * The promise checked: the dispatcher's thread survives every failure; each accepted entry has
 * exactly one outcome (delivered once, or handed to on_drop once with its reason) and the
 * counters say exactly that; bd_shutdown with a deadline returns BD_STATUS_TIMEOUT at the
 * deadline (plus generous slack for a loaded machine) however long the callback blocks; and the
 * handle stays usable afterwards: bd_stats_get works, bd_enqueue answers CLOSED, bd_free
 * returns. Single failures, retries and backoff timing are in test_failure.c; the basic
 * shutdown deadline in test_lifecycle.c.
 */
#include <limits.h>

#include "test_rng.h"

/* Slack allowed past a deadline before "on time" fails: scheduling on a shared 2-core machine
 * (and valgrind, through T()). Not a speed claim, only "it did not wait for the callback". */
#define DEADLINE_SLACK_MS 2000

/* Checks that a call with deadline `ms`, which took `took_ns`, returned on time. */
static void check_on_time(const char *what, uint64_t took_ns, uint64_t ms) {
    printf("  %s: deadline %" PRIu64 " ms, returned after %.1f ms\n", what, ms,
           (double)took_ns / 1e6);
    CHECK(took_ns + CLOCK_SLACK_NS >= ms * NS_PER_MS);
    CHECK(took_ns <= (ms + T(DEADLINE_SLACK_MS)) * NS_PER_MS);
}

/* ------------------------------------------------------------------------------------------ */
/* Failing callbacks under load                                                                */

#define FAIL_PRODUCERS 4

/* Per-entry ledger, indexed by producer * per + sequence. Written by the callbacks, which all
 * run on the dispatcher's thread here (FAILED drops are made there, and nothing is evicted or
 * abandoned), read after bd_free joined that thread. */
typedef struct ledger {
    uint64_t seed;
    uint32_t per;
    uint32_t max_attempts;
    unsigned fail_pct; /* this share of calls fails, by a seeded draw per call */
    uint8_t *tries, *ok, *dropped;
    uint64_t calls, failed_calls, retry_calls, ok_entries, drop_entries, drop_calls;
    uint64_t bad_attempt, bad_reason, unknown;
} ledger;

/* The entry's slot in the ledger; SIZE_MAX - 1 for the one extra entry sent after the load. */
#define LEDGER_EXTRA (SIZE_MAX - 1)

static size_t ledger_index(const ledger *l, const bd_entry *e) {
    if (e->len != 8) {
        return SIZE_MAX;
    }
    uint32_t p = get_u32(e->data), seq = get_u32(e->data + 4);
    if (p == FAIL_PRODUCERS && seq == 0) {
        return LEDGER_EXTRA;
    }
    if (p >= FAIL_PRODUCERS || seq >= l->per) {
        return SIZE_MAX;
    }
    return (size_t)p * l->per + seq;
}

static int ledger_dispatch(void *user_data, const bd_batch *b) {
    /* Failures are reported with any non-zero value, not just 1. */
    static const int failures[] = {1, -1, INT_MAX, INT_MIN};
    ledger *l = user_data;
    uint64_t call = l->calls++;
    bool fail = mix64(l->seed ^ call) % 100 < l->fail_pct;
    if (b->attempt < 1 || b->attempt > l->max_attempts) {
        l->bad_attempt++;
    }
    if (b->attempt > 1) {
        l->retry_calls++;
    }
    for (size_t i = 0; i < b->count; i++) {
        size_t k = ledger_index(l, &b->entries[i]);
        if (k >= LEDGER_EXTRA) {
            l->unknown += k == SIZE_MAX;
            continue;
        }
        l->tries[k]++;
        l->ok[k] += !fail;
    }
    if (fail) {
        l->failed_calls++;
        return failures[call % 4];
    }
    l->ok_entries += b->count;
    return 0;
}

static void ledger_drop(void *user_data, const bd_batch *b, bd_drop_reason reason) {
    ledger *l = user_data;
    l->drop_calls++;
    if (reason != BD_DROP_REASON_FAILED) {
        l->bad_reason++;
    }
    if (b->attempt != l->max_attempts) {
        l->bad_attempt++; /* a batch is dropped after its last attempt, not before */
    }
    for (size_t i = 0; i < b->count; i++) {
        size_t k = ledger_index(l, &b->entries[i]);
        if (k >= LEDGER_EXTRA) {
            l->unknown += k == SIZE_MAX;
            continue;
        }
        l->dropped[k]++;
    }
    l->drop_entries += b->count;
}

typedef struct fail_producer {
    const bd_dispatcher *d;
    uint32_t p, per;
    uint64_t refused;
} fail_producer;

static void *fail_produce(void *arg) {
    fail_producer *fp = arg;
    for (uint32_t seq = 0; seq < fp->per; seq++) {
        bd_status st = enqueue_tagged(fp->d, fp->p, seq);
        if (st != BD_STATUS_OK) {
            fprintf(stderr, "producer %u seq %u: %s\n", fp->p, seq, bd_status_str(st));
            fp->refused++;
        }
    }
    return NULL;
}

static void fail_under_load(const char *name, unsigned fail_pct, uint32_t max_attempts) {
    static ledger l;
    memset(&l, 0, sizeof l);
    l.seed = test_seed(name);
    l.per = slow_factor() > 1 ? 2000 : 20000;
    l.max_attempts = max_attempts;
    l.fail_pct = fail_pct;
    size_t n = (size_t)FAIL_PRODUCERS * l.per;
    l.tries = calloc(n, 1);
    l.ok = calloc(n, 1);
    l.dropped = calloc(n, 1);
    CHECK(l.tries != NULL && l.ok != NULL && l.dropped != NULL);

    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.max_batch_entries = 64; /* many batches, so many failures */
    o.max_attempts = max_attempts;
    o.retry_backoff_ms = 1;
    o.retry_backoff_max_ms = 2;
    o.on_drop = ledger_drop;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(ledger_dispatch, &l, 1, &o, &d), BD_STATUS_OK);
    fail_producer fp[FAIL_PRODUCERS];
    pthread_t th[FAIL_PRODUCERS];
    for (uint32_t p = 0; p < FAIL_PRODUCERS; p++) {
        fp[p] = (fail_producer){.d = d, .p = p, .per = l.per};
        CHECK(pthread_create(&th[p], NULL, fail_produce, &fp[p]) == 0);
    }
    uint64_t refused = 0;
    for (uint32_t p = 0; p < FAIL_PRODUCERS; p++) {
        CHECK(pthread_join(th[p], NULL) == 0);
        refused += fp[p].refused;
    }
    CHECK_STATUS(bd_flush(d, T(60000)), BD_STATUS_OK);
    bd_stats s = get_stats(d);

    /* The worker survived every failure: a new entry still gets its one outcome. */
    CHECK_STATUS(enqueue_tagged(d, FAIL_PRODUCERS, 0), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    bd_stats s2 = get_stats(d);
    bd_free(d);

    uint64_t delivered = 0, dropped = 0, neither = 0, both = 0, twice = 0, over_tries = 0;
    for (size_t k = 0; k < n; k++) {
        delivered += l.ok[k] == 1;
        dropped += l.dropped[k] == 1;
        neither += l.ok[k] == 0 && l.dropped[k] == 0;
        both += l.ok[k] != 0 && l.dropped[k] != 0;
        twice += l.ok[k] > 1 || l.dropped[k] > 1;
        over_tries += l.tries[k] > max_attempts || (l.dropped[k] && l.tries[k] != max_attempts);
    }
    printf("%s [%s]: %d producers x %u entries, %u%% of calls fail, max_attempts %u\n", name,
           test_variant(), FAIL_PRODUCERS, l.per, fail_pct, max_attempts);
    printf("  calls %" PRIu64 " (failed %" PRIu64 ", retries %" PRIu64 "); entries delivered %" PRIu64
           ", dropped FAILED %" PRIu64 " in %" PRIu64 " on_drop calls\n",
           l.calls, l.failed_calls, l.retry_calls, delivered, dropped, l.drop_calls);
    printf("  without outcome %" PRIu64 ", two outcomes %" PRIu64 ", an outcome twice %" PRIu64
           ", tries out of bounds %" PRIu64 ", bad attempt fields %" PRIu64 ", unknown %" PRIu64
           "\n",
           neither, both, twice, over_tries, l.bad_attempt, l.unknown);
    printf("  stats: enqueued %" PRIu64 " dispatched %" PRIu64 " failed %" PRIu64 " batches %" PRIu64
           " retries %" PRIu64 "; after one more entry: dispatched + failed %" PRIu64 "\n",
           s.enqueued, s.dispatched, s.failed, s.batches, s.retries, s2.dispatched + s2.failed);
    CHECK_EQ(refused, 0);
    CHECK(l.failed_calls > 0); /* the test did inject failures */
    CHECK_EQ(neither, 0);
    CHECK_EQ(both, 0);
    CHECK_EQ(twice, 0);
    CHECK_EQ(over_tries, 0);
    CHECK_EQ(l.bad_attempt, 0);
    CHECK_EQ(l.bad_reason, 0);
    CHECK_EQ(l.unknown, 0);
    CHECK_EQ(delivered + dropped, n);
    CHECK_EQ(s.enqueued, n);
    CHECK_EQ(s.dispatched, delivered);
    CHECK_EQ(s.failed, dropped);
    CHECK_EQ(s2.retries, l.retry_calls); /* s2: the ledger saw the extra entry's calls too */
    CHECK_EQ(s.rejected + s.evicted + s.abandoned, 0);
    CHECK_EQ(s2.dispatched + s2.failed, n + 1);
    CHECK_EQ(s2.batches, l.calls);
    free(l.tries);
    free(l.ok);
    free(l.dropped);
}

/* A third of the calls fail, no retry: each failed batch goes to on_drop once. */
static void fault_fail_load(void) { fail_under_load("fault_fail_load", 33, 1); }

/* Half of the attempts fail, up to 3 attempts: an entry is delivered once, or dropped once after
 * exactly 3 failed attempts; never both, never delivered twice. */
static void fault_fail_retry_load(void) { fail_under_load("fault_fail_retry_load", 50, 3); }

/* ------------------------------------------------------------------------------------------ */
/* A callback blocked until released, while producers go on                                   */

#define BLOCK_PRODUCERS 4
#define BLOCK_PER 2000

typedef struct blocker {
    gate_t gate;
    atomic_uint calls;
    atomic_uint freed;
    pthread_mutex_t mu; /* guards the two ledgers below: drops arrive on the shutdown thread */
    uint8_t delivered[BLOCK_PRODUCERS + 1][BLOCK_PER];
    uint8_t dropped[BLOCK_PRODUCERS + 1][BLOCK_PER];
    uint64_t drop_calls, bad_reason;
} blocker;

static void blocker_note(blocker *bl, const bd_batch *b, uint8_t (*ledger)[BLOCK_PER]) {
    pthread_mutex_lock(&bl->mu);
    for (size_t i = 0; i < b->count; i++) {
        uint32_t p = get_u32(b->entries[i].data), seq = get_u32(b->entries[i].data + 4);
        CHECK(b->entries[i].len == 8 && p <= BLOCK_PRODUCERS && seq < BLOCK_PER);
        ledger[p][seq]++;
    }
    pthread_mutex_unlock(&bl->mu);
}

static int blocker_dispatch(void *user_data, const bd_batch *b) {
    blocker *bl = user_data;
    if (atomic_fetch_add(&bl->calls, 1) == 0) {
        gate_wait(&bl->gate, T(60000)); /* the first call blocks until the test releases it */
    }
    blocker_note(bl, b, bl->delivered);
    return 0;
}

static void blocker_drop(void *user_data, const bd_batch *b, bd_drop_reason reason) {
    blocker *bl = user_data;
    pthread_mutex_lock(&bl->mu);
    bl->drop_calls++;
    bl->bad_reason += reason != BD_DROP_REASON_SHUTDOWN_TIMEOUT || b->attempt != 0;
    pthread_mutex_unlock(&bl->mu);
    blocker_note(bl, b, bl->dropped);
}

static void blocker_free(void *user_data) { atomic_fetch_add(&((blocker *)user_data)->freed, 1); }

static bool blocker_freed(void *arg) { return atomic_load(&((blocker *)arg)->freed) >= 1; }

static bool first_call_started(void *arg) { return atomic_load(&((blocker *)arg)->calls) >= 1; }

typedef struct block_producer {
    const bd_dispatcher *d;
    uint32_t p;
    uint32_t accepted[BLOCK_PER]; /* sequence numbers accepted, in order */
    uint32_t n_accepted;
    uint64_t full, other;
} block_producer;

static void *block_produce(void *arg) {
    block_producer *bp = arg;
    for (uint32_t seq = 0; seq < BLOCK_PER; seq++) {
        bd_status st = enqueue_tagged(bp->d, bp->p, seq);
        if (st == BD_STATUS_OK) {
            bp->accepted[bp->n_accepted++] = seq;
        } else if (st == BD_STATUS_QUEUE_FULL) {
            bp->full++;
        } else {
            bp->other++;
        }
    }
    return NULL;
}

/* The first call blocks; 4 producers offer 8 000 entries to a queue of 1 000 (DROP_NEWEST: the
 * rest are refused at once, counted exactly); bd_shutdown(300 ms) returns TIMEOUT on time and
 * hands the queued entries to on_drop; the handle stays usable; once released, the blocked batch
 * finishes and a second bd_shutdown returns OK. Every accepted entry has exactly one outcome. */
static void fault_block_released(void) {
    static blocker bl;
    memset(&bl, 0, sizeof bl);
    gate_init(&bl.gate);
    CHECK(pthread_mutex_init(&bl.mu, NULL) == 0);
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.max_queue_entries = 1000;
    o.on_drop = blocker_drop;
    o.user_data_free = blocker_free;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(blocker_dispatch, &bl, 5, &o, &d), BD_STATUS_OK);
    CHECK_STATUS(enqueue_tagged(d, BLOCK_PRODUCERS, 0), BD_STATUS_OK);
    CHECK(wait_until(first_call_started, &bl, T(5000)));

    static block_producer bp[BLOCK_PRODUCERS];
    pthread_t th[BLOCK_PRODUCERS];
    for (uint32_t p = 0; p < BLOCK_PRODUCERS; p++) {
        memset(&bp[p], 0, sizeof bp[p]);
        bp[p].d = d;
        bp[p].p = p;
        CHECK(pthread_create(&th[p], NULL, block_produce, &bp[p]) == 0);
    }
    uint64_t accepted = 1, full = 0, other = 0; /* 1: the entry in flight */
    for (uint32_t p = 0; p < BLOCK_PRODUCERS; p++) {
        CHECK(pthread_join(th[p], NULL) == 0); /* DROP_NEWEST: nobody waits for room */
        accepted += bp[p].n_accepted;
        full += bp[p].full;
        other += bp[p].other;
    }
    printf("fault_block_released [%s]: callback blocked; %d producers offered %d entries: "
           "%" PRIu64 " accepted, %" PRIu64 " QUEUE_FULL, %" PRIu64 " other\n",
           test_variant(), BLOCK_PRODUCERS, BLOCK_PRODUCERS * BLOCK_PER, accepted - 1, full, other);
    CHECK_EQ(other, 0);
    /* The queue's bound (the batch in flight not counted) is an upper bound. */
    CHECK(accepted - 1 >= 1 && accepted - 1 <= 1000);

    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 300), BD_STATUS_TIMEOUT);
    check_on_time("bd_shutdown(300) while blocked", now_ns() - t0, 300);

    /* The handle stays usable. */
    t0 = now_ns();
    bd_stats s = get_stats(d);
    check_on_time("bd_stats_get while blocked", now_ns() - t0, 0);
    CHECK_EQ(s.enqueued, accepted);
    CHECK_EQ(s.rejected, full);
    CHECK_EQ(s.abandoned, accepted - 1);
    CHECK_EQ(s.in_flight_entries, 1);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.dispatched, 0);
    CHECK_STATUS(enqueue_tagged(d, 0, 0), BD_STATUS_CLOSED);
    CHECK_STATUS(bd_enqueue(d, NULL, 0), BD_STATUS_CLOSED);
    t0 = now_ns();
    CHECK_STATUS(bd_flush(d, 100), BD_STATUS_TIMEOUT); /* the batch in flight is not done */
    check_on_time("bd_flush(100) while blocked", now_ns() - t0, 100);
    t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 0), BD_STATUS_TIMEOUT); /* idempotent, still not done */
    check_on_time("bd_shutdown(0) again", now_ns() - t0, 0);
    CHECK_EQ(get_stats(d).rejected, full + 2);

    /* The drops came before bd_shutdown returned, each accepted queued entry exactly once. */
    uint64_t dropped = 0, dup = 0;
    for (uint32_t p = 0; p < BLOCK_PRODUCERS; p++) {
        for (uint32_t i = 0; i < bp[p].n_accepted; i++) {
            uint8_t c = bl.dropped[p][bp[p].accepted[i]];
            dropped += c >= 1;
            dup += c > 1;
        }
    }
    printf("  on_drop(SHUTDOWN_TIMEOUT): %" PRIu64 " entries in %" PRIu64
           " calls; duplicated %" PRIu64 ", bad reason %" PRIu64 "\n",
           dropped, bl.drop_calls, dup, bl.bad_reason);
    CHECK_EQ(dropped, accepted - 1);
    CHECK_EQ(dup, 0);
    CHECK_EQ(bl.bad_reason, 0);

    /* Released: the batch in flight finishes, and the shutdown completes. */
    gate_open(&bl.gate);
    t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    printf("  released: bd_shutdown OK after %.1f ms\n", (double)(now_ns() - t0) / 1e6);
    s = get_stats(d);
    CHECK_EQ(s.dispatched, 1);
    CHECK_EQ(s.abandoned, accepted - 1);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK_EQ(atomic_load(&bl.calls), 1);
    CHECK_EQ(bl.delivered[BLOCK_PRODUCERS][0], 1);
    CHECK_EQ(atomic_load(&bl.freed), 0);
    t0 = now_ns();
    bd_free(d);
    uint64_t free_ns = now_ns() - t0;
    /* After a shutdown that returned TIMEOUT, bd_free does not wait (see the header): the
     * dispatcher's thread calls user_data_free as it leaves. */
    CHECK(wait_until(blocker_freed, &bl, T(5000)));
    wait_worker_exit();
    printf("  bd_free returned after %.1f ms; user_data_free calls %u\n", (double)free_ns / 1e6,
           atomic_load(&bl.freed));
    CHECK_EQ(atomic_load(&bl.freed), 1);
    for (uint32_t p = 0; p < BLOCK_PRODUCERS; p++) {
        for (uint32_t seq = 0; seq < BLOCK_PER; seq++) {
            CHECK_EQ(bl.delivered[p][seq], 0); /* abandoned ones are not delivered later */
        }
    }
    gate_destroy(&bl.gate);
    pthread_mutex_destroy(&bl.mu);
}

/* ------------------------------------------------------------------------------------------ */
/* A callback that never returns                                                               */

static pthread_mutex_t never_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never_cv = PTHREAD_COND_INITIALIZER;
static atomic_int never_entered;
static atomic_int never_freed;
static int never_released; /* nothing sets it */

static int never_dispatch(void *user_data, const bd_batch *b) {
    (void)user_data;
    (void)b;
    atomic_store(&never_entered, 1);
    /* Nothing ever sets never_released nor signals never_cv: this call does not return while
     * the process lives. */
    pthread_mutex_lock(&never_mu);
    while (!never_released) {
        pthread_cond_wait(&never_cv, &never_mu);
    }
    pthread_mutex_unlock(&never_mu);
    return 0;
}

static void never_free(void *user_data) {
    (void)user_data;
    atomic_fetch_add(&never_freed, 1);
}

static bool never_started(void *arg) {
    (void)arg;
    return atomic_load(&never_entered) != 0;
}

typedef struct free_call {
    bd_dispatcher *d;
    atomic_int done;
} free_call;

static void *free_in_thread(void *arg) {
    free_call *fc = arg;
    bd_free(fc->d);
    atomic_store(&fc->done, 1);
    return NULL;
}

static bool free_returned(void *arg) { return atomic_load(&((free_call *)arg)->done) != 0; }

/* The callback blocks for good. bd_shutdown(200) returns TIMEOUT on time, every later call
 * answers at once, and bd_free returns (in a helper thread, so that a hang fails the test
 * instead of stalling it): the dispatcher's thread keeps what it needs, user_data included, and
 * is left behind when the process exits. */
static void fault_block_forever(void) {
    atomic_store(&never_entered, 0);
    atomic_store(&never_freed, 0);
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.user_data_free = never_free;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(never_dispatch, NULL, 5, &o, &d), BD_STATUS_OK);
    CHECK_STATUS(enqueue_tagged(d, 1, 0), BD_STATUS_OK);
    CHECK(wait_until(never_started, NULL, T(5000)));
    for (uint32_t i = 1; i <= 10; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    printf("fault_block_forever [%s]: callback blocked for good, 10 entries queued\n",
           test_variant());
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 200), BD_STATUS_TIMEOUT);
    check_on_time("bd_shutdown(200)", now_ns() - t0, 200);
    t0 = now_ns();
    bd_stats s = get_stats(d);
    check_on_time("bd_stats_get", now_ns() - t0, 0);
    CHECK_EQ(s.enqueued, 11);
    CHECK_EQ(s.abandoned, 10);
    CHECK_EQ(s.in_flight_entries, 1);
    t0 = now_ns();
    CHECK_STATUS(enqueue_tagged(d, 1, 11), BD_STATUS_CLOSED);
    check_on_time("bd_enqueue -> CLOSED", now_ns() - t0, 0);
    t0 = now_ns();
    CHECK_STATUS(bd_flush(d, 100), BD_STATUS_TIMEOUT);
    check_on_time("bd_flush(100)", now_ns() - t0, 100);
    t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 100), BD_STATUS_TIMEOUT);
    check_on_time("bd_shutdown(100) again", now_ns() - t0, 100);
    CHECK_EQ(get_stats(d).rejected, 1);

    free_call fc = {.d = d};
    atomic_init(&fc.done, 0);
    pthread_t th;
    t0 = now_ns();
    CHECK(pthread_create(&th, NULL, free_in_thread, &fc) == 0);
    bool returned = wait_until(free_returned, &fc, T(5000));
    printf("  bd_free returned: %s after %.1f ms; user_data_free calls %d (the blocked thread "
           "still owns user_data)\n",
           returned ? "yes" : "NO (hang)", (double)(now_ns() - t0) / 1e6,
           atomic_load(&never_freed));
    CHECK(returned);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_EQ(atomic_load(&never_freed), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* A shutdown deadline during a retry's backoff                                                */

typedef struct retry_wait {
    atomic_uint calls;
    atomic_uint failed_drops, failed_drop_entries, abandoned_entries, bad;
    pthread_t caller;
} retry_wait;

static int retry_wait_dispatch(void *user_data, const bd_batch *b) {
    (void)b;
    atomic_fetch_add(&((retry_wait *)user_data)->calls, 1);
    return -1;
}

static void retry_wait_drop(void *user_data, const bd_batch *b, bd_drop_reason reason) {
    retry_wait *rw = user_data;
    if (reason == BD_DROP_REASON_FAILED) {
        atomic_fetch_add(&rw->failed_drops, 1);
        atomic_fetch_add(&rw->failed_drop_entries, (unsigned)b->count);
        /* On the dispatcher's thread, after its only attempt. */
        if (pthread_equal(pthread_self(), rw->caller) || b->attempt != 1) {
            atomic_fetch_add(&rw->bad, 1);
        }
    } else if (reason == BD_DROP_REASON_SHUTDOWN_TIMEOUT) {
        atomic_fetch_add(&rw->abandoned_entries, (unsigned)b->count);
        if (!pthread_equal(pthread_self(), rw->caller)) {
            atomic_fetch_add(&rw->bad, 1);
        }
    } else {
        atomic_fetch_add(&rw->bad, 1);
    }
}

static bool retry_given_up(void *arg) {
    return atomic_load(&((retry_wait *)arg)->failed_drops) >= 1;
}

static bool first_failed(void *arg) {
    const bd_dispatcher *d = arg;
    bd_stats s = get_stats(d);
    return s.batches >= 1;
}

/* The batch failed and waits 60 s for its retry; 3 newer entries wait behind it. A shutdown
 * deadline of 200 ms returns TIMEOUT on time, abandons the 3 (on the calling thread), and the
 * waiting batch gives up at once: on_drop(FAILED) on the dispatcher's thread, counted failed. */
static void fault_retry_shutdown(void) {
    retry_wait rw;
    memset(&rw, 0, sizeof rw);
    rw.caller = pthread_self();
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.max_attempts = 5;
    o.retry_backoff_ms = 60000;
    o.retry_backoff_max_ms = 60000;
    o.on_drop = retry_wait_drop;
    o.max_batch_entries = 10; /* the 10 go at once, as one batch (size trigger) */
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(retry_wait_dispatch, &rw, 60000, &o, &d), BD_STATUS_OK);
    for (uint32_t i = 0; i < 10; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    CHECK(wait_until(first_failed, d, T(5000)));
    for (uint32_t i = 10; i < 13; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    printf("fault_retry_shutdown [%s]: 10 entries failed once and wait 60 s to retry, 3 queued\n",
           test_variant());
    uint64_t t0 = now_ns();
    CHECK_STATUS(bd_shutdown(d, 200), BD_STATUS_TIMEOUT);
    check_on_time("bd_shutdown(200)", now_ns() - t0, 200);
    CHECK_EQ(atomic_load(&rw.abandoned_entries), 3);
    t0 = now_ns();
    CHECK(wait_until(retry_given_up, &rw, T(5000)));
    printf("  the waiting retry gave up %.1f ms later\n", (double)(now_ns() - t0) / 1e6);
    CHECK_STATUS(bd_shutdown(d, T(5000)), BD_STATUS_OK);
    bd_stats s = get_stats(d);
    printf("  stats: batches %" PRIu64 " retries %" PRIu64 " failed %" PRIu64 " abandoned %" PRIu64
           " dispatched %" PRIu64 "; on_drop FAILED %u entries in %u calls\n",
           s.batches, s.retries, s.failed, s.abandoned, s.dispatched,
           atomic_load(&rw.failed_drop_entries), atomic_load(&rw.failed_drops));
    CHECK_EQ(atomic_load(&rw.calls), 1);
    CHECK_EQ(s.batches, 1);
    CHECK_EQ(s.retries, 0);
    CHECK_EQ(s.failed, 10);
    CHECK_EQ(s.abandoned, 3);
    CHECK_EQ(s.dispatched, 0);
    CHECK_EQ(s.in_flight_entries + s.queued_entries, 0);
    CHECK_EQ(atomic_load(&rw.failed_drops), 1);
    CHECK_EQ(atomic_load(&rw.failed_drop_entries), 10);
    CHECK_EQ(atomic_load(&rw.bad), 0);
    bd_free(d);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"fault_fail_load", fault_fail_load},
        {"fault_fail_retry_load", fault_fail_retry_load},
        {"fault_block_released", fault_block_released},
        {"fault_block_forever", fault_block_forever},
        {"fault_retry_shutdown", fault_retry_shutdown},
    };
    return RUN_TESTS(tests, argc, argv);
}
