// Tests of the C++17 wrapper include/background_dispatcher.hpp: construction errors, delivery of
// string_view entries, callables (captures, move-only, throwing), moves, stats, close, and what
// the destructor does with queued entries (delivers them, within a bounded close), and
// concurrent use from several threads.
//
// One executable, one test per argv[1] (like the C suites); each prints its figures. Waits are
// on condition variables with generous deadlines, never sleeps; a watchdog turns a hang into a
// failure. Built plain and with ASan+UBSan by CMakeLists.txt, and run under valgrind when found.
#include "background_dispatcher.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

#define CHECK(expr)                                                                              \
    do {                                                                                         \
        if (!(expr)) {                                                                           \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr);       \
            std::fflush(stdout);                                                                 \
            std::_Exit(1);                                                                       \
        }                                                                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                                           \
    do {                                                                                         \
        auto check_a_ = static_cast<unsigned long long>(a);                                      \
        auto check_b_ = static_cast<unsigned long long>(b);                                      \
        if (check_a_ != check_b_) {                                                              \
            std::fprintf(stderr, "%s:%d: %s == %s: %llu != %llu\n", __FILE__, __LINE__, #a, #b, \
                         check_a_, check_b_);                                                    \
            std::fflush(stdout);                                                                 \
            std::_Exit(1);                                                                       \
        }                                                                                        \
    } while (0)

#define CHECK_STATUS(expr, expected)                                                             \
    do {                                                                                         \
        bd::Status check_s_ = (expr);                                                            \
        if (check_s_ != (expected)) {                                                            \
            std::fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__,    \
                         #expr, bd::to_string(check_s_), bd::to_string(expected));               \
            std::fflush(stdout);                                                                 \
            std::_Exit(1);                                                                       \
        }                                                                                        \
    } while (0)

// The type's promises, at compile time.
static_assert(!std::is_copy_constructible_v<bd::Dispatcher>, "move-only");
static_assert(!std::is_copy_assignable_v<bd::Dispatcher>, "move-only");
static_assert(std::is_nothrow_move_constructible_v<bd::Dispatcher>, "noexcept move");
static_assert(std::is_nothrow_move_assignable_v<bd::Dispatcher>, "noexcept move");
static_assert(std::is_nothrow_destructible_v<bd::Dispatcher>, "never throws when destroyed");
static_assert(std::is_same_v<std::iterator_traits<bd::Batch::iterator>::iterator_category,
                             std::random_access_iterator_tag>,
              "Batch is a random-access range");
static_assert(std::is_base_of_v<std::runtime_error, bd::Error>, "bd::Error is a runtime_error");

namespace {

std::atomic<std::size_t> g_function_entries{0};

// A plain function works as the callable too (no captures, no allocation of state of its own).
bool count_entries(const bd::Batch &batch) {
    g_function_entries += batch.size();
    return true;
}

// 10 under valgrind (BD_TEST_SLOW=1), as in test_util.h.
std::chrono::milliseconds T(std::chrono::milliseconds ms) {
    const char *s = std::getenv("BD_TEST_SLOW");
    bool slow = s != nullptr && s[0] != '\0' && std::strcmp(s, "0") != 0;
    return slow ? ms * 10 : ms;
}

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Everything a callable saw, guarded by one mutex; waits are bounded.
struct Recorder {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::string> entries;
    std::vector<std::size_t> batch_sizes;
    std::vector<std::pair<bd::DropReason, std::size_t>> drops;

    bool record(const bd::Batch &batch) {
        std::lock_guard<std::mutex> lock(mu);
        for (std::string_view e : batch) {
            entries.emplace_back(e);
        }
        batch_sizes.push_back(batch.size());
        cv.notify_all();
        return true;
    }

    void record_drop(const bd::Batch &batch, bd::DropReason reason) {
        std::lock_guard<std::mutex> lock(mu);
        drops.emplace_back(reason, batch.size());
        cv.notify_all();
    }

    std::size_t count() {
        std::lock_guard<std::mutex> lock(mu);
        return entries.size();
    }

    std::size_t dropped() {
        std::lock_guard<std::mutex> lock(mu);
        std::size_t n = 0;
        for (auto &d : drops) {
            n += d.second;
        }
        return n;
    }
};

// Something the dispatch callable waits on until the test opens it (bounded).
struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    bool entered = false;

    void wait_open() {
        std::unique_lock<std::mutex> lock(mu);
        entered = true;
        cv.notify_all();
        CHECK(cv.wait_for(lock, T(30s), [&] { return open; }));
    }
    bool wait_entered(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mu);
        return cv.wait_for(lock, timeout, [&] { return entered; });
    }
    void release() {
        std::lock_guard<std::mutex> lock(mu);
        open = true;
        cv.notify_all();
    }
};

bd::Stats checked_stats(const bd::Dispatcher &d) {
    bd::Stats s = d.stats();
    // The invariant the C header promises, checked on every snapshot the tests take.
    CHECK_EQ(s.enqueued, s.dispatched + s.failed + s.evicted + s.abandoned + s.queued_entries +
                             s.in_flight_entries);
    return s;
}

// ------------------------------------------------------------------------------------------

void construction_errors() {
    auto dispatch = [](const bd::Batch &) { return true; };
    struct Case {
        const char *what;
        std::chrono::milliseconds ms_delay;
        bd::Options options;
    };
    std::vector<Case> cases;
    cases.push_back({"ms_delay 0", 0ms, {}});
    cases.push_back({"max_attempts 0", 10ms, {}});
    cases.back().options.max_attempts = 0;
    cases.push_back({"batch above queue", 10ms, {}});
    cases.back().options.max_queue_entries = 10;
    cases.back().options.max_batch_entries = 11;
    cases.push_back({"backoff max below backoff", 10ms, {}});
    cases.back().options.retry_backoff = 500ms;
    cases.back().options.retry_backoff_max = 100ms;
    cases.push_back({"unknown overflow", 10ms, {}});
    cases.back().options.overflow = static_cast<bd::Overflow>(77);
    cases.push_back({"negative block_timeout", 10ms, {}});
    cases.back().options.block_timeout = -1ms;

    // A callable owning a shared_ptr: after a failed construction it must have been destroyed
    // (use_count back to 1), neither leaked nor freed twice.
    auto token = std::make_shared<int>(7);
    for (const Case &c : cases) {
        bool thrown = false;
        try {
            bd::Dispatcher d([token](const bd::Batch &) { return *token == 7; }, c.ms_delay,
                             c.options);
        } catch (const bd::Error &e) {
            thrown = true;
            CHECK_STATUS(e.status(), bd::Status::invalid_options);
            CHECK(std::strstr(e.what(), bd::to_string(bd::Status::invalid_options)) != nullptr);
            std::printf("  %-26s -> bd::Error %s\n", c.what, e.what());
        }
        CHECK(thrown);
        CHECK_EQ(token.use_count(), 1);
    }
    // Defaults from bd_options_init, so the default Options are valid as they are.
    bd::Options defaults;
    bd_options c;
    CHECK(bd_options_init(&c) == BD_STATUS_OK);
    CHECK_EQ(defaults.max_queue_bytes, c.max_queue_bytes);
    CHECK_EQ(defaults.block_timeout.count(), c.block_timeout_ms);
    CHECK_EQ(defaults.max_attempts, c.max_attempts);
    CHECK_EQ(defaults.retry_backoff_max.count(), c.retry_backoff_max_ms);
    CHECK(defaults.overflow == bd::Overflow::drop_newest);
    bd::Dispatcher ok(dispatch, 10ms, defaults);
    CHECK(static_cast<bool>(ok));
    std::printf("  %zu invalid option sets refused with INVALID_OPTIONS, callable freed each time; "
                "defaults accepted\n",
                cases.size());
}

void delivery() {
    Recorder rec;
    // A long window: only flush() delivers, so the test sees exactly what flush promises.
    bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, 60000ms);
    const std::string binary("a\0b", 3);
    std::vector<std::string> sent = {"first", "", binary, std::string(100000, 'x')};
    for (int i = 0; i < 1000; i++) {
        sent.push_back("entry-" + std::to_string(i));
    }
    std::size_t bytes = 0;
    for (const std::string &s : sent) {
        CHECK_STATUS(d.enqueue(std::string_view(s)), bd::Status::ok);
        bytes += s.size();
    }
    // The other overloads: const char* (via string_view) and (pointer, length).
    CHECK_STATUS(d.enqueue("literal"), bd::Status::ok);
    const unsigned char raw[] = {0xde, 0xad, 0xbe, 0xef};
    CHECK_STATUS(d.enqueue(raw, sizeof raw), bd::Status::ok);
    CHECK_STATUS(d.enqueue(nullptr, 0), bd::Status::ok);
    sent.emplace_back("literal");
    sent.emplace_back(reinterpret_cast<const char *>(raw), sizeof raw);
    sent.emplace_back();
    bytes += 7 + 4;

    auto start = Clock::now();
    CHECK(d.flush(T(10000ms)));
    double flush_ms = ms_since(start);
    CHECK_EQ(rec.count(), sent.size());
    CHECK(rec.entries == sent); // contents, order, embedded NUL, empty entries
    bd::Stats s = checked_stats(d);
    CHECK_EQ(s.enqueued, sent.size());
    CHECK_EQ(s.dispatched, sent.size());
    std::printf("  %zu entries (%zu bytes, incl. empty, binary and a 100 kB one) delivered "
                "intact in %zu batch(es); flush took %.2f ms\n",
                sent.size(), bytes, rec.batch_sizes.size(), flush_ms);
}

void batch_view() {
    // The Batch range: iterators, operator[], size(), bytes(), attempt(), std algorithms.
    std::mutex mu;
    std::vector<std::string> checks;
    bool all_ok = true;
    bd::Dispatcher d(
        [&](const bd::Batch &b) {
            std::lock_guard<std::mutex> lock(mu);
            std::size_t bytes = 0;
            for (std::size_t i = 0; i < b.size(); i++) {
                bytes += b[i].size();
            }
            all_ok = all_ok && !b.empty() && bytes == b.bytes() && b.attempt() == 1 &&
                     static_cast<std::size_t>(std::distance(b.begin(), b.end())) == b.size() &&
                     *(b.begin() + 1) == b[1] && b.end() - b.begin() == 3 &&
                     std::find(b.begin(), b.end(), "two") != b.end() &&
                     std::is_sorted(b.begin(), b.end()) && b.c_batch().count == b.size();
            checks.emplace_back(std::to_string(b.size()) + " entries, " +
                                std::to_string(b.bytes()) + " bytes");
            return true;
        },
        60000ms);
    for (const char *e : {"one", "three", "two"}) {
        CHECK_STATUS(d.enqueue(e), bd::Status::ok);
    }
    CHECK(d.flush(T(10000ms)));
    std::lock_guard<std::mutex> lock(mu);
    CHECK_EQ(checks.size(), 1);
    CHECK(all_ok);
    std::printf("  one batch of %s: iterators, operator[], bytes(), attempt() agree\n",
                checks[0].c_str());
}

void lambda_captures() {
    // Captures by reference, by value and by move (a move-only callable: std::function could
    // not hold it), all reachable from the dispatcher's thread.
    std::mutex mu;
    std::size_t total_len = 0;
    std::string prefix = "req-";
    auto owned = std::make_unique<std::vector<std::string>>();
    std::vector<std::string> *seen = owned.get();
    std::thread::id caller = std::this_thread::get_id();
    bool other_thread = true;
    {
        bd::Dispatcher d(
            [&mu, &total_len, &other_thread, prefix, caller, owned = std::move(owned)](
                const bd::Batch &b) {
                std::lock_guard<std::mutex> lock(mu);
                other_thread = other_thread && std::this_thread::get_id() != caller;
                for (std::string_view e : b) {
                    if (e.substr(0, prefix.size()) != prefix) {
                        return false;
                    }
                    owned->emplace_back(e);
                    total_len += e.size();
                }
                return true;
            },
            60000ms);
        for (int i = 0; i < 100; i++) {
            CHECK_STATUS(d.enqueue("req-" + std::to_string(i)), bd::Status::ok);
        }
        CHECK(d.flush(T(10000ms)));
        bd::Stats s = checked_stats(d);
        CHECK_EQ(s.dispatched, 100);
        std::lock_guard<std::mutex> lock(mu);
        CHECK_EQ(seen->size(), 100);
        CHECK((*seen)[99] == "req-99");
        CHECK(other_thread);
        std::printf("  100 entries through a lambda with reference, value and move-only captures "
                    "(%zu bytes), on the dispatcher's thread\n",
                    total_len);
    }
    // `seen` pointed into the callable, which the destructor freed; ASan checks nothing uses it.

    bd::Dispatcher by_function(count_entries, 60000ms);
    bd::Dispatcher by_pointer(&count_entries, 60000ms);
    CHECK_STATUS(by_function.enqueue("f"), bd::Status::ok);
    CHECK_STATUS(by_pointer.enqueue("p"), bd::Status::ok);
    CHECK(by_function.flush(T(10000ms)) && by_pointer.flush(T(10000ms)));
    CHECK_EQ(g_function_entries.load(), 2);
    std::printf("  a plain function, by name and by pointer: 2 entries delivered\n");
}

void throwing_callable() {
    Recorder rec;
    bd::Options options;
    options.max_attempts = 2;
    options.retry_backoff = 1ms;
    options.retry_backoff_max = 1ms;
    options.on_drop = [&rec](const bd::Batch &b, bd::DropReason r) { rec.record_drop(b, r); };
    int calls = 0; // only the dispatcher's thread touches it
    bd::Dispatcher d(
        [&calls](const bd::Batch &b) -> bool {
            calls++;
            if (b[0] == "int") {
                throw 42; // not even a std::exception
            }
            throw std::runtime_error("collector unreachable");
        },
        10ms, options); // retries wait for the next window too: keep it short
    CHECK_STATUS(d.enqueue("a"), bd::Status::ok);
    CHECK_STATUS(d.enqueue("b"), bd::Status::ok);
    CHECK(d.flush(T(10000ms))); // flush waits for "dispatched or dropped": failed counts
    CHECK_STATUS(d.enqueue("int"), bd::Status::ok);
    CHECK(d.flush(T(10000ms)));
    bd::Stats s = checked_stats(d);
    CHECK_EQ(s.failed, 3);
    CHECK_EQ(s.dispatched, 0);
    // Each batch tried twice ("a" and "b" together unless a window ended between them).
    CHECK(s.retries >= 2);
    CHECK_EQ(s.batches, 2 * s.retries);
    CHECK_EQ(static_cast<std::uint64_t>(calls), s.batches);
    const std::uint64_t exceptions = d.callback_exceptions();
    CHECK_EQ(exceptions, s.batches);
    const int throwing_calls = calls;
    CHECK_EQ(rec.dropped(), 3);
    const std::size_t dropped = rec.dropped();
    {
        std::lock_guard<std::mutex> lock(rec.mu);
        for (auto &drop : rec.drops) {
            CHECK(drop.first == bd::DropReason::failed);
        }
    }
    // The dispatcher still works after its callable threw.
    CHECK_STATUS(d.enqueue("c"), bd::Status::ok);
    CHECK(d.flush(T(10000ms)));
    CHECK_EQ(d.stats().failed, 4);
    // A throwing on_drop is caught as well.
    bd::Options throwing_drop;
    throwing_drop.on_drop = [](const bd::Batch &, bd::DropReason) { throw std::logic_error("x"); };
    bd::Dispatcher d2([](const bd::Batch &) { return false; }, 60000ms, throwing_drop);
    CHECK_STATUS(d2.enqueue("z"), bd::Status::ok);
    CHECK(d2.flush(T(10000ms)));
    CHECK_EQ(d2.stats().failed, 1);
    CHECK_EQ(d2.callback_exceptions(), 1);
    std::printf("  %d callable calls threw (std::runtime_error and int): %llu entries failed, "
                "%zu reached on_drop(failed), %llu exceptions counted; a throwing on_drop "
                "was contained too\n",
                throwing_calls, static_cast<unsigned long long>(s.failed), dropped,
                static_cast<unsigned long long>(exceptions));
}

void move_semantics() {
    Recorder rec_a, rec_c;
    bd::Dispatcher a([&rec_a](const bd::Batch &b) { return rec_a.record(b); }, 60000ms);
    CHECK_STATUS(a.enqueue("to-a"), bd::Status::ok);
    bd_dispatcher *handle = a.native_handle();

    // Move construction: the handle moves, the moved-from object holds nothing.
    bd::Dispatcher b(std::move(a));
    CHECK(!a); // NOLINT(bugprone-use-after-move): the point of the test
    CHECK(a.native_handle() == nullptr);
    CHECK(b.native_handle() == handle);
    CHECK_STATUS(a.enqueue("lost"), bd::Status::null_arg);
    CHECK_EQ(a.callback_exceptions(), 0);
    bool thrown = false;
    try {
        (void)a.flush(1000ms);
    } catch (const bd::Error &e) {
        thrown = e.status() == bd::Status::null_arg;
    }
    CHECK(thrown);
    CHECK_STATUS(b.enqueue("to-b"), bd::Status::ok);
    CHECK(b.flush(T(10000ms)));
    CHECK_EQ(rec_a.count(), 2);

    // Move assignment onto a live dispatcher: its queued entries are delivered first (the
    // same bounded close as the destructor), then it takes the other's handle.
    bd::Dispatcher c([&rec_c](const bd::Batch &b) { return rec_c.record(b); }, 60000ms);
    CHECK_STATUS(c.enqueue("queued-in-c"), bd::Status::ok);
    c = std::move(b);
    CHECK_EQ(rec_c.count(), 1); // delivered by the assignment, not by a window
    CHECK(c.native_handle() == handle);
    CHECK(!b); // NOLINT(bugprone-use-after-move)
    CHECK_STATUS(c.enqueue("to-c"), bd::Status::ok);
    CHECK(c.flush(T(10000ms)));
    CHECK_EQ(rec_a.count(), 3);

    // Self-move and assigning a moved-from object are harmless.
    bd::Dispatcher &alias = c;
    c = std::move(alias);
    CHECK(c.native_handle() == handle);
    a = std::move(b); // both empty
    CHECK(!a);
    std::printf("  handle moved twice; moved-from objects: enqueue -> %s, flush -> bd::Error; "
                "assignment delivered the target's %zu queued entry first\n",
                bd::to_string(bd::Status::null_arg), rec_c.count());
    // a, b (moved-from) and c are destroyed here.
}

void stats_counts() {
    Recorder rec;
    bd::Options options;
    options.max_queue_entries = 50;
    options.max_batch_entries = 50;
    bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, 60000ms, options);
    bd::Stats s0 = checked_stats(d);
    CHECK_EQ(s0.enqueued, 0);
    // Fill exactly to the bound; window of 60 s but a full batch is dispatched at once, so only
    // count what the stats say once everything settled.
    std::size_t accepted = 0, refused = 0;
    for (int i = 0; i < 120; i++) {
        bd::Status st = d.enqueue("s" + std::to_string(i));
        if (st == bd::Status::ok) {
            accepted++;
        } else {
            CHECK_STATUS(st, bd::Status::queue_full);
            refused++;
        }
    }
    CHECK(d.flush(T(10000ms)));
    bd::Stats s = checked_stats(d);
    CHECK_EQ(s.enqueued, accepted);
    CHECK_EQ(s.rejected, refused);
    CHECK_EQ(s.dispatched, accepted);
    CHECK_EQ(rec.count(), accepted);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.queued_bytes, 0);
    CHECK_EQ(s.in_flight_entries, 0);
    CHECK(accepted >= 50);
    std::printf("  120 offered to a 50-entry queue: enqueued %llu, rejected %llu, dispatched %llu "
                "in %llu batches; invariant holds\n",
                static_cast<unsigned long long>(s.enqueued),
                static_cast<unsigned long long>(s.rejected),
                static_cast<unsigned long long>(s.dispatched),
                static_cast<unsigned long long>(s.batches));
}

void close_then_enqueue() {
    Recorder rec;
    bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, 60000ms);
    for (int i = 0; i < 10; i++) {
        CHECK_STATUS(d.enqueue("before-close"), bd::Status::ok);
    }
    auto start = Clock::now();
    CHECK(d.close(T(10000ms)));
    double close_ms = ms_since(start);
    CHECK_EQ(rec.count(), 10); // close dispatches everything queued before returning
    CHECK_STATUS(d.enqueue("after-close"), bd::Status::closed);
    CHECK_STATUS(d.enqueue(nullptr, 0), bd::Status::closed);
    CHECK(d.close(T(10000ms))); // idempotent
    d.close();                  // and with no deadline
    CHECK(d.flush(T(1000ms)));  // nothing left to flush
    bd::Stats s = checked_stats(d);
    CHECK_EQ(s.rejected, 2);
    CHECK_EQ(s.dispatched, 10);
    std::printf("  close delivered 10 queued entries in %.2f ms; then enqueue -> %s (2 rejected)\n",
                close_ms, bd::to_string(bd::Status::closed));
}

void any_duration() {
    // Deadlines and ms_delay in any unit: a huge one means "no deadline" (seconds::max() once
    // overflowed to a negative count, "now", and abandoned the queue); a sub-millisecond one
    // rounds up instead of becoming 0.
    CHECK_EQ(bd::detail::timeout_ms(std::chrono::seconds::max()), BD_NO_TIMEOUT);
    CHECK_EQ(bd::detail::timeout_ms(std::chrono::hours::max()), BD_NO_TIMEOUT);
    CHECK_EQ(bd::detail::timeout_ms(std::chrono::milliseconds::max()), BD_NO_TIMEOUT);
    CHECK_EQ(bd::detail::timeout_ms(std::chrono::microseconds(500)), 1u);
    CHECK_EQ(bd::detail::timeout_ms(std::chrono::duration<double>(1.5)), 1500u);
    CHECK_EQ(bd::detail::timeout_ms(-1ms), 0u);
    Recorder rec;
    bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, std::chrono::hours(1));
    for (int i = 0; i < 10; i++) {
        CHECK_STATUS(d.enqueue("queued"), bd::Status::ok);
    }
    CHECK(d.flush(std::chrono::seconds::max()));
    CHECK_EQ(rec.count(), 10);
    CHECK_STATUS(d.enqueue("queued"), bd::Status::ok);
    CHECK(d.close(std::chrono::seconds::max()));
    CHECK_EQ(rec.count(), 11);
    bd::Stats s = checked_stats(d);
    CHECK_EQ(s.abandoned, 0);
    std::printf("  seconds::max() and hours::max() are no deadline; 500us is 1 ms; 11 entries delivered\n");
}

void reentrant_flush() {
    // flush()/close() from inside the dispatch callable would deadlock: bd::Error(reentrant).
    bd::Status seen_flush = bd::Status::ok, seen_close = bd::Status::ok;
    bd::Status inner_enqueue = bd::Status::panic;
    bd::Dispatcher *self = nullptr;
    std::size_t calls = 0;
    bd::Dispatcher d(
        [&](const bd::Batch &) {
            if (calls++ > 0) {
                return true; // the entry enqueued below
            }
            try {
                (void)self->flush(1000ms);
            } catch (const bd::Error &e) {
                seen_flush = e.status();
            }
            try {
                (void)self->close(1000ms);
            } catch (const bd::Error &e) {
                seen_close = e.status();
            }
            inner_enqueue = self->enqueue("from-inside"); // allowed, never blocks
            return true;
        },
        60000ms);
    self = &d;
    CHECK_STATUS(d.enqueue("x"), bd::Status::ok);
    CHECK(d.flush(T(10000ms)));
    CHECK(d.flush(T(10000ms))); // the entry enqueued from inside
    CHECK_STATUS(seen_flush, bd::Status::reentrant);
    CHECK_STATUS(seen_close, bd::Status::reentrant);
    CHECK_STATUS(inner_enqueue, bd::Status::ok);
    CHECK_EQ(d.stats().dispatched, 2);
    std::printf("  inside the callable: flush and close -> bd::Error(%s), enqueue -> %s\n",
                bd::to_string(seen_flush), bd::to_string(inner_enqueue));
}

void destructor_delivers() {
    Recorder rec;
    constexpr int n = 5000;
    auto start = Clock::now();
    {
        // A 60 s window: without the destructor's close nothing would be delivered in time.
        bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, 60000ms);
        for (int i = 0; i < n; i++) {
            CHECK_STATUS(d.enqueue("queued-" + std::to_string(i)), bd::Status::ok);
        }
        CHECK_EQ(d.stats().dispatched, 0);
    }
    double ms = ms_since(start);
    CHECK_EQ(rec.count(), n);
    CHECK(rec.entries.back() == "queued-" + std::to_string(n - 1));
    std::printf("  %d entries queued under a 60 s window, all %zu delivered by ~Dispatcher in "
                "%zu batch(es), %.1f ms\n",
                n, rec.count(), rec.batch_sizes.size(), ms);
}

void destructor_bounded() {
    // A stuck callable must not hang the destructor: after close_timeout the queued entries go
    // to on_drop (shutdown_timeout), the destructor returns, and the batch in flight finishes
    // later on the dispatcher's thread, which then frees the callables.
    auto gate = std::make_shared<Gate>();
    auto rec = std::make_shared<Recorder>();
    std::weak_ptr<Gate> gate_alive = gate;
    bd::Options options;
    options.close_timeout = 200ms;
    options.max_batch_entries = 1; // the first entry is dispatched at once, alone
    options.on_drop = [rec](const bd::Batch &b, bd::DropReason r) { rec->record_drop(b, r); };
    auto start = Clock::now();
    {
        bd::Dispatcher d(
            [gate, rec](const bd::Batch &b) {
                gate->wait_open();
                return rec->record(b);
            },
            60000ms, options);
        CHECK_STATUS(d.enqueue("in-flight"), bd::Status::ok);
        CHECK(gate->wait_entered(T(10000ms)));
        for (int i = 0; i < 20; i++) {
            CHECK_STATUS(d.enqueue("queued"), bd::Status::ok);
        }
    }
    double destroy_ms = ms_since(start);
    std::size_t abandoned = rec->dropped();
    CHECK_EQ(abandoned, 20);
    {
        std::lock_guard<std::mutex> lock(rec->mu);
        for (auto &drop : rec->drops) {
            CHECK(drop.first == bd::DropReason::shutdown_timeout);
        }
    }
    CHECK_EQ(rec->count(), 0); // the in-flight batch is still waiting
    Gate *g = gate.get();
    gate.reset(); // the dispatcher's callable now holds the only reference
    CHECK(!gate_alive.expired());
    g->release();
    // The dispatcher's thread delivers the batch in flight, then frees the callables.
    auto deadline = Clock::now() + T(10000ms);
    while (!gate_alive.expired() && Clock::now() < deadline) {
        std::unique_lock<std::mutex> lock(rec->mu);
        rec->cv.wait_for(lock, 10ms);
    }
    CHECK(gate_alive.expired());
    CHECK_EQ(rec->count(), 1);
    std::printf("  callable stuck: ~Dispatcher returned after %.0f ms (close_timeout 200 ms) with "
                "%zu entries to on_drop(shutdown_timeout); the batch in flight finished "
                "afterwards and the callables were freed\n",
                destroy_ms, abandoned);
}

void threads() {
    // Const members from several threads at once: every entry delivered once, per-thread order
    // kept, while another thread takes stats snapshots and flushes.
    constexpr int producers = 4;
    constexpr int per_thread = 5000;
    Recorder rec;
    bd::Options options;
    options.max_batch_entries = 256;
    bd::Dispatcher d([&rec](const bd::Batch &b) { return rec.record(b); }, 5ms, options);
    std::vector<std::thread> threads;
    auto start = Clock::now();
    for (int t = 0; t < producers; t++) {
        threads.emplace_back([&d, t] {
            for (int i = 0; i < per_thread; i++) {
                CHECK_STATUS(d.enqueue(std::to_string(t) + ":" + std::to_string(i)), bd::Status::ok);
            }
        });
    }
    std::size_t snapshots = 0;
    threads.emplace_back([&d, &snapshots] {
        for (int i = 0; i < 50; i++) {
            checked_stats(d);
            CHECK(d.flush(T(10000ms)));
            snapshots++;
        }
    });
    for (std::thread &t : threads) {
        t.join();
    }
    CHECK(d.flush(T(10000ms)));
    double ms = ms_since(start);
    std::lock_guard<std::mutex> lock(rec.mu);
    CHECK_EQ(rec.entries.size(), producers * per_thread);
    std::vector<int> next(producers, 0);
    for (const std::string &e : rec.entries) {
        std::size_t colon = e.find(':');
        int t = std::stoi(e.substr(0, colon));
        int i = std::stoi(e.substr(colon + 1));
        CHECK_EQ(i, next[static_cast<std::size_t>(t)]); // no loss, no duplicate, in order
        next[static_cast<std::size_t>(t)]++;
    }
    std::printf("  %d threads x %d entries: %zu delivered once each, in per-thread order, in %zu "
                "batches, %.1f ms; %zu stats+flush rounds alongside\n",
                producers, per_thread, rec.entries.size(), rec.batch_sizes.size(), ms, snapshots);
}

struct TestCase {
    const char *name;
    void (*fn)();
};

const TestCase tests[] = {
    {"hpp_construction_errors", construction_errors},
    {"hpp_delivery", delivery},
    {"hpp_batch_view", batch_view},
    {"hpp_lambda_captures", lambda_captures},
    {"hpp_throwing_callable", throwing_callable},
    {"hpp_move_semantics", move_semantics},
    {"hpp_stats_counts", stats_counts},
    {"hpp_close_then_enqueue", close_then_enqueue},
    {"hpp_reentrant_flush", reentrant_flush},
    {"hpp_any_duration", any_duration},
    {"hpp_destructor_delivers", destructor_delivers},
    {"hpp_destructor_bounded", destructor_bounded},
    {"hpp_threads", threads},
};

extern "C" void on_alarm(int) {
    static const char msg[] = "watchdog: test hung\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    std::_Exit(2);
}

} // namespace

int main(int argc, char **argv) {
    std::setvbuf(stdout, nullptr, _IONBF, 0);
    std::signal(SIGALRM, on_alarm);
    int ran = 0;
    for (const TestCase &t : tests) {
        if (argc > 1 && std::strcmp(argv[1], t.name) != 0) {
            continue;
        }
        alarm(static_cast<unsigned>(T(60000ms).count() / 1000));
        std::printf("RUN  %s\n", t.name);
        t.fn();
        std::printf("PASS %s\n", t.name);
        ran++;
    }
    alarm(0);
    if (ran == 0) {
        std::fprintf(stderr, "unknown test '%s'; tests:\n", argc > 1 ? argv[1] : "");
        for (const TestCase &t : tests) {
            std::fprintf(stderr, "  %s\n", t.name);
        }
        return 2;
    }
    return 0;
}
