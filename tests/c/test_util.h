/*
 * test_util.h: tiny helpers shared by the C tests of background-dispatcher.
 *
 * - CHECK(expr): on failure prints file:line and the expression, then exits non-zero
 *   (works in any thread, and in a fork child).
 * - now_ns(): CLOCK_MONOTONIC in ns (the clock Rust's Instant uses).
 * - T(ms): a generous deadline, multiplied by 10 when BD_TEST_SLOW is set (valgrind).
 * - gate_t: a mutex+condvar gate that callbacks wait on until the test opens it.
 * - wait_until(pred, ctx, timeout_ms): bounded polling (1 ms nanosleep).
 * - recorder: a generic user_data with dispatch / on_drop / user_data_free callbacks that
 *   copy every batch, so tests can inspect what was delivered, when, and on which thread.
 * - run_tests(): one executable holds several tests, selected by argv[1]; a watchdog alarm
 *   turns a hang into a failure.
 *
 * Everything is `static` so each test file can include it without a separate object.
 */
#ifndef BD_TEST_UTIL_H
#define BD_TEST_UTIL_H

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "background_dispatcher.h"

/* ------------------------------------------------------------------------------------------ */
/* Failing                                                                                     */

#define CHECK(expr)                                                                          \
    do {                                                                                     \
        if (!(expr)) {                                                                       \
            test_fail(__FILE__, __LINE__, #expr);                                            \
        }                                                                                    \
    } while (0)

/* CHECK for two unsigned integers, printing both values on failure. */
#define CHECK_EQ(a, b)                                                                       \
    do {                                                                                     \
        uint64_t check_a_ = (uint64_t)(a), check_b_ = (uint64_t)(b);                        \
        if (check_a_ != check_b_) {                                                          \
            fprintf(stderr, "%s:%d: %s == %s: %" PRIu64 " != %" PRIu64 "\n", __FILE__,       \
                    __LINE__, #a, #b, check_a_, check_b_);                                   \
            test_fail(__FILE__, __LINE__, #a " == " #b);                                     \
        }                                                                                    \
    } while (0)

/* CHECK that a bd_status is the expected one, printing its text on failure. */
#define CHECK_STATUS(call, expected)                                                         \
    do {                                                                                     \
        bd_status check_s_ = (call);                                                         \
        if (check_s_ != (bd_status)(expected)) {                                             \
            fprintf(stderr, "%s:%d: %s returned %u (%s), expected %s\n", __FILE__, __LINE__, \
                    #call, (unsigned)check_s_, bd_status_str(check_s_), #expected);          \
            test_fail(__FILE__, __LINE__, #call " == " #expected);                           \
        }                                                                                    \
    } while (0)

static inline void test_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
    fflush(stderr);
    fflush(stdout);
    _exit(1);
}

/* ------------------------------------------------------------------------------------------ */
/* Time                                                                                        */

#define NS_PER_MS UINT64_C(1000000)

/* Slack for lower-bound timing checks: clock granularity only. */
#define CLOCK_SLACK_NS UINT64_C(50000)

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* Sleeps; for pacing a producer or leaving a thread time to block, never to synchronise. */
static inline void sleep_ms(uint64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms % 1000) * 1000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline void sleep_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000), (long)((us % 1000000) * 1000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* 10 under BD_TEST_SLOW (valgrind), else 1. */
static inline uint64_t slow_factor(void) {
    const char *s = getenv("BD_TEST_SLOW");
    return (s != NULL && s[0] != '\0' && strcmp(s, "0") != 0) ? 10 : 1;
}

/* A generous deadline in ms, scaled for slow runs. */
static inline uint64_t T(uint64_t ms) { return ms * slow_factor(); }

/* `a - b >= ms` in ns, with only clock-granularity slack. Prints the gap when it is not. */
static inline bool at_least_ms_apart(uint64_t later_ns, uint64_t earlier_ns, uint64_t ms) {
    if (later_ns >= earlier_ns && later_ns - earlier_ns >= ms * NS_PER_MS - CLOCK_SLACK_NS) {
        return true;
    }
    fprintf(stderr, "gap of %.3f ms, expected at least %" PRIu64 " ms\n",
            ((double)later_ns - (double)earlier_ns) / 1e6, ms);
    return false;
}

/* Polls `pred(ctx)` every ms until it is true (returns true) or `timeout_ms` passes. */
static inline bool wait_until(bool (*pred)(void *), void *ctx, uint64_t timeout_ms) {
    uint64_t deadline = now_ns() + timeout_ms * NS_PER_MS;
    for (;;) {
        if (pred(ctx)) {
            return true;
        }
        if (now_ns() >= deadline) {
            return pred(ctx);
        }
        sleep_us(1000);
    }
}

/* Threads of this process (from /proc/self/status), or -1. */
static inline int thread_count(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Threads:", 8) == 0) {
            n = atoi(line + 8);
            break;
        }
    }
    fclose(f);
    return n;
}

static inline bool only_main_thread(void *arg) {
    (void)arg;
    return thread_count() == 1;
}

/* After a dispatcher freed itself on its own thread, waits (bounded) until that thread is
 * gone, so that the leak checkers at exit do not see it half-way. */
static inline void wait_worker_exit(void) {
    if (thread_count() > 0) {
        CHECK(wait_until(only_main_thread, NULL, T(5000)));
    }
}

static inline void abs_deadline(struct timespec *ts, uint64_t timeout_ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + (timeout_ms % 1000) * NS_PER_MS;
    ts->tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

static inline void cond_init_monotonic(pthread_cond_t *cv) {
    pthread_condattr_t attr;
    CHECK(pthread_condattr_init(&attr) == 0);
    CHECK(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0);
    CHECK(pthread_cond_init(cv, &attr) == 0);
    pthread_condattr_destroy(&attr);
}

/* ------------------------------------------------------------------------------------------ */
/* Gate                                                                                        */

typedef struct gate_t {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
} gate_t;

static inline void gate_init(gate_t *g) {
    CHECK(pthread_mutex_init(&g->mu, NULL) == 0);
    cond_init_monotonic(&g->cv);
    g->open = 0;
}

static inline void gate_destroy(gate_t *g) {
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

static inline void gate_open(gate_t *g) {
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Waits until the gate is open; fails the test if it stays shut for `timeout_ms`. */
static inline void gate_wait(gate_t *g, uint64_t timeout_ms) {
    struct timespec ts;
    abs_deadline(&ts, timeout_ms);
    pthread_mutex_lock(&g->mu);
    while (!g->open) {
        int rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        if (rc == ETIMEDOUT && !g->open) {
            pthread_mutex_unlock(&g->mu);
            CHECK(!"gate never opened");
        }
    }
    pthread_mutex_unlock(&g->mu);
}

/* ------------------------------------------------------------------------------------------ */
/* Entries: 4-byte tag + 4-byte sequence number (little endian), optionally padded.           */

static inline void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Enqueues an 8-byte entry {tag, seq}; returns the status. */
static inline bd_status enqueue_tagged(const bd_dispatcher *d, uint32_t tag, uint32_t seq) {
    uint8_t buf[8];
    put_u32(buf, tag);
    put_u32(buf + 4, seq);
    return bd_enqueue(d, buf, sizeof buf);
}

/* Enqueues a `len`-byte entry (len >= 8) starting with {tag, seq}, the rest filled. */
static inline bd_status enqueue_sized(const bd_dispatcher *d, uint32_t tag, uint32_t seq, size_t len) {
    uint8_t buf[256];
    CHECK(len >= 8 && len <= sizeof buf);
    memset(buf, (int)(seq & 0xff), len);
    put_u32(buf, tag);
    put_u32(buf + 4, seq);
    return bd_enqueue(d, buf, len);
}

/* ------------------------------------------------------------------------------------------ */
/* Recorder                                                                                    */

typedef struct rec_batch {
    uint64_t start_ns; /* when the callback started */
    size_t count;      /* batch->count */
    size_t bytes;      /* batch->bytes */
    size_t first;      /* index of its first entry in the list's entries */
    uint32_t attempt;  /* batch->attempt */
    uint32_t reason;   /* drop reason (drops only) */
    int result;        /* what the dispatch callback returned (dispatches only) */
    pthread_t thread;  /* the thread the callback ran on */
} rec_batch;

typedef struct rec_entry {
    size_t off; /* into blob */
    size_t len;
    size_t batch; /* index of its batch */
} rec_entry;

typedef struct rec_list {
    rec_batch *b;
    size_t nb, capb;
    rec_entry *e;
    size_t ne, cape;
    uint8_t *blob;
    size_t nblob, capblob;
} rec_list;

struct recorder;
/* What the dispatch callback returns for its `call`-th call (0-based); NULL = always 0. */
typedef int (*rec_result_fn)(struct recorder *r, const bd_batch *b, size_t call);
/* Extra work done inside the dispatch callback after recording (before the gate). */
typedef void (*rec_hook_fn)(struct recorder *r, const bd_batch *b, size_t call);

typedef struct recorder {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec_list disp;  /* every dispatch callback call, failed ones included */
    rec_list drops; /* every on_drop call */
    gate_t gate;
    /* The first `gate_calls` dispatch calls wait on `gate` (after recording). */
    atomic_size_t gate_calls;
    rec_result_fn result_fn;
    rec_hook_fn hook;
    void *ctx;                  /* for hooks */
    const bd_dispatcher *d;     /* for hooks */
    bd_dispatcher *d_mut;       /* for a hook that frees */
    uint64_t busy_us;           /* the dispatch callback sleeps this long (0 = no) */
    size_t max_count;           /* when non-zero, batches above it are counted in `bad` */
    size_t max_bytes;           /* idem for bytes */
    atomic_size_t calls;        /* dispatch calls started */
    atomic_size_t hooks_done;   /* hook calls that returned */
    atomic_size_t ok_entries;   /* entries of batches whose callback returned 0 */
    atomic_int in_cb;           /* dispatch callbacks running now */
    atomic_int overlap;         /* times a dispatch call started while another ran */
    atomic_int bad;             /* malformed batches (empty, NULL, bytes mismatch, over limit) */
    atomic_int freed;           /* user_data_free calls */
    atomic_int cb_after_free;   /* callbacks that ran after user_data_free */
    pthread_t free_thread;
    size_t hooks_wanted; /* for rec_wait_hooks */
} recorder;

static inline void rec_list_free(rec_list *l) {
    free(l->b);
    free(l->e);
    free(l->blob);
    memset(l, 0, sizeof *l);
}

static inline void rec_init(recorder *r) {
    memset(r, 0, sizeof *r);
    CHECK(pthread_mutex_init(&r->mu, NULL) == 0);
    cond_init_monotonic(&r->cv);
    gate_init(&r->gate);
    atomic_init(&r->gate_calls, 0);
    atomic_init(&r->calls, 0);
    atomic_init(&r->hooks_done, 0);
    atomic_init(&r->ok_entries, 0);
    atomic_init(&r->in_cb, 0);
    atomic_init(&r->overlap, 0);
    atomic_init(&r->bad, 0);
    atomic_init(&r->freed, 0);
    atomic_init(&r->cb_after_free, 0);
}

static inline void rec_destroy(recorder *r) {
    rec_list_free(&r->disp);
    rec_list_free(&r->drops);
    gate_destroy(&r->gate);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static inline void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) {
        return p;
    }
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        n *= 2;
    }
    void *q = realloc(p, n * elem);
    CHECK(q != NULL);
    *cap = n;
    return q;
}

/* Appends a copy of `b` to `l`; the caller holds r->mu. */
static inline void rec_list_add(rec_list *l, const bd_batch *b, uint64_t start, uint32_t reason,
                         int result) {
    l->b = grow(l->b, &l->capb, l->nb + 1, sizeof *l->b);
    rec_batch *rb = &l->b[l->nb];
    rb->start_ns = start;
    rb->count = b->count;
    rb->bytes = b->bytes;
    rb->first = l->ne;
    rb->attempt = b->attempt;
    rb->reason = reason;
    rb->result = result;
    rb->thread = pthread_self();
    l->e = grow(l->e, &l->cape, l->ne + b->count, sizeof *l->e);
    size_t total = 0;
    for (size_t i = 0; i < b->count; i++) {
        total += b->entries[i].len;
    }
    l->blob = grow(l->blob, &l->capblob, l->nblob + total + 1, 1);
    for (size_t i = 0; i < b->count; i++) {
        rec_entry *e = &l->e[l->ne++];
        e->off = l->nblob;
        e->len = b->entries[i].len;
        e->batch = l->nb;
        if (e->len > 0) {
            memcpy(l->blob + l->nblob, b->entries[i].data, e->len);
        }
        l->nblob += e->len;
    }
    l->nb++;
}

/* A batch must be non-empty, well formed, and within the recorder's limits. */
static inline bool batch_sane(const recorder *r, const bd_batch *b) {
    if (b == NULL || b->count == 0 || b->entries == NULL) {
        return false;
    }
    size_t total = 0;
    for (size_t i = 0; i < b->count; i++) {
        if (b->entries[i].data == NULL && b->entries[i].len != 0) {
            return false;
        }
        total += b->entries[i].len;
    }
    if (total != b->bytes) {
        return false;
    }
    if (r->max_count != 0 && b->count > r->max_count) {
        return false;
    }
    if (r->max_bytes != 0 && b->bytes > r->max_bytes) {
        return false;
    }
    return true;
}

static inline int rec_dispatch(void *user_data, const bd_batch *b) {
    recorder *r = user_data;
    uint64_t start = now_ns();
    if (atomic_fetch_add(&r->in_cb, 1) != 0) {
        atomic_fetch_add(&r->overlap, 1);
    }
    if (atomic_load(&r->freed) != 0) {
        atomic_fetch_add(&r->cb_after_free, 1);
    }
    if (!batch_sane(r, b)) {
        atomic_fetch_add(&r->bad, 1);
    }
    size_t call = atomic_fetch_add(&r->calls, 1);
    int result = r->result_fn ? r->result_fn(r, b, call) : 0;
    if (r->busy_us) {
        sleep_us(r->busy_us);
    }
    pthread_mutex_lock(&r->mu);
    rec_list_add(&r->disp, b, start, 0, result);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->hook) {
        r->hook(r, b, call);
        atomic_fetch_add(&r->hooks_done, 1);
    }
    if (call < atomic_load(&r->gate_calls)) {
        gate_wait(&r->gate, T(60000));
    }
    if (result == 0) {
        atomic_fetch_add(&r->ok_entries, b->count);
    }
    atomic_fetch_sub(&r->in_cb, 1);
    return result;
}

static inline void rec_drop(void *user_data, const bd_batch *b, bd_drop_reason reason) {
    recorder *r = user_data;
    uint64_t start = now_ns();
    if (atomic_load(&r->freed) != 0) {
        atomic_fetch_add(&r->cb_after_free, 1);
    }
    if (b == NULL || b->count == 0 || b->entries == NULL) {
        atomic_fetch_add(&r->bad, 1);
        return;
    }
    pthread_mutex_lock(&r->mu);
    rec_list_add(&r->drops, b, start, (uint32_t)reason, 0);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static inline void rec_user_free(void *user_data) {
    recorder *r = user_data;
    r->free_thread = pthread_self();
    atomic_fetch_add(&r->freed, 1);
}

/* Options with the recorder's on_drop and user_data_free. */
static inline bd_options rec_options(void) {
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.on_drop = rec_drop;
    o.user_data_free = rec_user_free;
    return o;
}

static inline bd_dispatcher *rec_new(recorder *r, uint64_t ms_delay, const bd_options *o) {
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(rec_dispatch, r, ms_delay, o, &d), BD_STATUS_OK);
    CHECK(d != NULL);
    r->d = d;
    r->d_mut = d;
    return d;
}

static inline size_t rec_disp_calls(recorder *r) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->disp.nb;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static inline size_t rec_disp_entries(recorder *r) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->disp.ne;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static inline size_t rec_drop_entries(recorder *r) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->drops.ne;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Waits until the list `which` (0 = dispatches, 1 = drops) has `n` batches (entries = 0) or
 * `n` entries (entries = 1). */
static inline bool rec_wait(recorder *r, int which, int entries, size_t n, uint64_t timeout_ms) {
    struct timespec ts;
    abs_deadline(&ts, timeout_ms);
    pthread_mutex_lock(&r->mu);
    for (;;) {
        rec_list *l = which ? &r->drops : &r->disp;
        size_t have = entries ? l->ne : l->nb;
        if (have >= n) {
            pthread_mutex_unlock(&r->mu);
            return true;
        }
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) {
            have = entries ? l->ne : l->nb;
            pthread_mutex_unlock(&r->mu);
            return have >= n;
        }
    }
}

static inline bool rec_hooks_pred(void *arg) {
    recorder *r = arg;
    return atomic_load(&r->hooks_done) >= r->hooks_wanted;
}

/* Waits until `n` hook calls have returned. */
static inline bool rec_wait_hooks(recorder *r, size_t n, uint64_t timeout_ms) {
    r->hooks_wanted = n;
    return wait_until(rec_hooks_pred, r, timeout_ms);
}

#define rec_wait_calls(r, n, ms) rec_wait((r), 0, 0, (n), (ms))
#define rec_wait_entries(r, n, ms) rec_wait((r), 0, 1, (n), (ms))
#define rec_wait_drop_entries(r, n, ms) rec_wait((r), 1, 1, (n), (ms))

static inline const uint8_t *rec_data(const rec_list *l, size_t i) { return l->blob + l->e[i].off; }
static inline uint32_t rec_tag(const rec_list *l, size_t i) {
    CHECK(l->e[i].len >= 8);
    return get_u32(rec_data(l, i));
}
static inline uint32_t rec_seq(const rec_list *l, size_t i) {
    CHECK(l->e[i].len >= 8);
    return get_u32(rec_data(l, i) + 4);
}

/* Entries of successful dispatches only, in delivery order, as a new list of (tag, seq). */
typedef struct tagseq {
    uint32_t tag, seq;
} tagseq;

static inline size_t rec_delivered(recorder *r, tagseq **out) {
    pthread_mutex_lock(&r->mu);
    const rec_list *l = &r->disp;
    tagseq *v = malloc((l->ne + 1) * sizeof *v);
    CHECK(v != NULL);
    size_t n = 0;
    for (size_t i = 0; i < l->ne; i++) {
        if (l->b[l->e[i].batch].result == 0) {
            v[n].tag = rec_tag(l, i);
            v[n].seq = rec_seq(l, i);
            n++;
        }
    }
    pthread_mutex_unlock(&r->mu);
    *out = v;
    return n;
}

/* Tag of the warm-up entry. */
#define WARM_TAG UINT32_C(0xfffffff0)

/* Makes one dispatch (flushed at once) before a test measures gaps between callback starts. A
 * callback records its start on entry, a little after the library's own start instant; on the
 * very first call that delay is largest (lazy symbol binding, valgrind translating new code),
 * which would shrink the first measured gap below what the library actually kept. */
static inline void warm_up(recorder *r, const bd_dispatcher *d) {
    size_t before = rec_disp_calls(r);
    CHECK_STATUS(enqueue_tagged(d, WARM_TAG, 0), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    CHECK_EQ(rec_disp_calls(r), before + 1);
}

/* The checks every test makes at its end. */
static inline void rec_check_sane(recorder *r) {
    CHECK_EQ(atomic_load(&r->bad), 0);
    CHECK_EQ(atomic_load(&r->overlap), 0);
    CHECK_EQ(atomic_load(&r->cb_after_free), 0);
}

/* The accounting identity of a snapshot. */
static inline bool stats_consistent(const bd_stats *s) {
    return s->enqueued == s->dispatched + s->failed + s->evicted + s->abandoned +
                              s->queued_entries + s->in_flight_entries;
}

static inline bd_stats get_stats(const bd_dispatcher *d) {
    bd_stats s;
    memset(&s, 0xff, sizeof s);
    CHECK_STATUS(bd_stats_get(d, &s), BD_STATUS_OK);
    CHECK(stats_consistent(&s));
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* Running                                                                                     */

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

static inline void watchdog_fired(int sig) {
    (void)sig;
    static const char msg[] = "watchdog: test hung, aborting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(3);
}

/* Fails the process if it is still running `seconds` (scaled for slow runs) from now. */
static inline void watchdog(unsigned seconds) {
    signal(SIGALRM, watchdog_fired);
    alarm(seconds * (unsigned)(slow_factor() > 1 ? 5 : 1));
}

static inline int run_tests(const test_case *tests, size_t n, int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int ran = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], tests[i].name) != 0) {
            continue;
        }
        watchdog(60);
        printf("RUN  %s\n", tests[i].name);
        tests[i].fn();
        printf("PASS %s\n", tests[i].name);
        ran++;
    }
    alarm(0);
    if (ran == 0) {
        fprintf(stderr, "unknown test '%s'; tests:\n", argc > 1 ? argv[1] : "");
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, "  %s\n", tests[i].name);
        }
        return 2;
    }
    return 0;
}

#define RUN_TESTS(table, argc, argv) run_tests((table), sizeof(table) / sizeof((table)[0]), (argc), (argv))

#endif /* BD_TEST_UTIL_H */
