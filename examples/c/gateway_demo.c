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
 * Content-Length, `Connection: close`, 5 s for the whole request, and only `http://` URLs
 * (an IPv6 host in brackets: http://[::1]:8080/logs).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    bool bracketed; /* an IPv6 literal: `[::1]` in the URL and the Host header, `::1` for getaddrinfo */
} url;

/* http://HOST[:PORT][/PATH] or http://[IPV6]:PORT/PATH. Refuses (rather than truncates) a part
 * too long for its buffer: a cut path would POST to another resource. */
static bool parse_url(const char *text, url *u) {
    if (strncmp(text, "http://", 7) != 0) return false;
    const char *host = text + 7, *path = strchr(host, '/');
    const char *end = path ? path : host + strlen(host), *host_end, *colon;
    u->bracketed = *host == '[';
    if (u->bracketed) {
        host++;
        host_end = memchr(host, ']', (size_t)(end - host));
        if (!host_end) return false;
        colon = host_end + 1 < end ? host_end + 1 : NULL;
        if (colon && *colon != ':') return false; /* junk between `]` and the port */
    } else {
        colon = memchr(host, ':', (size_t)(end - host));
        host_end = colon ? colon : end;
    }
    size_t host_len = (size_t)(host_end - host);
    size_t port_len = colon ? (size_t)(end - colon - 1) : 0;
    if (host_len == 0 || host_len >= sizeof u->host || (colon && port_len == 0) || port_len >= sizeof u->port)
        return false;
    if (path && strlen(path) >= sizeof u->path) return false;
    if (colon) { /* digits only, 1 to 65535: getaddrinfo would take a service name, too */
        unsigned long port = 0;
        for (const char *c = colon + 1; c < end; c++) {
            if (*c < '0' || *c > '9') return false;
            port = port * 10 + (unsigned long)(*c - '0');
        }
        if (port < 1 || port > 65535) return false;
    }
    snprintf(u->host, sizeof u->host, "%.*s", (int)host_len, host);
    snprintf(u->port, sizeof u->port, "%.*s", (int)port_len, colon ? colon + 1 : "80");
    snprintf(u->path, sizeof u->path, "%s", path ? path : "/");
    return true;
}

/* Milliseconds until `deadline_ns`, rounded up (0: it has passed), for poll(). */
static int remaining_ms(uint64_t deadline_ns) {
    uint64_t now = now_ns();
    if (now >= deadline_ns) return 0;
    uint64_t ms = (deadline_ns - now + 999999u) / 1000000u;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* Waits until `fd` is ready for `events`, or the deadline (false, errno ETIMEDOUT). A signal
 * does not end the wait early. */
static bool wait_ready(int fd, short events, uint64_t deadline_ns) {
    for (;;) {
        int ms = remaining_ms(deadline_ns);
        struct pollfd p = {.fd = fd, .events = events};
        int n = ms > 0 ? poll(&p, 1, ms) : 0;
        if (n > 0) return true; /* ready, or an error that the next call reports */
        if (n == 0) {
            errno = ETIMEDOUT;
            return false;
        }
        if (errno != EINTR) return false;
    }
}

/* A non-blocking connection to one of `host`'s addresses, tried in getaddrinfo's order:
 * `localhost` may resolve to ::1 first while the collector listens on 127.0.0.1 only. */
static int connect_any(const url *u, uint64_t deadline_ns, const char **error) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *addrs;
    if (getaddrinfo(u->host, u->port, &hints, &addrs) != 0) {
        *error = "cannot resolve the host";
        return -1;
    }
    int fd = -1;
    *error = "cannot connect";
    for (const struct addrinfo *a = addrs; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        int flags = fcntl(fd, F_GETFL);
        bool ok = flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
        /* EINTR leaves a connect in progress, like EINPROGRESS: poll for its outcome. */
        if (ok && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            int err = 0;
            socklen_t err_len = sizeof err;
            ok = (errno == EINPROGRESS || errno == EINTR) && wait_ready(fd, POLLOUT, deadline_ns) &&
                 getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) == 0 && err == 0;
            if (!ok && remaining_ms(deadline_ns) == 0) *error = "timed out connecting";
        }
        if (!ok) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(addrs);
    return fd;
}

static bool send_all(int fd, const char *data, size_t len, uint64_t deadline_ns) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL); /* a closed peer is an error, not SIGPIPE */
        if (n < 0 && (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK) &&
                                         wait_ready(fd, POLLOUT, deadline_ns))))
            continue;
        if (n <= 0) return false;
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* Sends `method path` with `body`; returns the status code (-1 if none, `*error` says why) and
 * copies the start of the response body, NUL-terminated, into `reply`. The whole request,
 * the connection included, takes at most IO_TIMEOUT_S: a dead or stalled collector cannot
 * hold the dispatcher's thread for longer. */
static int http_request(const url *u, const char *method, const char *path, const char *body, size_t body_len,
                        char *reply, size_t reply_cap, const char **error) {
    uint64_t deadline = now_ns() + IO_TIMEOUT_S * 1000000000ull;
    char head[1024], response[4096];
    int head_len = snprintf(head, sizeof head,
                            "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nContent-Type: application/x-ndjson\r\n"
                            "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                            method, path, u->bracketed ? "[" : "", u->host, u->bracketed ? "]" : "", u->port,
                            body_len);
    if (head_len < 0 || head_len >= (int)sizeof head) {
        *error = "request head too long";
        return -1;
    }
    int fd = connect_any(u, deadline, error);
    if (fd < 0) return -1;
    size_t got = 0;
    bool complete = false; /* the server closed the connection, or we have all we keep */
    if (send_all(fd, head, (size_t)head_len, deadline) && send_all(fd, body, body_len, deadline)) {
        while (!complete) {
            ssize_t n = recv(fd, response + got, sizeof response - 1 - got, 0);
            if (n > 0) got += (size_t)n;
            else if (n < 0 && (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK) &&
                                                  wait_ready(fd, POLLIN, deadline))))
                continue;
            else if (n < 0) break; /* reset, or the deadline */
            complete = n == 0 || got == sizeof response - 1;
        }
    }
    bool timed_out = remaining_ms(deadline) == 0;
    close(fd);
    response[got] = '\0';
    int status = -1;
    if (!complete || sscanf(response, "HTTP/1.%*d %d", &status) != 1) {
        *error = timed_out ? "timed out" : got ? "malformed response" : "no response";
        return -1;
    }
    const char *content = strstr(response, "\r\n\r\n");
    snprintf(reply, reply_cap, "%s", content ? content + 4 : "");
    return status;
}

/* The entry count of a collector that serves GET /stats (the Python demo's), or -1. A reply
 * without a well-formed count is -1 too: a collector's bug is no reason to crash. */
static long long collector_count(const url *u) {
    char path[sizeof u->path + 8], reply[512];
    const char *error, *entries, *colon;
    snprintf(path, sizeof path, "%.*s/stats", (int)(strrchr(u->path, '/') - u->path), u->path);
    if (http_request(u, "GET", path, "", 0, reply, sizeof reply, &error) != 200 ||
        !(entries = strstr(reply, "\"entries\"")) || !(colon = strchr(entries, ':')))
        return -1;
    char *end;
    errno = 0;
    long long count = strtoll(colon + 1, &end, 10);
    return end == colon + 1 || errno || count < 0 ? -1 : count;
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
    const char *error;
    int status = http_request(&s->collector, "POST", s->collector.path, s->body, len, reply, sizeof reply, &error);
    if (status / 100 == 2) return 0;
    if (status < 0) fprintf(stderr, "batch of %zu entries failed: %s\n", batch->count, error);
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
            if (next_at >= w->until_ns) break; /* a slow --rate: do not sleep past the end */
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

#define MAX_DURATION_S 86400.0 /* a day: and duration * 1e9 ns fits a uint64_t */
#define MAX_RATE 1e9           /* a request per ns: interval_ns is at least 1 */
#define MAX_MS_DELAY 86400000u /* a day */

/* Option values are parsed whole: atof("5s") is 5 and strtoul("-1") is ULONG_MAX, which would
 * run something else than what was asked. */
static bool parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *out) {
    if (*text < '0' || *text > '9') return false; /* no sign, no blank: strtoull takes both */
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || value < min || value > max) return false;
    *out = value;
    return true;
}

static bool parse_real(const char *text, double min, double max, double *out) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    /* ERANGE too: "1e-400" reads as 0, and --rate 0 means unpaced. isfinite: NaN fails every
     * comparison, so `nan` would pass the range check below. */
    if (end == text || *end || errno || !isfinite(value) || value < min || value > max) return false;
    *out = value;
    return true;
}

/* Ends the process after a bd_shutdown that timed out (or a failed start): the dispatcher's
 * thread may still be in ship_batch, writing to `ship.file`, and exit() would close that FILE
 * under it. _exit() skips the stdio cleanup, so flush what we printed first. */
static _Noreturn void abandon(void) {
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

int main(int argc, char **argv) {
    double duration = 5, rate = 2000;
    uint64_t threads = 4, ms_delay = 100, max_attempts = 1;
    uint64_t max_batch_entries = 0, max_queue_entries = 100000;
    const char *out = "gateway_logs.ndjson", *collector = NULL;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if (!value) return usage_error("missing value after", opt);
        i++;
        const char *expected = NULL; /* set when `value` is not a valid value of `opt` */
        if (!strcmp(opt, "--duration")) {
            if (!parse_real(value, 0, MAX_DURATION_S, &duration)) expected = "seconds, from 0 to 86400";
        } else if (!strcmp(opt, "--rate")) {
            if (!parse_real(value, 0, MAX_RATE, &rate)) expected = "requests per second, from 0 to 1e9";
        } else if (!strcmp(opt, "--threads")) {
            if (!parse_uint(value, 1, MAX_THREADS, &threads)) expected = "an integer from 1 to 64";
        } else if (!strcmp(opt, "--ms-delay")) {
            if (!parse_uint(value, 1, MAX_MS_DELAY, &ms_delay)) expected = "milliseconds, from 1 to 86400000";
        } else if (!strcmp(opt, "--max-batch-entries")) {
            if (!parse_uint(value, 0, SIZE_MAX, &max_batch_entries)) expected = "an integer, 0 or more";
        } else if (!strcmp(opt, "--max-queue-entries")) {
            if (!parse_uint(value, 0, SIZE_MAX, &max_queue_entries)) expected = "an integer, 0 or more";
        } else if (!strcmp(opt, "--max-attempts")) {
            if (!parse_uint(value, 1, UINT32_MAX, &max_attempts)) expected = "an integer from 1 to 4294967295";
        } else if (!strcmp(opt, "--out")) {
            out = value;
        } else if (!strcmp(opt, "--collector")) {
            collector = value;
        } else {
            return usage_error("unknown option", opt);
        }
        if (expected) {
            fprintf(stderr, "gateway_demo: bad value for %s: '%s' (expected %s)\n\n%s", opt, value, expected, USAGE);
            return 2;
        }
    }

    static shipper ship; /* static: it outlives a worker that a timed-out shutdown leaves running */
    long long before = 0;
    if (collector) {
        if (!parse_url(collector, &ship.collector))
            return usage_error("not an http://HOST[:PORT]/PATH URL (or a part too long):", collector);
        before = collector_count(&ship.collector); /* a shared collector counts others too */
    } else if (!(ship.file = fopen(out, "w"))) {
        perror(out);
        return 1;
    }

    bd_options options;
    bd_options_init(&options);
    options.max_queue_entries = (size_t)max_queue_entries; /* bounded: a dead collector cannot eat the memory */
    options.max_batch_entries = (size_t)max_batch_entries;
    options.max_attempts = (uint32_t)max_attempts;
    bd_dispatcher *d = NULL;
    bd_status rc = bd_new(ship_batch, &ship, ms_delay, &options, &d);
    if (rc != BD_STATUS_OK) return usage_error("bd_new:", bd_status_str(rc)); /* e.g. --ms-delay 0 */

    printf("gateway (C, background-dispatcher %s): %" PRIu64 " threads for %g s, ", bd_version(), threads, duration);
    if (rate > 0) printf("%g requests/s in total", rate);
    else printf("unpaced");
    printf(", ms_delay %" PRIu64 "; %s %s\n", ms_delay, collector ? "collector" : "file", collector ? collector : out);
    /* In range: duration <= 86400 s, and 1e9 * threads / rate >= 1 ns, capped at the run's
     * length (a slower pace serves one request per worker, at the start). */
    uint64_t duration_ns = (uint64_t)(duration * 1e9), started = now_ns(), until = started + duration_ns;
    double interval = rate > 0 ? 1e9 * (double)threads / rate : 0;
    uint64_t interval_ns = interval > (double)duration_ns ? duration_ns + 1 : (uint64_t)interval;
    static worker workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    for (unsigned i = 0; i < threads; i++) {
        workers[i] = (worker){.dispatcher = d, .index = i, .until_ns = until,
                              .interval_ns = interval_ns,
                              .enqueue_ns = malloc(SAMPLES * sizeof(uint32_t))};
        if (!workers[i].enqueue_ns || pthread_create(&ids[i], NULL, serve_requests, &workers[i]) != 0) {
            fprintf(stderr, "cannot start worker %u\n", i);
            abandon(); /* the workers started use `d`, and its thread `ship` */
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
        abandon();
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
        printf("%-20s mean %.1f ms, min %.1f ms (ms_delay %" PRIu64 ")\n", "dispatch interval",
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
        bool closed = fclose(ship.file) == 0; /* its last buffered bytes are written here */
        FILE *f = closed ? fopen(out, "r") : NULL;
        if (!f) {
            perror(out); /* a file we cannot read back proves nothing */
            free(ship.body);
            return 1;
        }
        received = 0;
        for (int c; (c = fgetc(f)) != EOF;) received += c == '\n';
        fclose(f);
        printf("%-20s %lld lines in %s\n", "file holds", received, out);
    }
    free(ship.body);
    /* Only a run that shipped something, all of it, and had it counted at the other end, is OK. */
    if (s.enqueued == 0) {
        printf("FAILED: no entry was enqueued, so the run proves nothing (is --duration 0?)\n");
        return 1;
    }
    if (s.dispatched != s.enqueued) {
        printf("FAILED: the dispatcher dispatched %" PRIu64 " entries of the %" PRIu64 " it accepted\n", s.dispatched,
               s.enqueued);
        return 1;
    }
    if (received < 0) return dropped == 0 ? 0 : 1; /* a collector without /stats: our count is all we have */
    if ((uint64_t)received == s.enqueued) {
        printf("OK: the %s received every entry the gateway enqueued\n", collector ? "collector" : "file");
        return 0;
    }
    printf("FAILED: %lld entries arrived, the gateway enqueued %" PRIu64 "\n", received, s.enqueued);
    return 1;
}
