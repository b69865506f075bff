/*
 * test_rng.h: the seeded random numbers of the C reliability tests.
 *
 * Every randomised test takes its seed from BD_TEST_SEED (decimal or 0x-hex) or, without it,
 * from the clock, and prints it first, so that any failing run can be repeated exactly:
 *     BD_TEST_SEED=0x1234 ./test_stress shutdown_race
 * The generator is splitmix64: tiny, statistically fine for test data, and one that each
 * producer thread can own (no shared state, no locks).
 */
#ifndef BD_TEST_RNG_H
#define BD_TEST_RNG_H

#include "test_util.h"

typedef struct rng_t {
    uint64_t state;
} rng_t;

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(rng_t *r) {
    r->state += UINT64_C(0x9e3779b97f4a7c15);
    return mix64(r->state);
}

/* Uniform in [lo, hi] (hi - lo well below 2^32, so the modulo bias does not matter here). */
static inline uint64_t rng_range(rng_t *r, uint64_t lo, uint64_t hi) {
    return lo + rng_next(r) % (hi - lo + 1);
}

/* The run's seed: BD_TEST_SEED, or a fresh one; printed with the test's name. */
static inline uint64_t test_seed(const char *test) {
    const char *s = getenv("BD_TEST_SEED");
    uint64_t seed;
    if (s != NULL && s[0] != '\0') {
        seed = strtoull(s, NULL, 0);
    } else {
        seed = mix64(now_ns() ^ ((uint64_t)getpid() << 32));
    }
    printf("%s: seed 0x%016" PRIx64 " (repeat with BD_TEST_SEED=0x%016" PRIx64 ")\n", test, seed,
           seed);
    return seed;
}

/* Whether this executable was built with AddressSanitizer (GCC and Clang spellings). */
#if defined(__SANITIZE_ADDRESS__)
#define BD_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BD_TEST_ASAN 1
#endif
#endif
#ifndef BD_TEST_ASAN
#define BD_TEST_ASAN 0
#endif

/* "plain", "asan" or "memcheck" (BD_TEST_SLOW marks the valgrind runs): for the printed figures. */
static inline const char *test_variant(void) {
    return BD_TEST_ASAN ? "asan" : slow_factor() > 1 ? "memcheck" : "plain";
}

#endif /* BD_TEST_RNG_H */
