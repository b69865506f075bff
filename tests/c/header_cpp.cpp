// The C header must compile as C++17 with strict warnings, survive a second inclusion (include
// guard), and link: calls a few functions through it.
#include "background_dispatcher.h"
#include "background_dispatcher.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#define CHECK(expr)                                                                   \
    do {                                                                              \
        if (!(expr)) {                                                                \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr); \
            std::exit(1);                                                             \
        }                                                                             \
    } while (0)

static_assert(std::is_same<std::underlying_type<bd_status>::type, uint32_t>::value,
              "bd_status is a uint32_t enum in C++");
static_assert(BD_NO_TIMEOUT == UINT64_MAX, "BD_NO_TIMEOUT");

static std::atomic<size_t> g_entries{0};
static std::atomic<int> g_freed{0};

// Plain static functions with C language linkage as callbacks (no lambdas).
extern "C" {
static int dispatch(void *user_data, const bd_batch *batch) {
    (void)user_data;
    g_entries += batch->count;
    return 0;
}

static void free_user_data(void *user_data) {
    (void)user_data;
    g_freed++;
}
}

int main() {
    CHECK(std::strcmp(bd_version(), BD_VERSION) == 0);
    CHECK(bd_status_str(BD_STATUS_OK) != nullptr);

    bd_options options;
    CHECK(bd_options_init(&options) == BD_STATUS_OK);
    CHECK(options.version == BD_OPTIONS_VERSION);
    CHECK(options.overflow == BD_OVERFLOW_DROP_NEWEST);
    options.user_data_free = free_user_data;

    bd_dispatcher *d = nullptr;
    CHECK(bd_new(dispatch, nullptr, 60000, &options, &d) == BD_STATUS_OK);
    CHECK(d != nullptr);
    const char text[] = "hello";
    CHECK(bd_enqueue(d, reinterpret_cast<const uint8_t *>(text), sizeof text - 1) ==
          BD_STATUS_OK);
    CHECK(bd_enqueue(d, nullptr, 0) == BD_STATUS_OK);
    CHECK(bd_flush(d, 10000) == BD_STATUS_OK);
    CHECK(g_entries == 2);
    bd_stats stats;
    CHECK(bd_stats_get(d, &stats) == BD_STATUS_OK);
    CHECK(stats.dispatched == 2);
    bd_free(d);
    CHECK(g_freed == 1);
    bd_free(nullptr);
    std::puts("PASS header_cpp");
    return 0;
}
