/*
 * consumer.c: a program that uses the *installed* C library the way a user's would, built by
 * tests/install/run.sh once through `pkg-config --cflags --libs background-dispatcher` and
 * through CMake's find_package(BackgroundDispatcher) (shared and static targets).
 *
 * It enqueues ENTRIES entries under a long window, flushes, and checks that every entry was
 * delivered intact; it also says which library file it runs with (from /proc/self/maps), so
 * the test can prove the installed copy was used and not the build tree's.
 *
 *   usage: consumer <label>     exit 0 and one summary line on success
 */
#define _POSIX_C_SOURCE 200809L
#include <background_dispatcher.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENTRIES 1000

static atomic_size_t delivered;
static atomic_size_t delivered_bytes;
static atomic_size_t batches;
static atomic_size_t malformed;

static int dispatch(void *user_data, const bd_batch *batch) {
    const char *label = user_data;
    size_t n = strlen(label);
    for (size_t i = 0; i < batch->count; i++) {
        const bd_entry *e = &batch->entries[i];
        if (e->len <= n || memcmp(e->data, label, n) != 0) {
            atomic_fetch_add(&malformed, 1);
        }
        atomic_fetch_add(&delivered_bytes, e->len);
    }
    atomic_fetch_add(&delivered, batch->count);
    atomic_fetch_add(&batches, 1);
    return 0;
}

/* The path of the mapped libbackground_dispatcher, or "(static)" if none is mapped. */
static void library_path(char *out, size_t size) {
    snprintf(out, size, "(static)");
    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) {
        snprintf(out, size, "(unknown: no /proc/self/maps)");
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, maps) != NULL) {
        char *path = strchr(line, '/');
        if (path != NULL && strstr(path, "libbackground_dispatcher") != NULL) {
            path[strcspn(path, "\n")] = '\0';
            snprintf(out, size, "%s", path);
            break;
        }
    }
    fclose(maps);
}

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "consumer %s: ", label);                                             \
        fprintf(stderr, __VA_ARGS__);                                                        \
        fputc('\n', stderr);                                                                 \
        return 1;                                                                            \
    } while (0)

int main(int argc, char **argv) {
    const char *label = argc > 1 ? argv[1] : "consumer";
    if (strcmp(bd_version(), BD_VERSION) != 0) {
        FAIL("library version %s but header %s", bd_version(), BD_VERSION);
    }
    bd_options options;
    bd_status s = bd_options_init(&options);
    if (s != BD_STATUS_OK) {
        FAIL("bd_options_init: %s", bd_status_str(s));
    }
    options.max_batch_entries = 100;
    bd_dispatcher *d = NULL;
    s = bd_new(dispatch, (void *)label, 60000, &options, &d);
    if (s != BD_STATUS_OK) {
        FAIL("bd_new: %s", bd_status_str(s));
    }
    size_t sent_bytes = 0;
    for (int i = 0; i < ENTRIES; i++) {
        char entry[128];
        int len = snprintf(entry, sizeof entry, "%s:%d", label, i);
        s = bd_enqueue(d, (const uint8_t *)entry, (size_t)len);
        if (s != BD_STATUS_OK) {
            FAIL("bd_enqueue: %s", bd_status_str(s));
        }
        sent_bytes += (size_t)len;
    }
    s = bd_flush(d, 30000);
    if (s != BD_STATUS_OK) {
        FAIL("bd_flush: %s", bd_status_str(s));
    }
    bd_stats stats;
    s = bd_stats_get(d, &stats);
    if (s != BD_STATUS_OK) {
        FAIL("bd_stats_get: %s", bd_status_str(s));
    }
    bd_free(d);
    if (atomic_load(&delivered) != ENTRIES || stats.dispatched != ENTRIES ||
        atomic_load(&delivered_bytes) != sent_bytes || atomic_load(&malformed) != 0) {
        FAIL("sent %d entries (%zu bytes), delivered %zu (%zu bytes, %zu malformed), "
             "stats.dispatched %llu",
             ENTRIES, sent_bytes, atomic_load(&delivered), atomic_load(&delivered_bytes),
             atomic_load(&malformed), (unsigned long long)stats.dispatched);
    }
    char lib[4096];
    library_path(lib, sizeof lib);
    printf("%s: bd_version %s, %d entries enqueued, %zu delivered (%zu bytes) in %zu batches; "
           "library %s\n",
           label, bd_version(), ENTRIES, atomic_load(&delivered), atomic_load(&delivered_bytes),
           atomic_load(&batches), lib);
    return 0;
}
