/*
 * request_log: what a gateway does with background-dispatcher.
 *
 * Four "request handler" threads each serve simulated requests and enqueue one access-log
 * line per request; the dispatcher groups the lines and, at most every 100 ms, hands a batch
 * to `post_batch`, which stands in for one POST to a log collector. Each batch is printed with
 * its size and the time since the previous one; the final stats show nothing was lost.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "background_dispatcher.h"

#define HANDLERS 4
#define RUN_MS 1500
#define MS_DELAY 100

static const char *const PATHS[] = {"/api/items", "/api/users", "/health", "/api/orders", "/login"};
static const int STATUSES[] = {200, 200, 200, 201, 204, 304, 404, 500};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The collector side: runs on the dispatcher's thread, one batch at a time. */
typedef struct collector {
    uint64_t started_ns;
    uint64_t last_batch_ns;
    unsigned batches;
} collector;

static int post_batch(void *user_data, const bd_batch *batch) {
    collector *c = user_data;
    uint64_t now = now_ns();
    double since = c->last_batch_ns ? (double)(now - c->last_batch_ns) / 1e6 : 0.0;
    c->last_batch_ns = now;
    c->batches++;
    /* A real collector would serialise and POST here. Entries are not NUL-terminated. */
    const bd_entry *first = &batch->entries[0];
    printf("batch %3u  t=%6.1f ms  +%6.1f ms  %5zu entries  %7zu bytes  first: %.*s\n", c->batches,
           (double)(now - c->started_ns) / 1e6, since, batch->count, batch->bytes, (int)first->len,
           (const char *)first->data);
    return 0;
}

typedef struct handler {
    const bd_dispatcher *dispatcher;
    unsigned id;
    uint64_t until_ns;
    unsigned long served;
} handler;

static void *serve(void *arg) {
    handler *h = arg;
    unsigned seed = h->id * 2654435761u;
    char line[160];
    while (now_ns() < h->until_ns) {
        seed = seed * 1103515245u + 12345u;
        const char *path = PATHS[(seed >> 8) % 5];
        int status = STATUSES[(seed >> 12) % 8];
        double ms = (double)((seed >> 16) % 5000) / 100.0;
        int len = snprintf(line, sizeof line, "handler=%u req=%lu GET %s/%u %d %.2fms", h->id, h->served, path,
                           (seed >> 20) % 1000, status, ms);
        bd_status rc = bd_enqueue(h->dispatcher, (const uint8_t *)line, (size_t)len);
        if (rc != BD_STATUS_OK) {
            fprintf(stderr, "enqueue: %s\n", bd_status_str(rc));
            return NULL;
        }
        h->served++;
        /* Simulated request work: 20-220 microseconds. */
        struct timespec pause = {0, 20000 + (long)((seed >> 4) % 200) * 1000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

int main(void) {
    printf("background-dispatcher %s: %d handler threads for %d ms, ms_delay %d\n\n", bd_version(), HANDLERS,
           RUN_MS, MS_DELAY);
    collector c = {.started_ns = now_ns()};
    bd_options options;
    bd_options_init(&options);
    options.max_queue_entries = 100000; /* bounded: a dead collector cannot eat the memory */
    bd_dispatcher *d = NULL;
    bd_status rc = bd_new(post_batch, &c, MS_DELAY, &options, &d);
    if (rc != BD_STATUS_OK) {
        fprintf(stderr, "bd_new: %s\n", bd_status_str(rc));
        return 1;
    }

    pthread_t threads[HANDLERS];
    handler handlers[HANDLERS];
    for (unsigned i = 0; i < HANDLERS; i++) {
        handlers[i] = (handler){.dispatcher = d, .id = i, .until_ns = now_ns() + RUN_MS * 1000000ull};
        pthread_create(&threads[i], NULL, serve, &handlers[i]);
    }
    unsigned long served = 0;
    for (unsigned i = 0; i < HANDLERS; i++) {
        pthread_join(threads[i], NULL);
        served += handlers[i].served;
    }

    /* Shutting down: deliver what is still queued, but never wait more than 2 s. */
    rc = bd_shutdown(d, 2000);
    bd_stats s;
    bd_stats_get(d, &s);
    printf("\nshutdown: %s\n", bd_status_str(rc));
    printf("requests served %lu; enqueued %" PRIu64 ", dispatched %" PRIu64 " in %" PRIu64
           " batches; rejected %" PRIu64 ", failed %" PRIu64 ", evicted %" PRIu64 ", abandoned %" PRIu64 "\n",
           served, s.enqueued, s.dispatched, s.batches, s.rejected, s.failed, s.evicted, s.abandoned);
    bd_free(d);
    return s.dispatched == served ? 0 : 1;
}
