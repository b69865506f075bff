/*
 * background_dispatcher.hpp: a header-only C++17 wrapper over the C API of
 * background-dispatcher (background_dispatcher.h). Hand-written; not generated.
 *
 *     #include <background_dispatcher.hpp>
 *
 *     bd::Options options;
 *     options.max_batch_entries = 500;
 *     bd::Dispatcher logs(
 *         [&sink](const bd::Batch &batch) {     // on the dispatcher's thread
 *             for (std::string_view line : batch) sink.write(line);
 *             return sink.ok();                  // false (or a throw) fails the batch
 *         },
 *         std::chrono::milliseconds(100), options);
 *     if (logs.enqueue(R"({"path":"/v1/users","status":200})") != bd::Status::ok) { ... }
 *     // ~Dispatcher: close (bounded by options.close_timeout), then bd_free.
 *
 * Mapping to the C API:
 *   bd::Dispatcher           owns one bd_dispatcher * (bd_new ... bd_free); move-only
 *   bd::Options              bd_options (same field names; durations are std::chrono,
 *                            without the _ms suffix), plus on_drop and close_timeout
 *   bd::Batch                a view of one bd_batch: a range of std::string_view entries
 *   bd::Status               bd_status; bd::to_string(status) is bd_status_str
 *   bd::Error                std::runtime_error carrying a bd::Status
 *   bd::Stats                bd_stats
 *
 * Errors: construction throws bd::Error (INVALID_OPTIONS, THREAD_SPAWN) and std::bad_alloc.
 * The hot path does not throw: enqueue() is noexcept and returns a [[nodiscard]] bd::Status
 * (QUEUE_FULL, TOO_LARGE and CLOSED are outcomes to handle, not bugs). flush() and close()
 * return false when their deadline passes and throw bd::Error only on misuse (REENTRANT:
 * called from inside a callback; NULL_ARG: a moved-from Dispatcher).
 *
 * Callbacks: the dispatch callable is invoked as `bool(const bd::Batch &)` on the
 * dispatcher's own thread, one batch at a time; true means delivered. An exception thrown by
 * it never reaches the C library (which must not be unwound through): it is caught and the
 * batch counts as failed (retried per max_attempts, then `stats().failed` and on_drop with
 * bd::DropReason::failed); callback_exceptions() counts such catches. on_drop is invoked as
 * `void(const bd::Batch &, bd::DropReason)`, possibly on another thread at the same time as
 * the dispatch callable (see bd_drop_reason); its exceptions are caught and counted too. A
 * Batch and its string_views are valid only during the call: copy what you keep.
 *
 * Ownership: the Dispatcher owns the C handle, which owns the callables (moved into one heap
 * object handed to bd_new as user_data and freed by user_data_free after the last callback).
 * The callables may therefore outlive the Dispatcher object: when the destructor's close
 * deadline passes (see below), the batch in flight finishes on the dispatcher's thread after
 * the destructor has returned. A callable that captures references must keep what they refer
 * to alive that long, or the owner must call close() with no deadline first.
 *
 * Destruction: ~Dispatcher() calls bd_shutdown(close_timeout) and then bd_free, and never
 * throws. Every entry accepted is dispatched if it can be within close_timeout (default 5 s);
 * entries still queued at the deadline go to on_drop (bd::DropReason::shutdown_timeout) and
 * count as `abandoned`, so a stuck collector cannot hang the program's exit. Moved-from
 * Dispatchers hold nothing; destroying or assigning to them is safe, and their members
 * report Status::null_arg.
 *
 * Thread safety: as in the C API. Every const member function (enqueue, flush, close, stats,
 * callback_exceptions) may be called from any number of threads at once. Construction,
 * assignment and destruction must not race with any other use of the same object.
 * Not async-signal-safe.
 */

#ifndef BACKGROUND_DISPATCHER_HPP
#define BACKGROUND_DISPATCHER_HPP

#if !(__cplusplus >= 201703L || (defined(_MSVC_LANG) && _MSVC_LANG >= 201703L))
#error "background_dispatcher.hpp needs C++17 or later"
#endif
#if !defined(__cpp_exceptions) && !defined(_CPPUNWIND)
#error "background_dispatcher.hpp throws bd::Error: without exceptions, use background_dispatcher.h"
#endif

#include "background_dispatcher.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace bd {

/** bd_status as a scoped enum; values are the C values. */
enum class Status : std::uint32_t {
    ok = BD_STATUS_OK,
    null_arg = BD_STATUS_NULL_ARG,
    invalid_options = BD_STATUS_INVALID_OPTIONS,
    queue_full = BD_STATUS_QUEUE_FULL,
    too_large = BD_STATUS_TOO_LARGE,
    closed = BD_STATUS_CLOSED,
    timeout = BD_STATUS_TIMEOUT,
    reentrant = BD_STATUS_REENTRANT,
    thread_spawn = BD_STATUS_THREAD_SPAWN,
    panic = BD_STATUS_PANIC,
};

/** The library's static description of `status` (bd_status_str). Never null. */
inline const char *to_string(Status status) noexcept {
    return bd_status_str(static_cast<std::uint32_t>(status));
}

/** bd_overflow: what enqueue does when the queue is full. */
enum class Overflow : std::uint32_t {
    drop_newest = BD_OVERFLOW_DROP_NEWEST,
    drop_oldest = BD_OVERFLOW_DROP_OLDEST,
    block = BD_OVERFLOW_BLOCK,
};

/** bd_drop_reason: why entries reach on_drop. */
enum class DropReason : std::uint32_t {
    failed = BD_DROP_REASON_FAILED,
    evicted = BD_DROP_REASON_EVICTED,
    shutdown_timeout = BD_DROP_REASON_SHUTDOWN_TIMEOUT,
};

/** bd_stats: one consistent snapshot of the counters (see background_dispatcher.h). */
using Stats = bd_stats;

/** A failed call of the C API: status() is the bd_status, what() says where and why. */
class Error : public std::runtime_error {
  public:
    Error(Status status, const char *call)
        : std::runtime_error(std::string(call) + ": " + to_string(status)), status_(status) {}

    Status status() const noexcept { return status_; }

  private:
    Status status_;
};

/**
 * A read-only view of one batch: a random-access range of std::string_view entries, in
 * per-thread enqueue order. Valid only during the callback it is passed to.
 */
class Batch {
  public:
    class iterator {
      public:
        using iterator_category = std::random_access_iterator_tag;
        using value_type = std::string_view;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = std::string_view;

        iterator() noexcept = default;
        explicit iterator(const bd_entry *entry) noexcept : entry_(entry) {}

        std::string_view operator*() const noexcept { return view(*entry_); }
        std::string_view operator[](difference_type n) const noexcept { return view(entry_[n]); }
        iterator &operator++() noexcept { ++entry_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++entry_; return old; }
        iterator &operator--() noexcept { --entry_; return *this; }
        iterator operator--(int) noexcept { iterator old = *this; --entry_; return old; }
        iterator &operator+=(difference_type n) noexcept { entry_ += n; return *this; }
        iterator &operator-=(difference_type n) noexcept { entry_ -= n; return *this; }
        friend iterator operator+(iterator it, difference_type n) noexcept { return it += n; }
        friend iterator operator+(difference_type n, iterator it) noexcept { return it += n; }
        friend iterator operator-(iterator it, difference_type n) noexcept { return it -= n; }
        friend difference_type operator-(iterator a, iterator b) noexcept { return a.entry_ - b.entry_; }
        friend bool operator==(iterator a, iterator b) noexcept { return a.entry_ == b.entry_; }
        friend bool operator!=(iterator a, iterator b) noexcept { return a.entry_ != b.entry_; }
        friend bool operator<(iterator a, iterator b) noexcept { return a.entry_ < b.entry_; }
        friend bool operator>(iterator a, iterator b) noexcept { return a.entry_ > b.entry_; }
        friend bool operator<=(iterator a, iterator b) noexcept { return a.entry_ <= b.entry_; }
        friend bool operator>=(iterator a, iterator b) noexcept { return a.entry_ >= b.entry_; }

      private:
        const bd_entry *entry_ = nullptr;
    };
    using const_iterator = iterator;
    using value_type = std::string_view;
    using size_type = std::size_t;

    explicit Batch(const bd_batch &batch) noexcept : batch_(&batch) {}

    /** Number of entries; never 0 for a dispatch. */
    std::size_t size() const noexcept { return batch_->count; }
    bool empty() const noexcept { return batch_->count == 0; }
    /** Sum of the entries' lengths. */
    std::size_t bytes() const noexcept { return batch_->bytes; }
    /** 1 on the first dispatch, 2 on the first retry...; 0 in on_drop for never-dispatched entries. */
    std::uint32_t attempt() const noexcept { return batch_->attempt; }

    /** Entry `i` (unchecked, like std::vector::operator[]). */
    std::string_view operator[](std::size_t i) const noexcept { return view(batch_->entries[i]); }
    iterator begin() const noexcept { return iterator(batch_->entries); }
    iterator end() const noexcept { return iterator(batch_->entries + batch_->count); }

    /** The C batch, for code that already speaks bd_batch. */
    const bd_batch &c_batch() const noexcept { return *batch_; }

  private:
    // An empty entry may carry any pointer (even NULL): never build a view from it.
    static std::string_view view(const bd_entry &e) noexcept {
        return e.len == 0 ? std::string_view()
                          : std::string_view(reinterpret_cast<const char *>(e.data), e.len);
    }

    const bd_batch *batch_;
};

namespace detail {

inline const bd_options &c_defaults() noexcept {
    static const bd_options defaults = [] {
        bd_options o{};
        bd_options_init(&o); // cannot fail on a non-null pointer
        return o;
    }();
    return defaults;
}

} // namespace detail

/**
 * bd_options with C++ types. Defaults come from bd_options_init, so they are the library's.
 * Sizes of 0 mean "no limit". Validation is the library's: bad values make the Dispatcher
 * constructor throw bd::Error with Status::invalid_options.
 */
struct Options {
    /** Most entries queued at once, the batch in flight not counted. */
    std::size_t max_queue_entries = detail::c_defaults().max_queue_entries;
    /** Most bytes queued at once, the batch in flight not counted (default 64 MiB). */
    std::size_t max_queue_bytes = detail::c_defaults().max_queue_bytes;
    /** Most entries per batch; a full batch is dispatched without waiting. */
    std::size_t max_batch_entries = detail::c_defaults().max_batch_entries;
    /** Most bytes per batch; same trigger. */
    std::size_t max_batch_bytes = detail::c_defaults().max_batch_bytes;
    /** What enqueue does at a queue bound. */
    Overflow overflow = static_cast<Overflow>(detail::c_defaults().overflow);
    /** How long an Overflow::block enqueue waits for room (block_timeout_ms). */
    std::chrono::milliseconds block_timeout{detail::c_defaults().block_timeout_ms};
    /** Dispatch attempts per batch, the first included (1: no retry). */
    std::uint32_t max_attempts = detail::c_defaults().max_attempts;
    /** Wait before the first retry; doubles per retry, jittered (retry_backoff_ms). */
    std::chrono::milliseconds retry_backoff{detail::c_defaults().retry_backoff_ms};
    /** The cap on the retry wait (retry_backoff_max_ms). */
    std::chrono::milliseconds retry_backoff_max{detail::c_defaults().retry_backoff_max_ms};
    /** Optional: receives failed, evicted and abandoned entries (see bd_drop_fn for threads). */
    std::function<void(const Batch &, DropReason)> on_drop;
    /** C++ only: how long ~Dispatcher() waits for queued entries to be dispatched. */
    std::chrono::milliseconds close_timeout{5000};
};

namespace detail {

// Negative durations are a caller bug; the library refuses them like any invalid option.
inline std::uint64_t option_ms(std::chrono::milliseconds ms) {
    if (ms.count() < 0) {
        throw Error(Status::invalid_options, "bd::Options (negative duration)");
    }
    return static_cast<std::uint64_t>(ms.count());
}

// Any duration to whole milliseconds, rounded up (so 500us is 1 ms, not 0), saturating: a
// duration of milliseconds::max() or more, in any unit (seconds::max(), hours::max()), is
// `forever`, never an overflowing conversion. Negative durations are `negative`.
template <class Rep, class Period>
std::uint64_t saturating_ms(std::chrono::duration<Rep, Period> d, std::uint64_t negative,
                            std::uint64_t forever) noexcept {
    using ms_ld = std::chrono::duration<long double, std::milli>;
    if (d < d.zero()) {
        return negative;
    }
    const long double ms = std::chrono::duration_cast<ms_ld>(d).count();
    if (ms >= static_cast<long double>(std::chrono::milliseconds::max().count())) {
        return forever;
    }
    return static_cast<std::uint64_t>(std::chrono::ceil<std::chrono::milliseconds>(d).count());
}

// Deadlines: negative means "now"; milliseconds::max() or more means "no deadline".
template <class Rep, class Period>
std::uint64_t timeout_ms(std::chrono::duration<Rep, Period> d) noexcept {
    return saturating_ms(d, 0, BD_NO_TIMEOUT);
}

// What bd_new gets as user_data: the callables, type-erased behind one virtual call.
struct Callbacks {
    virtual ~Callbacks() = default;
    virtual bool dispatch(const Batch &batch) = 0;

    std::function<void(const Batch &, DropReason)> on_drop;
    std::atomic<std::uint64_t> exceptions{0};
};

template <class F>
struct CallbacksFor final : Callbacks {
    template <class G>
    explicit CallbacksFor(G &&g) : f(std::forward<G>(g)) {}
    bool dispatch(const Batch &batch) override { return static_cast<bool>(f(batch)); }

    F f;
};

// The trampolines have C language linkage because the C library calls them through C function
// pointer types. Nothing may unwind out of them into the library: every exception is caught
// here and becomes a failed batch (dispatch) or is only counted (on_drop). Hidden, so that a
// shared library built with this header does not export them (two libraries built with
// different versions of the header must not share one definition).
#if defined(__GNUC__) || defined(__clang__)
#define BD_HPP_HIDDEN __attribute__((visibility("hidden")))
#else
#define BD_HPP_HIDDEN
#endif
extern "C" {

BD_HPP_HIDDEN inline int bd_hpp_dispatch(void *user_data, const bd_batch *batch) noexcept {
    auto *callbacks = static_cast<Callbacks *>(user_data);
    try {
        return callbacks->dispatch(Batch(*batch)) ? 0 : 1;
    } catch (...) {
        callbacks->exceptions.fetch_add(1, std::memory_order_relaxed);
        return 1;
    }
}

BD_HPP_HIDDEN inline void bd_hpp_drop(void *user_data, const bd_batch *batch, bd_drop_reason reason) noexcept {
    auto *callbacks = static_cast<Callbacks *>(user_data);
    try {
        callbacks->on_drop(Batch(*batch), static_cast<DropReason>(reason));
    } catch (...) {
        callbacks->exceptions.fetch_add(1, std::memory_order_relaxed);
    }
}

BD_HPP_HIDDEN inline void bd_hpp_free(void *user_data) noexcept { delete static_cast<Callbacks *>(user_data); }

} // extern "C"
#undef BD_HPP_HIDDEN

} // namespace detail

/**
 * Owns one bd_dispatcher and the callables it calls. Move-only. See the file comment for
 * errors, ownership, destruction and thread safety.
 */
class Dispatcher {
  public:
    /**
     * Starts a dispatcher: `dispatch` (any callable invocable as `bool(const bd::Batch &)`,
     * moved or copied into the dispatcher) receives each batch at most every `ms_delay`.
     * Throws bd::Error (Status::invalid_options, Status::thread_spawn) or std::bad_alloc.
     */
    template <class F, class Rep, class Period>
    Dispatcher(F &&dispatch, std::chrono::duration<Rep, Period> ms_delay, Options options = {})
        : close_timeout_(options.close_timeout) {
        // A static_assert rather than SFINAE: the message beats "no matching constructor", and
        // with two required parameters this template never competes with the move constructor.
        static_assert(std::is_invocable_r_v<bool, std::decay_t<F> &, const Batch &>,
                      "the dispatch callable must be invocable as bool(const bd::Batch &)");
        auto callbacks =
            std::make_unique<detail::CallbacksFor<std::decay_t<F>>>(std::forward<F>(dispatch));
        bd_options c = detail::c_defaults();
        c.max_queue_entries = options.max_queue_entries;
        c.max_queue_bytes = options.max_queue_bytes;
        c.max_batch_entries = options.max_batch_entries;
        c.max_batch_bytes = options.max_batch_bytes;
        c.overflow = static_cast<bd_overflow>(options.overflow);
        c.block_timeout_ms = detail::option_ms(options.block_timeout);
        c.max_attempts = options.max_attempts;
        c.retry_backoff_ms = detail::option_ms(options.retry_backoff);
        c.retry_backoff_max_ms = detail::option_ms(options.retry_backoff_max);
        if (options.on_drop) {
            callbacks->on_drop = std::move(options.on_drop);
            c.on_drop = &detail::bd_hpp_drop;
        }
        c.user_data_free = &detail::bd_hpp_free;
        // ms_delay 0 (or negative, mapped to 0) is the library's to refuse.
        std::uint64_t delay = detail::saturating_ms(ms_delay, 0, UINT64_MAX);
        bd_dispatcher *handle = nullptr;
        bd_status status = bd_new(&detail::bd_hpp_dispatch, callbacks.get(), delay, &c, &handle);
        if (status != BD_STATUS_OK) {
            throw Error(static_cast<Status>(status), "bd_new"); // callbacks still ours: freed
        }
        callbacks_ = callbacks.release(); // now the handle's, freed by bd_hpp_free
        handle_ = handle;
    }

    Dispatcher(const Dispatcher &) = delete;
    Dispatcher &operator=(const Dispatcher &) = delete;

    Dispatcher(Dispatcher &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)),
          callbacks_(std::exchange(other.callbacks_, nullptr)),
          close_timeout_(other.close_timeout_) {}

    /** Closes and frees what this object owned (as the destructor does), then takes `other`'s. */
    Dispatcher &operator=(Dispatcher &&other) noexcept {
        if (this != &other) {
            release();
            handle_ = std::exchange(other.handle_, nullptr);
            callbacks_ = std::exchange(other.callbacks_, nullptr);
            close_timeout_ = other.close_timeout_;
        }
        return *this;
    }

    ~Dispatcher() { release(); }

    /** False for a moved-from Dispatcher. */
    explicit operator bool() const noexcept { return handle_ != nullptr; }

    /**
     * Copies the entry into the queue (bd_enqueue). Status::ok, or queue_full, too_large,
     * closed, thread_spawn (first enqueue in a fork child); null_arg when moved-from.
     */
    [[nodiscard]] Status enqueue(std::string_view entry) const noexcept {
        return enqueue(entry.data(), entry.size());
    }

    /** The same for `len` raw bytes at `data` (`data` may be null only if `len` is 0). */
    [[nodiscard]] Status enqueue(const void *data, std::size_t len) const noexcept {
        return static_cast<Status>(
            bd_enqueue(handle_, len == 0 ? nullptr : static_cast<const std::uint8_t *>(data), len));
    }

    /**
     * Dispatches what is queued now and waits until every entry accepted before the call is
     * dispatched or dropped (bd_flush). False if `timeout` passed first (the flush goes on).
     * Throws bd::Error with Status::reentrant from inside a callback.
     */
    template <class Rep, class Period>
    bool flush(std::chrono::duration<Rep, Period> timeout) const {
        return succeeded(bd_flush(handle_, detail::timeout_ms(timeout)), "bd_flush");
    }

    /** flush() with no deadline. */
    void flush() const { flush(std::chrono::milliseconds::max()); }

    /**
     * Stops accepting entries (enqueue then returns Status::closed), dispatches everything
     * queued and waits up to `timeout` (bd_shutdown). False at the deadline: what was still
     * queued went to on_drop. Idempotent. Throws bd::Error with Status::reentrant from inside a
     * callback.
     */
    template <class Rep, class Period>
    bool close(std::chrono::duration<Rep, Period> timeout) const {
        return succeeded(bd_shutdown(handle_, detail::timeout_ms(timeout)), "bd_shutdown");
    }

    /** close() with no deadline: returns once every accepted entry is dispatched or dropped. */
    void close() const { close(std::chrono::milliseconds::max()); }

    /** A consistent snapshot of the counters (bd_stats_get). */
    Stats stats() const {
        Stats s{};
        check(bd_stats_get(handle_, &s), "bd_stats_get");
        return s;
    }

    /** Exceptions caught from the callables (each failed its batch, or was ignored in on_drop). */
    std::uint64_t callback_exceptions() const noexcept {
        return callbacks_ == nullptr ? 0 : callbacks_->exceptions.load(std::memory_order_relaxed);
    }

    /** The C handle, still owned by this object (null when moved-from). */
    bd_dispatcher *native_handle() const noexcept { return handle_; }

  private:
    static void check(bd_status status, const char *call) {
        if (status != BD_STATUS_OK) {
            throw Error(static_cast<Status>(status), call);
        }
    }

    static bool succeeded(bd_status status, const char *call) {
        if (status == BD_STATUS_TIMEOUT) {
            return false;
        }
        check(status, call);
        return true;
    }

    // Bounded close, then bd_free. After a close that timed out bd_free does not wait: the
    // dispatcher's thread finishes its batch in flight and frees the callables itself. Called
    // from inside a callback, bd_shutdown says REENTRANT and bd_free defers in the same way.
    void release() noexcept {
        if (handle_ != nullptr) {
            (void)bd_shutdown(handle_, detail::timeout_ms(close_timeout_));
            bd_free(handle_);
            handle_ = nullptr;
            callbacks_ = nullptr;
        }
    }

    bd_dispatcher *handle_ = nullptr;
    // Borrowed from the handle (its user_data) for callback_exceptions(); valid while handle_ is.
    detail::Callbacks *callbacks_ = nullptr;
    std::chrono::milliseconds close_timeout_;
};

} // namespace bd

#endif /* BACKGROUND_DISPATCHER_HPP */
