// consumer.cpp: the C++ wrapper (background_dispatcher.hpp) from an installed tree, built by
// tests/install/run.sh through find_package(BackgroundDispatcher). Enqueues string_views,
// flushes, checks delivery; then lets the destructor deliver a second round.
#include <background_dispatcher.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>

int main() {
    std::atomic<std::size_t> delivered{0};
    std::atomic<std::size_t> batches{0};
    constexpr std::size_t n = 1000;
    {
        bd::Options options;
        options.max_batch_entries = 100;
        bd::Dispatcher d(
            [&](const bd::Batch &batch) {
                for (std::string_view entry : batch) {
                    if (entry.substr(0, 4) != "cpp:") {
                        return false;
                    }
                }
                delivered += batch.size();
                batches++;
                return true;
            },
            std::chrono::seconds(60), options);
        for (std::size_t i = 0; i < n; i++) {
            if (d.enqueue("cpp:" + std::to_string(i)) != bd::Status::ok) {
                std::fprintf(stderr, "consumer_cpp: enqueue %zu refused\n", i);
                return 1;
            }
        }
        if (!d.flush(std::chrono::seconds(30)) || delivered != n || d.stats().dispatched != n) {
            std::fprintf(stderr, "consumer_cpp: flush delivered %zu of %zu\n", delivered.load(), n);
            return 1;
        }
        for (std::size_t i = 0; i < n; i++) {
            if (d.enqueue("cpp:late") != bd::Status::ok) {
                return 1;
            }
        }
    } // ~Dispatcher delivers the second round
    if (delivered != 2 * n) {
        std::fprintf(stderr, "consumer_cpp: %zu of %zu delivered\n", delivered.load(), 2 * n);
        return 1;
    }
    std::printf("cmake-cpp: bd::Dispatcher, %zu entries enqueued, %zu delivered in %zu batches "
                "(half of them by the destructor)\n",
                2 * n, delivered.load(), batches.load());
    return 0;
}
