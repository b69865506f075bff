/*
 * The broken control of the memory checkers: a dispatch callback that keeps pointers into its
 * batch (the `entries` array and an entry's bytes) and a read through them later. The header
 * says they are valid only during the call, so this program is wrong on purpose, and its ctest
 * entries (asan/control_read_after_free, memcheck/control_read_after_free; no plain/ one) pass
 * only if AddressSanitizer reports "heap-use-after-free", or valgrind "Invalid read", in
 * read_stashed() itself. A crash for any other reason matches neither, and fails.
 *
 * Why the read comes after bd_free: between batches the library keeps its buffers (the swapped
 * shard arena becomes the next batch's buffer), so a read right after the callback returns
 * touches memory that is still allocated: wrong, but invisible to both checkers (checked when
 * this test was written: no report). bd_free frees every buffer, so a read after it is a read of
 * freed heap memory, which both report every time. The read is through `volatile` so that the
 * compiler keeps it.
 */
#include "test_util.h"

typedef struct stash {
    const bd_entry *entries; /* batch->entries, kept past the call: the bug */
    const uint8_t *data;     /* entries[0].data, likewise */
    size_t len;
    atomic_int calls;
} stash;

static int keep_pointers(void *user_data, const bd_batch *b) {
    stash *s = user_data;
    if (atomic_load(&s->calls) == 0) {
        s->entries = b->entries;
        s->data = b->entries[0].data;
        s->len = b->entries[0].len;
    }
    atomic_fetch_add(&s->calls, 1);
    return 0;
}

/* Reads what the stashed pointers point at; noinline so that reports name it. */
__attribute__((noinline)) static unsigned read_stashed(const stash *s) {
    unsigned sum = 0;
    const volatile uint8_t *data = s->data;
    for (size_t i = 0; i < s->len; i++) {
        sum += data[i];
    }
    const volatile size_t *len = &s->entries[0].len;
    sum += (unsigned)*len;
    return sum;
}

static void control_read_after_free(void) {
    static stash s;
    memset(&s, 0, sizeof s);
    atomic_init(&s.calls, 0);
    bd_dispatcher *d = NULL;
    CHECK_STATUS(bd_new(keep_pointers, &s, 10, NULL, &d), BD_STATUS_OK);
    uint8_t entry[64];
    memset(entry, 0x5a, sizeof entry);
    CHECK_STATUS(bd_enqueue(d, entry, sizeof entry), BD_STATUS_OK);
    CHECK_STATUS(bd_shutdown(d, T(10000)), BD_STATUS_OK);
    CHECK_EQ(atomic_load(&s.calls), 1);
    CHECK(s.data != NULL && s.len == sizeof entry);
    bd_free(d); /* frees the batch buffers the stash points into */
    printf("control_read_after_free: reading %zu bytes through a pointer kept from a batch, "
           "after bd_free; the memory checker must report it\n",
           s.len);
    unsigned sum = read_stashed(&s);
    printf("control_read_after_free: read done (sum %u); no report above means the checker "
           "missed it\n",
           sum);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"control_read_after_free", control_read_after_free},
    };
    return RUN_TESTS(tests, argc, argv);
}
