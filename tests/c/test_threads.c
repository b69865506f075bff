/* Many producer threads into one dispatcher: no loss, no duplicate, per-thread order. */
#include "test_util.h"

#define THREADS 8
#define PER_THREAD 20000

typedef struct producer {
    const bd_dispatcher *d;
    uint32_t tag;
    pthread_barrier_t *start;
    int errors;
} producer;

static void *produce(void *arg) {
    producer *p = arg;
    pthread_barrier_wait(p->start);
    for (uint32_t i = 0; i < PER_THREAD; i++) {
        bd_status s = enqueue_tagged(p->d, p->tag, i);
        if (s != BD_STATUS_OK) {
            fprintf(stderr, "thread %u, entry %u: %s\n", p->tag, i, bd_status_str(s));
            p->errors++;
        }
    }
    return NULL;
}

static void run_threads(const bd_options *o, uint64_t ms_delay, size_t max_count) {
    recorder r;
    rec_init(&r);
    r.max_count = max_count;
    bd_dispatcher *d = rec_new(&r, ms_delay, o);
    pthread_barrier_t start;
    CHECK(pthread_barrier_init(&start, NULL, THREADS) == 0);
    producer p[THREADS];
    pthread_t th[THREADS];
    for (uint32_t i = 0; i < THREADS; i++) {
        p[i] = (producer){d, i, &start, 0};
        CHECK(pthread_create(&th[i], NULL, produce, &p[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK_EQ(p[i].errors, 0);
    }
    pthread_barrier_destroy(&start);
    CHECK_STATUS(bd_flush(d, T(30000)), BD_STATUS_OK);

    tagseq *v;
    size_t n = rec_delivered(&r, &v);
    CHECK_EQ(n, (size_t)THREADS * PER_THREAD);
    uint32_t next[THREADS] = {0};
    for (size_t i = 0; i < n; i++) {
        CHECK(v[i].tag < THREADS);
        if (v[i].seq != next[v[i].tag]) {
            fprintf(stderr, "entry %zu: thread %u seq %u, expected seq %u\n", i, v[i].tag,
                    v[i].seq, next[v[i].tag]);
        }
        CHECK_EQ(v[i].seq, next[v[i].tag]); /* per-thread order, no gap, no duplicate */
        next[v[i].tag]++;
    }
    for (int t = 0; t < THREADS; t++) {
        CHECK_EQ(next[t], PER_THREAD);
    }
    free(v);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, (uint64_t)THREADS * PER_THREAD);
    CHECK_EQ(s.dispatched, (uint64_t)THREADS * PER_THREAD);
    CHECK_EQ(s.rejected, 0);
    CHECK_EQ(s.batches, rec_disp_calls(&r));
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* 8 threads x 20 000 entries, default options. */
static void threads_order(void) {
    bd_options o = rec_options();
    run_threads(&o, 5, 0);
}

/* The same, split into batches of at most 500 entries. */
static void threads_order_batched(void) {
    bd_options o = rec_options();
    o.max_batch_entries = 500;
    run_threads(&o, 2, 500);
}

/* The same through a small queue with BD_OVERFLOW_BLOCK: producers wait, nothing is refused. */
static void threads_order_block(void) {
    bd_options o = rec_options();
    o.max_queue_entries = 1000;
    o.max_batch_entries = 250;
    o.overflow = BD_OVERFLOW_BLOCK;
    o.block_timeout_ms = 60000 * slow_factor();
    run_threads(&o, 1, 250);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"threads_order", threads_order},
        {"threads_order_batched", threads_order_batched},
        {"threads_order_block", threads_order_block},
    };
    return RUN_TESTS(tests, argc, argv);
}
