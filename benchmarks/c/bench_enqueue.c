/*
 * bench_enqueue: bd_enqueue called from C, the C half of the "C vs Rust API" comparison.
 *
 * Same protocol as `dispatcher-bench enqueue --sinks ours`: P long-lived producer threads,
 * one dispatcher (ms_delay 10, no queue bound, a callback that touches every byte), a warm-up
 * round, then ROUNDS measured rounds of PER_ROUND enqueues split across the producers, each
 * followed by a flush so that no backlog runs during the next round. Prints one JSON line
 * per thread count with the median ns per enqueue (per producer) and entries/s.
 *
 * usage: bench_enqueue [threads,...] [rounds] [per_round] [size]
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "background_dispatcher.h"

static volatile uint64_t touched;

static int touch_all(void *user_data, const bd_batch *batch) {
    (void)user_data;
    uint64_t sum = 0;
    for (size_t i = 0; i < batch->count; i++)
        for (size_t j = 0; j < batch->entries[i].len; j++) sum += batch->entries[i].data[j];
    touched += sum;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct shared {
    bd_dispatcher *d;
    pthread_barrier_t start, end;
    size_t per_producer, size;
    int stop;
} shared;

static void *producer(void *arg) {
    shared *s = arg;
    uint8_t *data = malloc(s->size);
    memset(data, 0x5a, s->size);
    for (;;) {
        pthread_barrier_wait(&s->start);
        if (s->stop) break;
        for (size_t i = 0; i < s->per_producer; i++) {
            if (bd_enqueue(s->d, data, s->size) != BD_STATUS_OK) {
                fprintf(stderr, "bd_enqueue refused an entry: the measurement would be wrong\n");
                exit(1);
            }
        }
        pthread_barrier_wait(&s->end);
    }
    free(data);
    return NULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *threads = argc > 1 ? argv[1] : "1";
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    size_t per_round = argc > 3 ? (size_t)atol(argv[3]) : 2000000;
    size_t size = argc > 4 ? (size_t)atol(argv[4]) : 100;
    char *list = strdup(threads);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int p = atoi(tok);
        shared s = {.per_producer = per_round / (size_t)p, .size = size};
        bd_options options;
        bd_options_init(&options);
        options.max_queue_bytes = 0;
        if (bd_new(touch_all, NULL, 10, &options, &s.d) != BD_STATUS_OK) return 1;
        pthread_barrier_init(&s.start, NULL, (unsigned)p + 1);
        pthread_barrier_init(&s.end, NULL, (unsigned)p + 1);
        pthread_t *tids = calloc((size_t)p, sizeof *tids);
        for (int i = 0; i < p; i++) pthread_create(&tids[i], NULL, producer, &s);
        double *walls = calloc((size_t)rounds + 1, sizeof *walls);
        for (int r = 0; r <= rounds; r++) {
            pthread_barrier_wait(&s.start);
            double t0 = now_s();
            pthread_barrier_wait(&s.end);
            walls[r] = now_s() - t0;
            bd_flush(s.d, BD_NO_TIMEOUT);
        }
        s.stop = 1;
        pthread_barrier_wait(&s.start);
        for (int i = 0; i < p; i++) pthread_join(tids[i], NULL);
        qsort(walls + 1, (size_t)rounds, sizeof *walls, by_value); /* round 0 warms up */
        double wall = walls[1 + rounds / 2];
        printf("{\"bench\":\"c_enqueue\",\"sink\":\"ours_c\",\"size\":%zu,\"threads\":%d,\"rounds\":%d,"
               "\"ns_per_op\":%.2f,\"mops\":%.3f}\n",
               size, p, rounds, wall * 1e9 / (double)s.per_producer,
               (double)(s.per_producer * (size_t)p) / wall / 1e6);
        bd_free(s.d);
        free(walls);
        free(tids);
    }
    free(list);
    return 0;
}
