/*
 * Hostile input through the C ABI: NULL for every pointer argument, lengths no entry can have,
 * options with garbage in every field, every 32-bit value given to bd_status_str, extreme
 * timeouts, and every call after bd_shutdown. Each call must return what the header documents,
 * nothing may crash, and (in the asan/ and memcheck/ variants) nothing may leak or read what it
 * should not: the oversized lengths come with a one-byte buffer, so a read of it would be
 * reported.
 *
 * The expected status of bd_new for any options is computed by options_model() from the
 * rules the header lists under BD_STATUS_INVALID_OPTIONS, so the garbage cases test the
 * documentation as much as the code. test_api.c holds the single-case checks.
 */
#include "test_rng.h"

typedef struct host {
    atomic_uint_fast64_t delivered;
    atomic_uint_fast64_t dropped;
    atomic_int freed;
} host;

static int host_dispatch(void *user_data, const bd_batch *b) {
    atomic_fetch_add(&((host *)user_data)->delivered, b->count);
    return 0;
}

static void host_drop(void *user_data, const bd_batch *b, bd_drop_reason reason) {
    (void)reason;
    atomic_fetch_add(&((host *)user_data)->dropped, b->count);
}

/* user_data_free calls that got NULL: the library passes user_data on whatever it is. */
static atomic_int null_frees;

static void host_free(void *user_data) {
    if (user_data == NULL) {
        atomic_fetch_add(&null_frees, 1);
        return;
    }
    atomic_fetch_add(&((host *)user_data)->freed, 1);
}

static void host_init(host *h) {
    atomic_init(&h->delivered, 0);
    atomic_init(&h->dropped, 0);
    atomic_init(&h->freed, 0);
}

/* A pointer that a failing bd_new must leave in *out. */
#define SENTINEL ((bd_dispatcher *)(uintptr_t)0x5eed5eedu)

/* ------------------------------------------------------------------------------------------ */
/* NULL arguments                                                                              */

/* bd_new with each of its four pointers NULL or not (16 combinations): NULL dispatch or out is
 * NULL_ARG with *out untouched and user_data not freed; NULL user_data and NULL options (the
 * defaults) are valid. Then every other function with each pointer NULL, on a live handle and on
 * a shut-down one: NULL_ARG, and nothing changed (counters, open/closed state). */
static void hostile_null_everywhere(void) {
    uint64_t calls = 0;
    for (unsigned mask = 0; mask < 16; mask++) {
        bool null_dispatch = mask & 1, null_user = mask & 2, null_options = mask & 4,
             null_out = mask & 8;
        host h;
        host_init(&h);
        bd_options o;
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        o.user_data_free = host_free;
        int null_frees_before = atomic_load(&null_frees);
        bd_dispatcher *out = SENTINEL;
        bd_status st = bd_new(null_dispatch ? NULL : host_dispatch, null_user ? NULL : &h, 10,
                              null_options ? NULL : &o, null_out ? NULL : &out);
        calls++;
        if (null_dispatch || null_out) {
            CHECK_STATUS(st, BD_STATUS_NULL_ARG);
            CHECK(out == SENTINEL);
        } else {
            CHECK_STATUS(st, BD_STATUS_OK);
            CHECK(out != SENTINEL && out != NULL);
            bd_free(out);
            /* user_data_free runs only with the options that carry it, on what it was given. */
            CHECK_EQ(atomic_load(&h.freed), !null_options && !null_user ? 1 : 0);
            CHECK_EQ(atomic_load(&null_frees) - null_frees_before,
                     !null_options && null_user ? 1 : 0);
        }
        if (null_dispatch || null_out) {
            CHECK_EQ(atomic_load(&h.freed), 0);
            CHECK_EQ(atomic_load(&null_frees), null_frees_before);
        }
    }

    host h;
    host_init(&h);
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(host_dispatch, &h, 60000, NULL, &d), BD_STATUS_OK);
    uint8_t byte = 1;
    for (int closed = 0; closed < 2; closed++) {
        bd_stats before = get_stats(d);
        static const size_t lens[] = {1, 8, 4096, SIZE_MAX};
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            CHECK_STATUS(bd_enqueue(NULL, &byte, lens[i]), BD_STATUS_NULL_ARG);
            CHECK_STATUS(bd_enqueue(NULL, NULL, lens[i]), BD_STATUS_NULL_ARG);
            CHECK_STATUS(bd_enqueue(d, NULL, lens[i]), BD_STATUS_NULL_ARG);
            calls += 3;
        }
        CHECK_STATUS(bd_enqueue(NULL, NULL, 0), BD_STATUS_NULL_ARG);
        static const uint64_t timeouts[] = {0, 1, BD_NO_TIMEOUT};
        for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
            CHECK_STATUS(bd_flush(NULL, timeouts[i]), BD_STATUS_NULL_ARG);
            CHECK_STATUS(bd_shutdown(NULL, timeouts[i]), BD_STATUS_NULL_ARG);
            calls += 2;
        }
        bd_stats s;
        CHECK_STATUS(bd_stats_get(NULL, &s), BD_STATUS_NULL_ARG);
        CHECK_STATUS(bd_stats_get(d, NULL), BD_STATUS_NULL_ARG);
        CHECK_STATUS(bd_stats_get(NULL, NULL), BD_STATUS_NULL_ARG);
        CHECK_STATUS(bd_options_init(NULL), BD_STATUS_NULL_ARG);
        bd_free(NULL);
        calls += 6;
        bd_stats after = get_stats(d);
        CHECK(memcmp(&before, &after, sizeof before) == 0); /* "Nothing was changed" */
        /* ... not even shut down by bd_shutdown(NULL): a real entry is still accepted. */
        CHECK_STATUS(enqueue_tagged(d, 1, 0), closed ? BD_STATUS_CLOSED : BD_STATUS_OK);
        if (!closed) {
            CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
        }
    }
    bd_free(d);
    CHECK_EQ(atomic_load(&h.delivered), 1);
    printf("hostile_null_everywhere [%s]: %" PRIu64 " calls with NULL arguments, all as documented\n",
           test_variant(), calls);
}

/* ------------------------------------------------------------------------------------------ */
/* Lengths                                                                                     */

/* Lengths no entry may have, each with a one-byte buffer: TOO_LARGE on the length alone (the
 * buffer is never read: the sanitizers would report it), counted in stats.rejected, on a live
 * dispatcher and a shut-down one (arguments are checked first, see bd_enqueue), under default
 * options, no limits at all, and small byte limits. */
static void hostile_len_extremes(void) {
    static const size_t huge[] = {
        (size_t)UINT32_MAX + 1, (size_t)1 << 40, (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1,
        SIZE_MAX / 2 + 1,       SIZE_MAX - 1,    SIZE_MAX,
    };
    const size_t n_huge = sizeof huge / sizeof huge[0];
    uint64_t calls = 0;
    for (int config = 0; config < 3; config++) {
        bd_options o;
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        size_t limit = o.max_queue_bytes; /* default 64 MiB */
        if (config == 1) {
            o.max_queue_bytes = 0; /* no limit but the 4 GiB of the format */
            limit = UINT32_MAX;
        } else if (config == 2) {
            o.max_queue_bytes = 100;
            o.max_batch_bytes = 10;
            limit = 10;
        }
        host h;
        host_init(&h);
        bd_dispatcher *d = NULL;
        CHECK_STATUS(bd_new(host_dispatch, &h, 10, &o, &d), BD_STATUS_OK);
        uint8_t *byte = malloc(1); /* on the heap, so that ASan and valgrind see a stray read */
        CHECK(byte != NULL);
        *byte = 0x42;
        uint64_t refused = 0;
        for (int closed = 0; closed < 2; closed++) {
            for (size_t i = 0; i < n_huge; i++) {
                CHECK_STATUS(bd_enqueue(d, byte, huge[i]), BD_STATUS_TOO_LARGE);
                refused++;
            }
            if (limit < UINT32_MAX) {
                /* Just over the configured limit: refused as well, still without a read. */
                CHECK_STATUS(bd_enqueue(d, byte, limit + 1), BD_STATUS_TOO_LARGE);
                refused++;
            }
            CHECK_STATUS(bd_enqueue(d, byte, 1), closed ? BD_STATUS_CLOSED : BD_STATUS_OK);
            refused += closed;
            bd_stats s = get_stats(d);
            CHECK_EQ(s.rejected, refused);
            CHECK_EQ(s.enqueued, 1);
            if (!closed) {
                CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
            }
        }
        calls += refused + 1;
        free(byte);
        bd_free(d);
        CHECK_EQ(atomic_load(&h.delivered), 1);
    }
    printf("hostile_len_extremes [%s]: %" PRIu64
           " enqueues with lengths from the limit + 1 to SIZE_MAX and a 1-byte buffer: "
           "TOO_LARGE, counted, buffer not read\n",
           test_variant(), calls);
}

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                     */

/* What bd_new must return, by the rules in the header (BD_STATUS_INVALID_OPTIONS). */
static bd_status options_model(const bd_options *o, uint64_t ms_delay) {
    bool invalid = o->version != BD_OPTIONS_VERSION || o->overflow > BD_OVERFLOW_BLOCK ||
                   ms_delay == 0 || o->max_attempts == 0 ||
                   (o->max_batch_entries != 0 && o->max_queue_entries != 0 &&
                    o->max_batch_entries > o->max_queue_entries) ||
                   (o->max_batch_bytes != 0 && o->max_queue_bytes != 0 &&
                    o->max_batch_bytes > o->max_queue_bytes) ||
                   o->retry_backoff_max_ms < o->retry_backoff_ms;
    return invalid ? BD_STATUS_INVALID_OPTIONS : BD_STATUS_OK;
}

typedef struct options_tally {
    uint64_t cases, created, refused, mismatches, entries_ok, entries_too_large;
} options_tally;

/* Creates a dispatcher with `o` (copied first: bd_new must not depend on it afterwards) and
 * checks the status against the model; if created, one 8-byte entry must be accepted (or
 * TOO_LARGE under a byte limit below 8), delivered by bd_shutdown, and user_data freed once. */
static void options_case(const char *what, const bd_options *o_in, uint64_t ms_delay,
                         options_tally *t) {
    bd_options o = *o_in;
    bd_status want = options_model(&o, ms_delay);
    host h;
    host_init(&h);
    bd_dispatcher *d = SENTINEL;
    bd_status got = bd_new(host_dispatch, &h, ms_delay, &o, &d);
    t->cases++;
    if (got != want) {
        fprintf(stderr, "options '%s': bd_new returned %s, the header says %s\n", what,
                bd_status_str(got), bd_status_str(want));
        t->mismatches++;
    }
    if (got != BD_STATUS_OK) {
        t->refused++;
        CHECK(d == SENTINEL);
        CHECK_EQ(atomic_load(&h.freed), 0);
        return;
    }
    t->created++;
    memset(&o, 0xAA, sizeof o); /* copied by bd_new: garbage in the caller's copy is fine */
    bool too_large = (o_in->max_queue_bytes != 0 && o_in->max_queue_bytes < 8) ||
                     (o_in->max_batch_bytes != 0 && o_in->max_batch_bytes < 8);
    CHECK_STATUS(enqueue_tagged(d, 1, 2), too_large ? BD_STATUS_TOO_LARGE : BD_STATUS_OK);
    t->entries_ok += !too_large;
    t->entries_too_large += too_large;
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.dispatched, too_large ? 0 : 1);
    CHECK_EQ(s.rejected, too_large ? 1 : 0);
    bd_free(d);
    CHECK_EQ(atomic_load(&h.delivered), too_large ? 0 : 1);
    CHECK_EQ(atomic_load(&h.freed), o_in->user_data_free != NULL ? 1 : 0);
}

#define FIELD(name) {#name, offsetof(bd_options, name), sizeof(((bd_options *)0)->name)}

/* Each field of bd_options filled with 0x00, 0x01, 0x55, 0xAA and 0xFF bytes, one at a time;
 * then the whole struct (padding included) filled with each pattern, with or without a valid
 * version; then ms_delay with each pattern. The two function pointers get only NULL when they
 * would be called: no library can tell a garbage function pointer from a real one, calling it
 * is what the pointer is for. With the whole struct filled they are garbage too, and must not
 * be called, because the options are refused (version, or overflow) before anything runs. */
static void hostile_options_fields(void) {
    static const struct {
        const char *name;
        size_t off, size;
    } fields[] = {
        FIELD(version),           FIELD(max_queue_entries), FIELD(max_queue_bytes),
        FIELD(max_batch_entries), FIELD(max_batch_bytes),   FIELD(overflow),
        FIELD(block_timeout_ms),  FIELD(max_attempts),      FIELD(retry_backoff_ms),
        FIELD(retry_backoff_max_ms), FIELD(on_drop),        FIELD(user_data_free),
    };
    static const uint8_t patterns[] = {0x00, 0x01, 0x55, 0xAA, 0xFF};
    options_tally t;
    memset(&t, 0, sizeof t);
    char what[96];
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (size_t p = 0; p < sizeof patterns; p++) {
            bool fn_ptr = fields[f].off == offsetof(bd_options, on_drop) ||
                          fields[f].off == offsetof(bd_options, user_data_free);
            if (fn_ptr && patterns[p] != 0x00) {
                continue;
            }
            bd_options o;
            CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
            o.on_drop = host_drop;
            o.user_data_free = host_free;
            memset((uint8_t *)&o + fields[f].off, patterns[p], fields[f].size);
            snprintf(what, sizeof what, "%s = 0x%02x...", fields[f].name, patterns[p]);
            options_case(what, &o, 10, &t);
        }
    }
    for (size_t p = 0; p < sizeof patterns; p++) {
        bd_options o;
        memset(&o, patterns[p], sizeof o);
        snprintf(what, sizeof what, "whole struct 0x%02x...", patterns[p]);
        options_case(what, &o, 10, &t);
        o.version = BD_OPTIONS_VERSION; /* garbage everywhere else, function pointers too */
        if (options_model(&o, 10) == BD_STATUS_OK) {
            o.on_drop = NULL; /* would be created, and the garbage pointers called */
            o.user_data_free = NULL;
        }
        snprintf(what, sizeof what, "whole struct 0x%02x... but the version", patterns[p]);
        options_case(what, &o, 10, &t);
        uint64_t ms;
        memset(&ms, patterns[p], sizeof ms);
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        snprintf(what, sizeof what, "ms_delay 0x%02x...", patterns[p]);
        options_case(what, &o, ms, &t);
    }
    printf("hostile_options_fields [%s]: %" PRIu64 " option sets: %" PRIu64 " created, %" PRIu64
           " refused; %" PRIu64 " differ from the header's rules\n",
           test_variant(), t.cases, t.created, t.refused, t.mismatches);
    CHECK_EQ(t.mismatches, 0);
    CHECK(t.created > 0 && t.refused > 0);
}

static uint64_t pick_u64(rng_t *r) {
    static const uint64_t v[] = {0, 1, 2, 7, 8, 9, 100, 1000, UINT32_MAX, UINT64_C(0xAAAAAAAAAAAAAAAA),
                                 UINT64_MAX - 1, UINT64_MAX};
    uint64_t k = rng_range(r, 0, sizeof v / sizeof v[0]);
    return k < sizeof v / sizeof v[0] ? v[k] : rng_next(r);
}

static uint32_t pick_u32(rng_t *r) {
    static const uint32_t v[] = {0, 1, 2, 3, 4, 0xAAAAAAAAu, UINT32_MAX};
    uint64_t k = rng_range(r, 0, sizeof v / sizeof v[0]);
    return k < sizeof v / sizeof v[0] ? v[k] : (uint32_t)rng_next(r);
}

/* Random option sets mixing valid and garbage values in every field (function pointers: NULL or
 * real), 400 of them (60 under valgrind); each checked as above. */
static void hostile_options_random(void) {
    uint64_t seed = test_seed("hostile_options_random");
    rng_t r = {seed};
    uint64_t n = slow_factor() > 1 ? 60 : 400;
    options_tally t;
    memset(&t, 0, sizeof t);
    for (uint64_t i = 0; i < n; i++) {
        bd_options o;
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        /* Each field keeps its default half of the time, so that many sets are valid. */
#define MAYBE(field, value)                                                                  \
    do {                                                                                     \
        if (rng_range(&r, 0, 1)) {                                                           \
            field = (value);                                                                 \
        }                                                                                    \
    } while (0)
        if (rng_range(&r, 0, 9) == 0) {
            o.version = pick_u32(&r);
        }
        MAYBE(o.max_queue_entries, (size_t)pick_u64(&r));
        MAYBE(o.max_queue_bytes, (size_t)pick_u64(&r));
        MAYBE(o.max_batch_entries, (size_t)pick_u64(&r));
        MAYBE(o.max_batch_bytes, (size_t)pick_u64(&r));
        MAYBE(o.overflow, pick_u32(&r));
        MAYBE(o.block_timeout_ms, pick_u64(&r));
        MAYBE(o.max_attempts, pick_u32(&r));
        MAYBE(o.retry_backoff_ms, pick_u64(&r));
        MAYBE(o.retry_backoff_max_ms, pick_u64(&r));
#undef MAYBE
        o.on_drop = rng_range(&r, 0, 1) ? host_drop : NULL;
        o.user_data_free = rng_range(&r, 0, 1) ? host_free : NULL;
        uint64_t ms = rng_range(&r, 0, 1) ? 10 : pick_u64(&r);
        char what[64];
        snprintf(what, sizeof what, "random set %" PRIu64, i);
        options_case(what, &o, ms, &t);
    }
    printf("hostile_options_random [%s]: %" PRIu64 " option sets: %" PRIu64 " created (%" PRIu64
           " took the entry, %" PRIu64 " TOO_LARGE), %" PRIu64 " refused; %" PRIu64
           " differ from the header's rules\n",
           test_variant(), t.cases, t.created, t.entries_ok, t.entries_too_large, t.refused,
           t.mismatches);
    CHECK_EQ(t.mismatches, 0);
    CHECK(t.created > 0 && t.refused > 0);
}

/* ------------------------------------------------------------------------------------------ */
/* bd_status_str                                                                               */

/* Every 32-bit value in the plain variant (4.3e9 calls); a sample of 2^24 (asan) or 2^16
 * (valgrind) values plus the edges in the others. Known values: distinct, non-empty, static;
 * every other value: the documented "unknown status". */
static void hostile_status_str_all(void) {
    const char *known[BD_STATUS_PANIC + 1];
    for (uint32_t s = 0; s <= BD_STATUS_PANIC; s++) {
        known[s] = bd_status_str(s);
        CHECK(known[s] != NULL);
        CHECK(strlen(known[s]) > 0);
        CHECK(strcmp(known[s], "unknown status") != 0);
        CHECK(bd_status_str(s) == known[s]);
        for (uint32_t u = 0; u < s; u++) {
            CHECK(strcmp(known[s], known[u]) != 0);
        }
    }
    const char *unknown = bd_status_str(BD_STATUS_PANIC + 1);
    CHECK(unknown != NULL);
    CHECK(strcmp(unknown, "unknown status") == 0);

    bool full = !BD_TEST_ASAN && slow_factor() == 1;
    uint64_t calls = 0, bad = 0;
    uint64_t t0 = now_ns();
    if (full) {
        for (uint64_t v = BD_STATUS_PANIC + 1; v <= UINT32_MAX; v++) {
            const char *t = bd_status_str((uint32_t)v);
            /* Another pointer to the same text would do too; the same pointer is quickest. */
            if (t != unknown && (t == NULL || strcmp(t, "unknown status") != 0)) {
                bad++;
            }
        }
        calls = (uint64_t)UINT32_MAX - BD_STATUS_PANIC;
    } else {
        static const uint32_t edges[] = {10, 11, 255, 256, 65535, 65536, INT32_MAX,
                                          (uint32_t)INT32_MAX + 1, UINT32_MAX - 1, UINT32_MAX};
        uint64_t samples = BD_TEST_ASAN ? (1u << 24) : (1u << 16);
        rng_t r = {test_seed("hostile_status_str_all")};
        for (uint64_t i = 0; i < samples + sizeof edges / sizeof edges[0]; i++) {
            uint32_t v = i < samples ? (uint32_t)rng_next(&r) : edges[i - samples];
            const char *t = bd_status_str(v);
            bool ok = v <= BD_STATUS_PANIC ? t == known[v]
                                           : t != NULL && strcmp(t, "unknown status") == 0;
            bad += !ok;
            calls++;
        }
    }
    printf("hostile_status_str_all [%s]: %s: %" PRIu64 " values in %.1f s, %" PRIu64
           " not the documented text\n",
           test_variant(), full ? "every 32-bit value" : "sampled values", calls,
           (double)(now_ns() - t0) / 1e9, bad);
    CHECK_EQ(bad, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Timeouts                                                                                    */

typedef struct gated {
    gate_t gate;
    atomic_int calls;
    atomic_uint_fast64_t delivered;
} gated;

static int gated_dispatch(void *user_data, const bd_batch *b) {
    gated *g = user_data;
    if (atomic_fetch_add(&g->calls, 1) == 0) {
        gate_wait(&g->gate, T(60000));
    }
    atomic_fetch_add(&g->delivered, b->count);
    return 0;
}

static bool gated_started(void *arg) { return atomic_load(&((gated *)arg)->calls) >= 1; }

typedef struct blocked_enqueue {
    const bd_dispatcher *d;
    atomic_int done;
    bd_status st;
} blocked_enqueue;

static void *enqueue_blocking(void *arg) {
    blocked_enqueue *be = arg;
    be->st = enqueue_tagged(be->d, 3, 0);
    atomic_store(&be->done, 1);
    return NULL;
}

static bool enqueue_done(void *arg) { return atomic_load(&((blocked_enqueue *)arg)->done) != 0; }

/* Timeouts that are not BD_NO_TIMEOUT but near it (deadlines past the end of any clock): no
 * overflow, no panic. A BD_OVERFLOW_BLOCK enqueue with block_timeout_ms UINT64_MAX - 1 waits for
 * room and succeeds once there is some; flush and shutdown with such deadlines return OK. */
static void hostile_timeouts_extreme(void) {
    static gated g;
    memset(&g, 0, sizeof g);
    gate_init(&g.gate);
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.max_queue_entries = 1;
    o.overflow = BD_OVERFLOW_BLOCK;
    o.block_timeout_ms = UINT64_MAX - 1;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(gated_dispatch, &g, UINT64_MAX - 1, &o, &d), BD_STATUS_OK);
    CHECK_STATUS(enqueue_tagged(d, 1, 0), BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, 0), BD_STATUS_TIMEOUT); /* asks for the dispatch; does not wait */
    CHECK(wait_until(gated_started, &g, T(5000)));  /* the first batch is in flight, blocked */
    CHECK_STATUS(enqueue_tagged(d, 2, 0), BD_STATUS_OK); /* the queue's one place */
    blocked_enqueue be = {.d = d};
    atomic_init(&be.done, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, enqueue_blocking, &be) == 0);
    CHECK(!wait_until(enqueue_done, &be, 100)); /* waiting for room, as BLOCK says */
    gate_open(&g.gate);
    CHECK_STATUS(bd_flush(d, UINT64_MAX - 1), BD_STATUS_OK);
    CHECK(wait_until(enqueue_done, &be, T(10000)));
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_STATUS(be.st, BD_STATUS_OK);
    CHECK_STATUS(bd_flush(d, (uint64_t)1 << 63), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, UINT64_MAX - 1), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, (uint64_t)1 << 63), BD_STATUS_OK);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.dispatched, 3);
    CHECK_EQ(atomic_load(&g.delivered), 3);
    bd_free(d);
    gate_destroy(&g.gate);
    printf("hostile_timeouts_extreme [%s]: ms_delay, block_timeout_ms, flush and shutdown "
           "timeouts near UINT64_MAX: 3 entries accepted and delivered, no overflow\n",
           test_variant());
}

/* ------------------------------------------------------------------------------------------ */
/* After bd_shutdown                                                                           */

#define AFTER_THREADS 8

typedef struct after_ctx {
    const bd_dispatcher *d;
    pthread_barrier_t *start;
    uint32_t rounds;
    uint64_t calls, refusals, wrong;
} after_ctx;

#define EXPECT(call, status)                                                                 \
    do {                                                                                     \
        bd_status got_ = (call);                                                             \
        c->calls++;                                                                          \
        if (got_ != (status)) {                                                              \
            fprintf(stderr, "%s: %s, documented %s\n", #call, bd_status_str(got_),           \
                    bd_status_str(status));                                                  \
            c->wrong++;                                                                      \
        }                                                                                    \
    } while (0)

/* Every function, from 8 threads at once, on a shut-down handle: what the header documents. */
static void *after_calls(void *arg) {
    after_ctx *c = arg;
    uint8_t buf[16] = {0};
    bd_stats s;
    pthread_barrier_wait(c->start);
    for (uint32_t i = 0; i < c->rounds; i++) {
        EXPECT(bd_enqueue(c->d, buf, sizeof buf), BD_STATUS_CLOSED);
        EXPECT(bd_enqueue(c->d, NULL, 0), BD_STATUS_CLOSED);
        EXPECT(bd_enqueue(c->d, NULL, 8), BD_STATUS_NULL_ARG);
        EXPECT(bd_enqueue(c->d, buf, SIZE_MAX), BD_STATUS_TOO_LARGE);
        c->refusals += 3;
        EXPECT(bd_flush(c->d, 0), BD_STATUS_OK);
        EXPECT(bd_flush(c->d, BD_NO_TIMEOUT), BD_STATUS_OK);
        EXPECT(bd_shutdown(c->d, 0), BD_STATUS_OK);
        EXPECT(bd_shutdown(c->d, BD_NO_TIMEOUT), BD_STATUS_OK);
        EXPECT(bd_stats_get(c->d, &s), BD_STATUS_OK);
        EXPECT(bd_stats_get(c->d, NULL), BD_STATUS_NULL_ARG);
        if (!stats_consistent(&s)) {
            c->wrong++;
        }
    }
    return NULL;
}

static void hostile_after_shutdown(void) {
    host h;
    host_init(&h);
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.user_data_free = host_free;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(host_dispatch, &h, 60000, &o, &d), BD_STATUS_OK);
    for (uint32_t i = 0; i < 100; i++) {
        CHECK_STATUS(enqueue_tagged(d, 1, i), BD_STATUS_OK);
    }
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    pthread_barrier_t start;
    CHECK(pthread_barrier_init(&start, NULL, AFTER_THREADS) == 0);
    after_ctx c[AFTER_THREADS];
    pthread_t th[AFTER_THREADS];
    uint32_t rounds = slow_factor() > 1 ? 100 : 2000;
    for (int i = 0; i < AFTER_THREADS; i++) {
        c[i] = (after_ctx){.d = d, .start = &start, .rounds = rounds};
        CHECK(pthread_create(&th[i], NULL, after_calls, &c[i]) == 0);
    }
    uint64_t calls = 0, refusals = 0, wrong = 0;
    for (int i = 0; i < AFTER_THREADS; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        calls += c[i].calls;
        refusals += c[i].refusals;
        wrong += c[i].wrong;
    }
    pthread_barrier_destroy(&start);
    bd_stats s = get_stats(d);
    printf("hostile_after_shutdown [%s]: %d threads, %" PRIu64
           " calls of every function on a shut-down handle; %" PRIu64
           " not as documented; rejected %" PRIu64 " (expected %" PRIu64 ")\n",
           test_variant(), AFTER_THREADS, calls, wrong, s.rejected, refusals);
    CHECK_EQ(wrong, 0);
    CHECK_EQ(s.rejected, refusals);
    CHECK_EQ(s.enqueued, 100);
    CHECK_EQ(s.dispatched, 100);
    CHECK_EQ(atomic_load(&h.freed), 0);
    bd_free(d);
    CHECK_EQ(atomic_load(&h.freed), 1);
    CHECK_EQ(atomic_load(&h.delivered), 100);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"hostile_null_everywhere", hostile_null_everywhere},
        {"hostile_len_extremes", hostile_len_extremes},
        {"hostile_options_fields", hostile_options_fields},
        {"hostile_options_random", hostile_options_random},
        {"hostile_status_str_all", hostile_status_str_all},
        {"hostile_timeouts_extreme", hostile_timeouts_extreme},
        {"hostile_after_shutdown", hostile_after_shutdown},
    };
    return RUN_TESTS(tests, argc, argv);
}
