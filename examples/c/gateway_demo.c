/*
 * gateway_demo: an API gateway shipping its request logs to a log service, in C.
 *
 * The C twin of examples/python/gateway_demo.py (`make demo`). --threads worker threads serve
 * simulated requests for --duration seconds; each request formats one JSON log line and hands
 * it to one shared bd_dispatcher with bd_enqueue, which copies it and returns at once. On the
 * dispatcher's own thread, at most every --ms-delay ms, ship_batch() writes each batch as
 * NDJSON, either
 *   - to a file (--out FILE; the default is gateway_logs.ndjson), or
 *   - in one HTTP/1.1 POST to a collector (--collector http://HOST:PORT/PATH), such as the
 *     Python demo's: `make demo-c` runs `gateway_demo.py --serve -- build/gateway_demo`.
 * It shows a live progress line, then a summary. The destination's own count (the file read
 * back, or the collector's GET /stats when it has one) must equal the entries the dispatcher
 * accepted, or the exit status is 1.
 *
 *   build/gateway_demo --duration 5 --threads 4 --rate 2000 --ms-delay 100 --out logs.ndjson
 *
 * The HTTP client is the smallest correct one for a demo: a new connection per batch,
 * Content-Length, `Connection: close`, a 5 s socket timeout, and only `http://` URLs.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "background_dispatcher.h"

#define MAX_THREADS 64
#define SAMPLES 65536 /* enqueue timings kept per worker (a uniform sample beyond that) */
#define IO_TIMEOUT_S 5

static const char *const METHODS[] = {"GET", "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"};
static const char *const PATHS[] = {"/v1/orders", "/v1/orders/", "/v1/users/", "/v1/search", "/health", "/login"};
static const int STATUSES[] = {200, 200, 200, 200, 200, 200, 200, 200, 200, 200,
                               200, 200, 201, 204, 304, 400, 401, 404, 429, 500};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t next_random(uint64_t *state) { /* xorshift64*: per-thread, no lock */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ull;
}

/* ---------------------------------------------------------------------------------------- */
/* HTTP: one request per connection                                                          */

typedef struct url {
    char host[256], port[8], path[256];
} url;

static bool parse_url(const char *text, url *u) {
    if (strncmp(text, "http://", 7) != 0) return false;
    const char *host = text + 7, *path = strchr(host, '/');
    const char *end = path ? path : host + strlen(host), *colon = memchr(host, ':', (size_t)(end - host));
    size_t host_len = (size_t)((colon ? colon : end) - host);
    size_t port_len = colon ? (size_t)(end - colon - 1) : 0;
    if (host_len == 0 || host_len >= sizeof u->host || port_len >= sizeof u->port) return false;
    snprintf(u->host, sizeof u->host, "%.*s", (int)host_len, host);
    snprintf(u->port, sizeof u->port, "%.*s", (int)port_len, colon ? colon + 1 : "80");
    snprintf(u->path, sizeof u->path, "%s", path ? path : "/");
    return port_len > 0 || !colon;
}

static bool send_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL); /* a closed peer is an error, not SIGPIPE */
        if (n <= 0) return false;
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* Sends `method path` with `body`; returns the status code (-1 if none) and copies the start
 * of the response body, NUL-terminated, into `reply`. */
static int http_request(const url *u, const char *method, const char *path, const char *body, size_t body_len,
                        char *reply, size_t reply_cap) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *addrs;
    if (getaddrinfo(u->host, u->port, &hints, &addrs) != 0) return -1;
    int fd = socket(addrs->ai_family, addrs->ai_socktype, addrs->ai_protocol);
    /* On Linux SO_SNDTIMEO bounds connect() too: a dead collector costs at most 5 s. */
    struct timeval timeout = {.tv_sec = IO_TIMEOUT_S};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    }
    bool connected = fd >= 0 && connect(fd, addrs->ai_addr, addrs->ai_addrlen) == 0;
    freeaddrinfo(addrs);
    char head[1024], response[4096];
    int head_len = snprintf(head, sizeof head,
                            "%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/x-ndjson\r\n"
                            "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                            method, path, u->host, u->port, body_len);
    size_t got = 0;
    if (connected && head_len < (int)sizeof head && send_all(fd, head, (size_t)head_len) && send_all(fd, body, body_len)) {
        ssize_t n; /* read until the server closes, or the buffer is full */
        while (got < sizeof response - 1 && (n = recv(fd, response + got, sizeof response - 1 - got, 0)) > 0)
            got += (size_t)n;
    }
    if (fd >= 0) close(fd);
    response[got] = '\0';
    int status = -1;
    if (sscanf(response, "HTTP/1.%*d %d", &status) != 1) return -1;
    const char *content = strstr(response, "\r\n\r\n");
    snprintf(reply, reply_cap, "%s", content ? content + 4 : "");
    return status;
}

/* The entry count of a collector that serves GET /stats (the Python demo's), or -1. */
static long long collector_count(const url *u) {
    char path[sizeof u->path + 8], reply[512];
    snprintf(path, sizeof path, "%.*s/stats", (int)(strrchr(u->path, '/') - u->path), u->path);
    const char *entries;
    if (http_request(u, "GET", path, "", 0, reply, sizeof reply) != 200 || !(entries = strstr(reply, "\"entries\"")))
        return -1;
    return strtoll(strchr(entries, ':') + 1, NULL, 10);
}

/* ---------------------------------------------------------------------------------------- */
/* The dispatch callback                                                                     */

typedef struct shipper {
    FILE *file; /* NULL: POST to `collector` */
    url collector;
    char *body; /* the NDJSON of one batch, reused: one callback at a time */
    size_t body_cap;
    uint64_t calls, entries, max_batch;
    uint64_t last_start_ns, gaps, gap_sum_ns, gap_min_ns;
    _Atomic uint64_t closing_ns; /* set when the shutdown starts: later batches do not wait */
} shipper;

static int ship_batch(void *user_data, const bd_batch *batch) {
    shipper *s = user_data;
    uint64_t start = now_ns(), closing = atomic_load(&s->closing_ns);
    if (s->last_start_ns && !(closing && start >= closing)) {
        uint64_t gap = start - s->last_start_ns;
        s->gap_sum_ns += gap;
        s->gap_min_ns = s->gaps++ == 0 || gap < s->gap_min_ns ? gap : s->gap_min_ns;
    }
    s->last_start_ns = start;
    s->calls++;
    s->entries += batch->count;
    s->max_batch = batch->count > s->max_batch ? batch->count : s->max_batch;

    if (s->file) { /* entries are not NUL-terminated: write them by length */
        for (size_t i = 0; i < batch->count; i++) {
            fwrite(batch->entries[i].data, 1, batch->entries[i].len, s->file);
            fputc('\n', s->file);
        }
        return fflush(s->file) == 0 && !ferror(s->file) ? 0 : 1;
    }
    size_t len = batch->bytes + batch->count; /* a newline after each entry */
    if (len > s->body_cap) {
        char *grown = realloc(s->body, len);
        if (!grown) return 1;
        s->body = grown;
        s->body_cap = len;
    }
    char *p = s->body, reply[256];
    for (size_t i = 0; i < batch->count; i++) {
        memcpy(p, batch->entries[i].data, batch->entries[i].len);
        p += batch->entries[i].len;
        *p++ = '\n';
    }
    int status = http_request(&s->collector, "POST", s->collector.path, s->body, len, reply, sizeof reply);
    if (status / 100 == 2) return 0;
    if (status < 0) fprintf(stderr, "batch of %zu entries failed: no HTTP response\n", batch->count);
    else fprintf(stderr, "batch of %zu entries failed: HTTP status %d\n", batch->count, status);
    return 1; /* no retry unless --max-attempts says so, like the seed */
}

/* ---------------------------------------------------------------------------------------- */
/* The gateway's workers                                                                     */

typedef struct worker {
    const bd_dispatcher *dispatcher;
    unsigned index;
    uint64_t until_ns, interval_ns; /* interval 0: unpaced */
    _Atomic uint64_t served;        /* read by the progress line */
    uint32_t *enqueue_ns;           /* SAMPLES timings of bd_enqueue */
    uint64_t timed;
} worker;

static void *serve_requests(void *arg) {
    worker *w = arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (w->index + 1), next_at = now_ns();
    char line[256];
    while (now_ns() < w->until_ns) {
        if (w->interval_ns) { /* deadline pacing: one late request does not delay the rest */
            struct timespec at = {(time_t)(next_at / 1000000000u), (long)(next_at % 1000000000u)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
            next_at += w->interval_ns;
        }
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        uint64_t r = next_random(&rng);
        const char *route = PATHS[r % COUNT(PATHS)];
        char path[32];
        if (route[strlen(route) - 1] == '/') /* "/v1/users/" takes an id */
            snprintf(path, sizeof path, "%s%u", route, (unsigned)((r >> 40) % 10000));
        else
            snprintf(path, sizeof path, "%s", route);
        int len = snprintf(line, sizeof line,
                           "{\"ts\":%.3f,\"request_id\":\"%016" PRIx64 "\",\"worker\":%u,\"method\":\"%s\","
                           "\"path\":\"%s\",\"status\":%d,\"latency_ms\":%.2f}",
                           (double)wall.tv_sec + (double)wall.tv_nsec / 1e9, next_random(&rng), w->index,
                           METHODS[(r >> 8) % COUNT(METHODS)], path, STATUSES[(r >> 16) % COUNT(STATUSES)],
                           (double)((r >> 24) % 20000) / 100.0);
        /* The request handler's whole logging cost. A refusal (queue full) shows in stats. */
        uint64_t start = now_ns();
        bd_enqueue(w->dispatcher, (const uint8_t *)line, (size_t)len);
        uint32_t cost = (uint32_t)(now_ns() - start);
        uint64_t slot = w->timed < SAMPLES ? w->timed : next_random(&rng) % (w->timed + 1); /* reservoir */
        if (slot < SAMPLES) w->enqueue_ns[slot] = cost;
        w->timed++;
        atomic_fetch_add_explicit(&w->served, 1, memory_order_relaxed);
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* ---------------------------------------------------------------------------------------- */

static const char USAGE[] =
    "usage: gateway_demo [--duration S] [--threads N] [--rate R] [--ms-delay MS]\n"
    "                    [--max-batch-entries N] [--max-queue-entries N] [--max-attempts N]\n"
    "                    [--out FILE | --collector http://HOST:PORT/PATH]\n\n"
    "An API gateway shipping request logs, in batches, as NDJSON to a file or a log collector.\n\n"
    "  --duration S           seconds of traffic (default 5)\n"
    "  --threads N            gateway worker threads, at most 64 (default 4)\n"
    "  --rate R               requests per second, in total over all threads; 0 = unpaced (default 2000)\n"
    "  --ms-delay MS          the dispatcher's ms_delay (default 100)\n"
    "  --max-batch-entries N  batch size limit (default 0: none)\n"
    "  --max-queue-entries N  queue bound (default 100000)\n"
    "  --max-attempts N       tries per batch (default 1: no retry)\n"
    "  --out FILE             write the batches to FILE (default gateway_logs.ndjson)\n"
    "  --collector URL        POST each batch to URL instead\n";

static int usage_error(const char *what, const char *detail) {
    fprintf(stderr, "gateway_demo: %s %s\n\n%s", what, detail, USAGE);
    return 2;
}

int main(int argc, char **argv) {
    double duration = 5, rate = 2000;
    unsigned long threads = 4, ms_delay = 100, max_attempts = 1;
    unsigned long max_batch_entries = 0, max_queue_entries = 100000;
    const char *out = "gateway_logs.ndjson", *collector = NULL;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!value) return usage_error("missing value after", opt);
        i++;
        if (!strcmp(opt, "--duration")) duration = atof(value);
        else if (!strcmp(opt, "--rate")) rate = atof(value);
        else if (!strcmp(opt, "--threads")) threads = strtoul(value, NULL, 10);
        else if (!strcmp(opt, "--ms-delay")) ms_delay = strtoul(value, NULL, 10);
        else if (!strcmp(opt, "--max-batch-entries")) max_batch_entries = strtoul(value, NULL, 10);
        else if (!strcmp(opt, "--max-queue-entries")) max_queue_entries = strtoul(value, NULL, 10);
        else if (!strcmp(opt, "--max-attempts")) max_attempts = strtoul(value, NULL, 10);
        else if (!strcmp(opt, "--out")) out = value;
        else if (!strcmp(opt, "--collector")) collector = value;
        else return usage_error("unknown option", opt);
    }
    if (threads < 1 || threads > MAX_THREADS || duration < 0 || rate < 0)
        return usage_error("--threads must be 1 to 64, --duration and --rate not negative:", "");

    static shipper ship; /* static: it outlives a worker that a timed-out shutdown leaves running */
    long long before = 0;
    if (collector) {
        if (!parse_url(collector, &ship.collector)) return usage_error("not an http://HOST:PORT/PATH URL:", collector);
        before = collector_count(&ship.collector); /* a shared collector counts others too */
    } else if (!(ship.file = fopen(out, "w"))) {
        perror(out);
        return 1;
    }

    bd_options options;
    bd_options_init(&options);
    options.max_queue_entries = max_queue_entries; /* bounded: a dead collector cannot eat the memory */
    options.max_batch_entries = max_batch_entries;
    options.max_attempts = (uint32_t)max_attempts;
    bd_dispatcher *d = NULL;
    bd_status rc = bd_new(ship_batch, &ship, ms_delay, &options, &d);
    if (rc != BD_STATUS_OK) return usage_error("bd_new:", bd_status_str(rc)); /* e.g. --ms-delay 0 */

    printf("gateway (C, background-dispatcher %s): %lu threads for %g s, ", bd_version(), threads, duration);
    if (rate > 0) printf("%g requests/s in total", rate);
    else printf("unpaced");
    printf(", ms_delay %lu; %s %s\n", ms_delay, collector ? "collector" : "file", collector ? collector : out);
    uint64_t started = now_ns(), until = started + (uint64_t)(duration * 1e9);
    static worker workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (unsigned i = 0; i < threads; i++) {
        workers[i] = (worker){.dispatcher = d, .index = i, .until_ns = until,
                              .interval_ns = rate > 0 ? (uint64_t)(1e9 * (double)threads / rate) : 0,
                              .enqueue_ns = malloc(SAMPLES * sizeof(uint32_t))};
        if (!workers[i].enqueue_ns || pthread_create(&ids[i], NULL, serve_requests, &workers[i]) != 0) {
            fprintf(stderr, "cannot start worker %u\n", i);
            return 1;
        }
    }

    bool tty = isatty(STDOUT_FILENO); /* redraw one line on a terminal; a line per second in a log */
    uint64_t period_ns = tty ? 100000000u : 1000000000u;
    for (uint64_t now = now_ns(); now < until; now = now_ns()) {
        uint64_t wait = until - now < period_ns ? until - now : period_ns;
        nanosleep(&(struct timespec){(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)}, NULL);
        uint64_t served = 0;
        for (unsigned i = 0; i < threads; i++) served += atomic_load_explicit(&workers[i].served, memory_order_relaxed);
        bd_stats s;
        bd_stats_get(d, &s);
        printf("%s[%4.1f s] requests %8" PRIu64 "  enqueued %8" PRIu64 "  batches %5" PRIu64 "  queue depth %6" PRIu64
               "%s", tty ? "\r" : "", (double)(now_ns() - started) / 1e9, served, s.enqueued, s.batches,
               s.queued_entries + s.in_flight_entries, tty ? "" : "\n");
        fflush(stdout);
    }
    uint64_t served = 0, timed = 0;
    uint32_t *costs = malloc(threads * SAMPLES * sizeof(uint32_t));
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        served += workers[i].served;
        uint64_t kept = workers[i].timed < SAMPLES ? workers[i].timed : SAMPLES;
        if (costs) memcpy(costs + timed, workers[i].enqueue_ns, kept * sizeof(uint32_t));
        timed += kept;
        free(workers[i].enqueue_ns);
    }

    atomic_store(&ship.closing_ns, now_ns());
    rc = bd_shutdown(d, 10000); /* ship what is still queued, at most 10 s */
    bd_stats s;
    bd_stats_get(d, &s);
    if (rc != BD_STATUS_OK) { /* the worker may still be in ship_batch: leave `ship` alone */
        printf("\nshutdown: %s; %" PRIu64 " entries abandoned\n", bd_status_str(rc), s.abandoned);
        return 1;
    }
    bd_free(d); /* joins the dispatcher's thread: `ship` is ours again */

    uint64_t dropped = s.rejected + s.failed + s.evicted + s.abandoned;
    printf("%s\n", tty ? "\n" : "");
    printf("%-20s %" PRIu64 "\n", "requests served", served);
    printf("%-20s %" PRIu64 " (accepted; %" PRIu64 " rejected)\n", "entries enqueued", s.enqueued, s.rejected);
    printf("%-20s %" PRIu64 " (%" PRIu64 " entries dispatched, %" PRIu64 " failed)\n", "batches sent", s.batches,
           s.dispatched, s.failed);
    if (ship.calls)
        printf("%-20s mean %.1f, max %" PRIu64 "\n", "batch size", (double)ship.entries / (double)ship.calls,
               ship.max_batch);
    if (ship.gaps)
        printf("%-20s mean %.1f ms, min %.1f ms (ms_delay %lu)\n", "dispatch interval",
               (double)ship.gap_sum_ns / (double)ship.gaps / 1e6, (double)ship.gap_min_ns / 1e6, ms_delay);
    if (costs && timed) {
        qsort(costs, timed, sizeof(uint32_t), by_value);
        printf("%-20s p50 %.3f us, p99 %.3f us (with the clock reads)\n", "enqueue cost",
               costs[timed / 2] / 1e3, costs[timed * 99 / 100] / 1e3);
    }
    free(costs);
    printf("%-20s %" PRIu64 " (rejected %" PRIu64 ", failed %" PRIu64 ", evicted %" PRIu64 ", abandoned %" PRIu64
           ")\n", "dropped", dropped, s.rejected, s.failed, s.evicted, s.abandoned);

    long long received = -1; /* counted by the destination, not by us */
    if (collector) {
        long long after = before < 0 ? -1 : collector_count(&ship.collector);
        received = after < 0 ? -1 : after - before;
        if (received < 0) printf("%-20s unknown (no GET /stats beside %s)\n", "collector received", collector);
        else printf("%-20s %lld entries\n", "collector received", received);
    } else {
        fclose(ship.file);
        FILE *f = fopen(out, "r");
        received = 0;
        for (int c; f && (c = fgetc(f)) != EOF;) received += c == '\n';
        if (f) fclose(f);
        printf("%-20s %lld lines in %s\n", "file holds", received, out);
    }
    free(ship.body);
    if (received < 0) return dropped == 0 ? 0 : 1;
    if ((uint64_t)received == s.enqueued) {
        printf("OK: the %s received every entry the gateway enqueued\n", collector ? "collector" : "file");
        return 0;
    }
    printf("FAILED: %lld entries arrived, the gateway enqueued %" PRIu64 "\n", received, s.enqueued);
    return 1;
}
