/* Bad input, options, version and status text. */
#include "test_util.h"

static int count_dispatch(void *user_data, const bd_batch *b) {
    (void)user_data;
    (void)b;
    return 0;
}

static atomic_int free_calls;
static void count_free(void *user_data) {
    (void)user_data;
    atomic_fetch_add(&free_calls, 1);
}

/* A pointer that bd_new must never write over *out. */
#define SENTINEL ((bd_dispatcher *)(uintptr_t)0x5eed5eedu)

static void options_defaults(void) {
    bd_options o;
    memset(&o, 0xab, sizeof o); /* garbage first: init must write every field */
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    CHECK_EQ(o.version, BD_OPTIONS_VERSION);
    CHECK_EQ(o.max_queue_entries, 0);
    CHECK_EQ(o.max_queue_bytes, 64u * 1024u * 1024u);
    CHECK_EQ(o.max_batch_entries, 0);
    CHECK_EQ(o.max_batch_bytes, 0);
    CHECK_EQ(o.overflow, BD_OVERFLOW_DROP_NEWEST);
    CHECK_EQ(o.block_timeout_ms, 1000);
    CHECK_EQ(o.max_attempts, 1);
    CHECK_EQ(o.retry_backoff_ms, 100);
    CHECK_EQ(o.retry_backoff_max_ms, 30000);
    CHECK(o.on_drop == NULL);
    CHECK(o.user_data_free == NULL);

    /* The defaults are valid as they are. */
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, 10, &o, &d), BD_STATUS_OK);
    CHECK(d != NULL);
    bd_free(d);
}

static void version(void) {
    const char *v = bd_version();
    CHECK(v != NULL);
    CHECK(strcmp(v, BD_VERSION) == 0);
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", BD_VERSION_MAJOR, BD_VERSION_MINOR,
             BD_VERSION_PATCH);
    CHECK(strcmp(v, expect) == 0);
    CHECK(bd_version() == v); /* static */
}

static void status_str(void) {
    const char *known[10];
    for (uint32_t s = 0; s < 10; s++) {
        known[s] = bd_status_str(s);
        CHECK(known[s] != NULL);
        CHECK(strlen(known[s]) > 0);
        CHECK(bd_status_str(s) == known[s]); /* static text, not a fresh allocation */
        for (uint32_t t = 0; t < s; t++) {
            CHECK(strcmp(known[s], known[t]) != 0);
        }
    }
    const uint32_t unknown[] = {10, 11, 255, 12345, 0x80000000u, UINT32_MAX - 1, UINT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *t = bd_status_str(unknown[i]);
        CHECK(t != NULL);
        CHECK(strlen(t) > 0);
        CHECK(bd_status_str(unknown[i]) == t);
        CHECK(strcmp(t, known[BD_STATUS_OK]) != 0); /* not "ok" */
    }
}

static void null_args(void) {
    atomic_store(&free_calls, 0);
    bd_options o;
    CHECK_STATUS(bd_options_init(NULL), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.user_data_free = count_free;

    bd_dispatcher *out = SENTINEL;
    CHECK_STATUS(bd_new(NULL, &o, 10, &o, &out), BD_STATUS_NULL_ARG);
    CHECK(out == SENTINEL);
    CHECK_STATUS(bd_new(count_dispatch, &o, 10, &o, NULL), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_new(NULL, &o, 10, &o, NULL), BD_STATUS_NULL_ARG);
    CHECK_EQ(atomic_load(&free_calls), 0);

    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, 60000, NULL, &d), BD_STATUS_OK);
    uint8_t byte = 1;
    CHECK_STATUS(bd_enqueue(NULL, &byte, 1), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_enqueue(NULL, NULL, 0), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_enqueue(d, NULL, 1), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_enqueue(d, NULL, 4096), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_flush(NULL, 0), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_flush(NULL, BD_NO_TIMEOUT), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_shutdown(NULL, 0), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_shutdown(NULL, BD_NO_TIMEOUT), BD_STATUS_NULL_ARG);
    bd_stats s;
    CHECK_STATUS(bd_stats_get(NULL, &s), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_stats_get(d, NULL), BD_STATUS_NULL_ARG);
    CHECK_STATUS(bd_stats_get(NULL, NULL), BD_STATUS_NULL_ARG);
    /* "Nothing was changed": not counted as enqueued nor rejected, not shut down. */
    s = get_stats(d);
    CHECK_EQ(s.enqueued, 0);
    CHECK_EQ(s.rejected, 0);
    CHECK_STATUS(bd_enqueue(d, &byte, 1), BD_STATUS_OK);
    bd_free(d);
}

static void empty_entry(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    uint8_t byte = 7;
    CHECK_STATUS(bd_enqueue(d, NULL, 0), BD_STATUS_OK);  /* NULL with len 0: a valid entry */
    CHECK_STATUS(bd_enqueue(d, &byte, 0), BD_STATUS_OK); /* non-NULL, empty */
    CHECK_STATUS(bd_enqueue(d, &byte, 1), BD_STATUS_OK);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 3);
    CHECK_EQ(s.queued_entries, 3);
    CHECK_EQ(s.queued_bytes, 1);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    CHECK_EQ(r.disp.ne, 3);
    CHECK_EQ(r.disp.e[0].len, 0);
    CHECK_EQ(r.disp.e[1].len, 0);
    CHECK_EQ(r.disp.e[2].len, 1);
    CHECK_EQ(rec_data(&r.disp, 2)[0], 7);
    s = get_stats(d);
    CHECK_EQ(s.dispatched, 3);
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef void (*mutate_fn)(bd_options *o, uint64_t *ms_delay);

static void m_zero(bd_options *o, uint64_t *ms) { (void)ms; memset(o, 0, sizeof *o); }
static void m_zero_keep_cbs(bd_options *o, uint64_t *ms) {
    (void)ms;
    memset(o, 0, sizeof *o);
    o->user_data_free = count_free;
}
static void m_garbage_version(bd_options *o, uint64_t *ms) { (void)ms; o->version = 0xdeadbeefu; }
static void m_version_plus_one(bd_options *o, uint64_t *ms) { (void)ms; o->version += 1; }
static void m_version_zero(bd_options *o, uint64_t *ms) { (void)ms; o->version = 0; }
static void m_overflow_3(bd_options *o, uint64_t *ms) { (void)ms; o->overflow = 3; }
static void m_overflow_max(bd_options *o, uint64_t *ms) { (void)ms; o->overflow = UINT32_MAX; }
static void m_ms_delay_0(bd_options *o, uint64_t *ms) { (void)o; *ms = 0; }
static void m_attempts_0(bd_options *o, uint64_t *ms) { (void)ms; o->max_attempts = 0; }
static void m_batch_entries_over_queue(bd_options *o, uint64_t *ms) {
    (void)ms;
    o->max_queue_entries = 10;
    o->max_batch_entries = 11;
}
static void m_batch_bytes_over_queue(bd_options *o, uint64_t *ms) {
    (void)ms;
    o->max_queue_bytes = 100;
    o->max_batch_bytes = 101;
}
static void m_batch_bytes_over_default_queue(bd_options *o, uint64_t *ms) {
    (void)ms;
    o->max_batch_bytes = o->max_queue_bytes + 1;
}
static void m_backoff_max_below(bd_options *o, uint64_t *ms) {
    (void)ms;
    o->retry_backoff_ms = 200;
    o->retry_backoff_max_ms = 199;
}

static void invalid_options(void) {
    static const struct {
        const char *what;
        mutate_fn fn;
    } cases[] = {
        {"memset 0", m_zero},
        {"memset 0 with user_data_free", m_zero_keep_cbs},
        {"garbage version", m_garbage_version},
        {"version + 1", m_version_plus_one},
        {"version 0", m_version_zero},
        {"overflow 3", m_overflow_3},
        {"overflow UINT32_MAX", m_overflow_max},
        {"ms_delay 0", m_ms_delay_0},
        {"max_attempts 0", m_attempts_0},
        {"max_batch_entries > max_queue_entries", m_batch_entries_over_queue},
        {"max_batch_bytes > max_queue_bytes", m_batch_bytes_over_queue},
        {"max_batch_bytes > default max_queue_bytes", m_batch_bytes_over_default_queue},
        {"retry_backoff_max_ms < retry_backoff_ms", m_backoff_max_below},
    };
    atomic_store(&free_calls, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bd_options o;
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        o.user_data_free = count_free;
        uint64_t ms = 10;
        cases[i].fn(&o, &ms);
        bd_dispatcher *out = SENTINEL;
        bd_status st = bd_new(count_dispatch, &o, ms, &o, &out);
        if (st != BD_STATUS_INVALID_OPTIONS) {
            fprintf(stderr, "case '%s': status %u (%s)\n", cases[i].what, (unsigned)st,
                    bd_status_str(st));
        }
        CHECK_STATUS(st, BD_STATUS_INVALID_OPTIONS);
        CHECK(out == SENTINEL);
        CHECK_EQ(atomic_load(&free_calls), 0);
    }
    /* ms_delay 0 with the default options (NULL). */
    bd_dispatcher *out = SENTINEL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, 0, NULL, &out), BD_STATUS_INVALID_OPTIONS);
    CHECK(out == SENTINEL);
    CHECK_EQ(atomic_load(&free_calls), 0);
}

static void valid_option_edges(void) {
    atomic_store(&free_calls, 0);
    struct {
        size_t qe, qb, be, bb;
    } cases[] = {
        {10, 0, 10, 0},          /* batch limit == queue limit */
        {0, 100, 0, 100},        /* same for bytes */
        {0, 0, 1000, 1u << 30},  /* batch limits with no queue limit */
        {5, 50, 0, 0},           /* queue limits only */
        {0, 0, 0, 0},            /* nothing limited */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bd_options o;
        CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
        o.max_queue_entries = cases[i].qe;
        o.max_queue_bytes = cases[i].qb;
        o.max_batch_entries = cases[i].be;
        o.max_batch_bytes = cases[i].bb;
        o.overflow = (bd_overflow)(i % 3);
        o.user_data_free = count_free;
        bd_dispatcher *d = NULL;
        CHECK_STATUS(bd_new(count_dispatch, &o, 1, &o, &d), BD_STATUS_OK);
        CHECK(d != NULL);
        memset(&o, 0, sizeof o); /* the options are copied: freeing them is fine */
        CHECK_STATUS(enqueue_tagged(d, 1, 1), BD_STATUS_OK);
        bd_free(d);
        CHECK_EQ(atomic_load(&free_calls), (int)i + 1);
    }
    /* retry_backoff_max_ms == retry_backoff_ms, max_attempts large, big ms_delay. */
    bd_options o;
    CHECK_STATUS(bd_options_init(&o), BD_STATUS_OK);
    o.retry_backoff_ms = o.retry_backoff_max_ms = 5;
    o.max_attempts = UINT32_MAX;
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, UINT64_MAX / 2, &o, &d), BD_STATUS_OK);
    bd_free(d);
    /* NULL options: the defaults. */
    d = NULL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, 10, NULL, &d), BD_STATUS_OK);
    CHECK(d != NULL);
    bd_free(d);
}

static void free_null(void) {
    bd_free(NULL);
    bd_free(NULL);
    /* The library still works afterwards. */
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(count_dispatch, NULL, 10, NULL, &d), BD_STATUS_OK);
    bd_free(d);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"options_defaults", options_defaults},
        {"version", version},
        {"status_str", status_str},
        {"null_args", null_args},
        {"empty_entry", empty_entry},
        {"invalid_options", invalid_options},
        {"valid_option_edges", valid_option_edges},
        {"free_null", free_null},
    };
    return RUN_TESTS(tests, argc, argv);
}
