/*
 * tsan_stress.c: the C ABI under ThreadSanitizer (make soak-tsan).
 *
 * Linked against a dispatcher-ffi staticlib built with -Zsanitizer=thread and an instrumented
 * std (-Zbuild-std), so TSan sees every lock and atomic on both sides of the boundary. A
 * stable, uninstrumented library would hide the Rust side's happens-before edges and TSan
 * would report false races (see shared reliability notes), which is why this is nightly-only.
 *
 * Every thread-safe entry point runs at once: PRODUCERS threads enqueue tagged entries while
 * one thread reads bd_stats_get and another calls bd_flush; the callback fails one batch in
 * FAIL_EVERY (retried, and some exhausted into on_drop FAILED), and a second phase races
 * bd_shutdown against the producers. The dispatch callback writes the per-producer tallies
 * with no lock of its own: only the library's hand-off (callback -> flush/shutdown return)
 * orders those writes before main's reads, so a missing edge is a TSan report.
 *
 * Checks: every (producer, seq) accepted is delivered or dropped exactly once; everything
 * refused in phase 2 is BD_STATUS_CLOSED; stats agree. Exit 0 when clean; TSan itself exits
 * 66 on any report.
 *
 * `tsan_stress --seeded-race` is the negative control: two threads bump a plain C counter
 * with no synchronisation, which TSan must report (exit 66), proving the checker is live.
 */
#define _DEFAULT_SOURCE /* usleep */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "background_dispatcher.h"

#define PRODUCERS 8
#define PER_PRODUCER 20000
#define FAIL_EVERY 50   /* one dispatch call in 50 fails */
#define POISON_EVERY 4  /* one failing batch in 4 fails every attempt (FAILED drop) */

#define CHECK(expr)                                                                          \
    do {                                                                                     \
        if (!(expr)) {                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr);         \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

typedef struct tally {
    /* Written by the dispatch callback (the dispatcher's thread) only: no lock. */
    uint8_t delivered[PRODUCERS][PER_PRODUCER];
    uint64_t calls;
    int poisoned; /* the batch being retried fails every attempt */
    /* on_drop may run on any thread (EVICTED on producers): atomics. */
    _Atomic uint8_t dropped[PRODUCERS][PER_PRODUCER];
    atomic_uint_fast64_t dropped_total;
    atomic_int freed;
} tally;

static int decode(const bd_entry *e, uint32_t *tag, uint32_t *seq) {
    if (e->len < 8) {
        return 0;
    }
    memcpy(tag, e->data, 4);
    memcpy(seq, e->data + 4, 4);
    return *tag < PRODUCERS && *seq < PER_PRODUCER;
}

static int on_dispatch(void *user_data, const bd_batch *batch) {
    tally *t = user_data;
    uint64_t call = t->calls++;
    if (batch->attempt == 1) {
        t->poisoned = call % FAIL_EVERY == 0 && (call / FAIL_EVERY) % POISON_EVERY == 0;
        if (call % FAIL_EVERY == 0) {
            return -1;
        }
    } else if (t->poisoned) {
        return -1;
    }
    for (size_t i = 0; i < batch->count; i++) {
        uint32_t tag, seq;
        CHECK(decode(&batch->entries[i], &tag, &seq));
        t->delivered[tag][seq]++;
    }
    return 0;
}

static void on_drop(void *user_data, const bd_batch *batch, bd_drop_reason reason) {
    tally *t = user_data;
    (void)reason;
    for (size_t i = 0; i < batch->count; i++) {
        uint32_t tag, seq;
        CHECK(decode(&batch->entries[i], &tag, &seq));
        atomic_fetch_add(&t->dropped[tag][seq], 1);
    }
    atomic_fetch_add(&t->dropped_total, batch->count);
}

static void on_free(void *user_data) {
    tally *t = user_data;
    atomic_fetch_add(&t->freed, 1);
}

typedef struct producer {
    const bd_dispatcher *d;
    uint32_t tag;
    uint8_t accepted[PER_PRODUCER];
    uint64_t n_accepted, n_closed, n_full;
    int bad_status;
} producer;

static void *produce(void *arg) {
    producer *p = arg;
    uint8_t buf[300];
    uint32_t rng = 2463534242u ^ p->tag;
    for (uint32_t seq = 0; seq < PER_PRODUCER; seq++) {
        rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
        size_t len = 8 + rng % 256;
        memcpy(buf, &p->tag, 4);
        memcpy(buf + 4, &seq, 4);
        memset(buf + 8, (int)seq, len - 8);
        bd_status s = bd_enqueue(p->d, buf, len);
        if (s == BD_STATUS_OK) {
            p->accepted[seq] = 1;
            p->n_accepted++;
        } else if (s == BD_STATUS_CLOSED) {
            p->n_closed++;
        } else if (s == BD_STATUS_QUEUE_FULL) {
            p->n_full++;
        } else {
            p->bad_status = (int)s;
        }
    }
    return NULL;
}

typedef struct watcher {
    const bd_dispatcher *d;
    atomic_int stop;
    uint64_t reads, flushes;
} watcher;

static void *watch(void *arg) {
    watcher *w = arg;
    while (!atomic_load(&w->stop)) {
        bd_stats s;
        CHECK(bd_stats_get(w->d, &s) == BD_STATUS_OK);
        CHECK(s.enqueued == s.dispatched + s.failed + s.evicted + s.abandoned + s.queued_entries +
                                s.in_flight_entries);
        w->reads++;
        bd_status f = bd_flush(w->d, 5);
        CHECK(f == BD_STATUS_OK || f == BD_STATUS_TIMEOUT);
        w->flushes++;
    }
    return NULL;
}

/* One phase: producers (and a watcher) against one dispatcher; `race_shutdown` makes main
 * call bd_shutdown while they run. Returns the number of problems found. */
static int run_phase(const char *name, int race_shutdown) {
    tally *t = calloc(1, sizeof *t);
    CHECK(t != NULL);
    bd_options o;
    CHECK(bd_options_init(&o) == BD_STATUS_OK);
    o.max_queue_entries = 50000;
    o.max_batch_entries = 2000;
    o.overflow = BD_OVERFLOW_DROP_OLDEST; /* EVICTED drops on producer threads */
    o.max_attempts = 3;
    o.retry_backoff_ms = 1;
    o.retry_backoff_max_ms = 2;
    o.on_drop = on_drop;
    o.user_data_free = on_free;
    bd_dispatcher *d = NULL;
    CHECK(bd_new(on_dispatch, t, 1, &o, &d) == BD_STATUS_OK);

    static producer p[PRODUCERS];
    pthread_t th[PRODUCERS], wt;
    watcher w = {.d = d};
    atomic_init(&w.stop, 0);
    CHECK(pthread_create(&wt, NULL, watch, &w) == 0);
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        memset(&p[i], 0, sizeof p[i]);
        p[i].d = d;
        p[i].tag = i;
        CHECK(pthread_create(&th[i], NULL, produce, &p[i]) == 0);
    }
    bd_status shut = BD_STATUS_OK;
    if (race_shutdown) {
        usleep(20000); /* not synchronisation: lets the race start mid-stream */
        shut = bd_shutdown(d, 30000);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
    }
    atomic_store(&w.stop, 1);
    CHECK(pthread_join(wt, NULL) == 0);
    if (!race_shutdown) {
        shut = bd_shutdown(d, 30000);
    }
    bd_stats s;
    CHECK(bd_stats_get(d, &s) == BD_STATUS_OK);
    bd_free(d);

    int problems = 0;
    uint64_t accepted = 0, closed = 0, full = 0, lost = 0, dups = 0, delivered = 0;
    for (int i = 0; i < PRODUCERS; i++) {
        accepted += p[i].n_accepted;
        closed += p[i].n_closed;
        full += p[i].n_full;
        if (p[i].bad_status) {
            fprintf(stderr, "%s: producer %d got status %d\n", name, i, p[i].bad_status);
            problems++;
        }
        for (int q = 0; q < PER_PRODUCER; q++) {
            unsigned out = t->delivered[i][q] + atomic_load(&t->dropped[i][q]);
            delivered += t->delivered[i][q];
            if (p[i].accepted[q] ? out == 0 : out != 0) {
                lost++;
            } else if (out > 1) {
                dups++;
            }
        }
    }
    if (!race_shutdown && closed != 0) {
        problems++;
    }
    problems += lost != 0 || dups != 0 || shut != BD_STATUS_OK || full != 0;
    problems += atomic_load(&t->freed) != 1;
    problems += s.enqueued != accepted || s.dispatched != delivered ||
                s.failed + s.evicted + s.abandoned != atomic_load(&t->dropped_total);
    printf("tsan_stress %s: producers %d, attempts %d, accepted %" PRIu64 ", closed %" PRIu64
           ", delivered %" PRIu64 ", dropped %" PRIu64 " (failed %" PRIu64 ", evicted %" PRIu64
           "), lost %" PRIu64 ", duplicates %" PRIu64 ", batches %" PRIu64 ", retries %" PRIu64
           ", stats reads %" PRIu64 ", flushes %" PRIu64 ", shutdown %s: %s\n",
           name, PRODUCERS, PRODUCERS * PER_PRODUCER, accepted, closed, delivered,
           (uint64_t)atomic_load(&t->dropped_total), s.failed, s.evicted, lost, dups, s.batches,
           s.retries, w.reads, w.flushes, bd_status_str(shut), problems ? "FAIL" : "ok");
    free(t);
    return problems;
}

static int racy_counter; /* deliberately unsynchronised */

static void *race(void *arg) {
    (void)arg;
    for (int i = 0; i < 100000; i++) {
        racy_counter++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    alarm(600); /* a hang becomes a failure (SIGALRM), never a stuck make */
    if (argc > 1 && strcmp(argv[1], "--seeded-race") == 0) {
        pthread_t a, b;
        CHECK(pthread_create(&a, NULL, race, NULL) == 0);
        CHECK(pthread_create(&b, NULL, race, NULL) == 0);
        CHECK(pthread_join(a, NULL) == 0);
        CHECK(pthread_join(b, NULL) == 0);
        printf("tsan_stress --seeded-race: counter %d (TSan must have reported the race)\n",
               racy_counter);
        return 0;
    }
    int problems = run_phase("steady", 0);
    problems += run_phase("shutdown-race", 1);
    return problems ? 1 : 0;
}
