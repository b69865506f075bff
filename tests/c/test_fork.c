/* fork(): the child gets a working, empty dispatcher; the parent keeps (and delivers) what was
 * queued before the fork. Entries carry a tag saying who enqueued them. */
/* MAP_ANONYMOUS is not in POSIX 2008. */
#define _DEFAULT_SOURCE 1
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "test_util.h"

/* Under valgrind (memcheck/ tests) the child checks its own memory errors, then ends without
 * valgrind's exit-time leak check: in a fork child, memory owned by the parent's other threads
 * (the parent's dispatcher thread and its closure, which do not exist in the child) is reported
 * as "definitely lost" whatever the library does. The library leaks the inherited state on
 * purpose ("the parent delivers those entries"). */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define HAVE_VALGRIND_H 1
#endif
#endif

/* A page shared with the child: it sets *child_ok before killing itself under valgrind. */
static volatile int *child_ok;

static void child_exit_ok(void) {
#ifdef HAVE_VALGRIND_H
    if (RUNNING_ON_VALGRIND) {
        if (VALGRIND_COUNT_ERRORS != 0) {
            fprintf(stderr, "valgrind found memory errors in the fork child\n");
            _exit(99);
        }
        *child_ok = 1;
        kill(getpid(), SIGKILL); /* no leak check in the child: see above */
    }
#endif
    _exit(0);
}

/* Forks. Callers first let the dispatcher's thread finish starting (warm_up): with GCC 12's
 * AddressSanitizer, whose allocator is not fork-safe, a fork while another thread is inside
 * malloc (a thread starting up allocates a lot) can leave the child's malloc locked forever. */
static pid_t fork_child(void) {
    if (child_ok == NULL) {
        void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        CHECK(page != MAP_FAILED);
        child_ok = page;
    }
    *child_ok = 0;
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    return pid;
}

#define TAG_PARENT 'P'
#define TAG_CHILD 'C'
#define TAG_A 'A'
#define TAG_B 'B'

/* Waits (bounded) for the child; kills it on timeout. Returns its exit status, or -1. */
static int wait_child(pid_t pid) {
    uint64_t deadline = now_ns() + T(20000) * NS_PER_MS;
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            break;
        }
        CHECK(w == 0 || (w < 0 && errno == EINTR));
        if (now_ns() >= deadline) {
            fprintf(stderr, "fork child %d still running: killing it\n", (int)pid);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        sleep_us(1000);
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && *child_ok) {
        return 0; /* passed, and ended itself without valgrind's leak check */
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "fork child killed by signal %d\n", WTERMSIG(status));
        return -1;
    }
    CHECK(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Counts delivered entries with `tag`, checking they are seq 0.. in order. */
static size_t count_tag(const tagseq *v, size_t n, uint32_t tag) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].tag == tag) {
            CHECK_EQ(v[i].seq, k);
            k++;
        }
    }
    return k;
}

/* In the child: enqueue `m` entries, flush, check exactly those were delivered here, bd_free.
 * Exits the child process. */
static void child_run(recorder *r, bd_dispatcher *d, uint32_t m, bool expect_free) {
    watchdog(30);
    size_t before = rec_disp_entries(r); /* the parent's warm-up entry only */
    CHECK_EQ(before, 1);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, 0); /* empty: the parent's entries are not here */
    CHECK_EQ(s.queued_entries, 0);
    for (uint32_t i = 0; i < m; i++) {
        CHECK_STATUS(enqueue_tagged(d, TAG_CHILD, i), BD_STATUS_OK);
    }
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    tagseq *v;
    size_t n = rec_delivered(r, &v);
    CHECK_EQ(n, before + m);
    CHECK_EQ(count_tag(v + before, m, TAG_CHILD), m); /* exactly the child's, in order */
    free(v);
    s = get_stats(d);
    CHECK_EQ(s.enqueued, m); /* the child's own counters */
    CHECK_EQ(s.dispatched, m);
    CHECK_EQ(s.queued_entries, 0);
    CHECK_EQ(s.in_flight_entries, 0);
    bd_free(d);
    if (expect_free) {
        CHECK_EQ(atomic_load(&r->freed), 1); /* bd_free calls user_data_free, in the child too */
    }
    rec_check_sane(r);
    child_exit_ok();
}

/* Parent: N entries queued (60 s window), fork; child: M entries of its own. */
static void fork_child_gets_empty_dispatcher(void) {
    const uint32_t n = 100, m = 50;
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    warm_up(&r, d); /* see fork_child() */
    for (uint32_t i = 0; i < n; i++) {
        CHECK_STATUS(enqueue_tagged(d, TAG_PARENT, i), BD_STATUS_OK);
    }
    pid_t pid = fork_child();
    if (pid == 0) {
        child_run(&r, d, m, false);
    }
    CHECK_EQ(wait_child(pid), 0);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, n + 1);
    CHECK_EQ(s.queued_entries, n);
    CHECK_STATUS(bd_flush(d, T(10000)), BD_STATUS_OK);
    tagseq *v;
    size_t got = rec_delivered(&r, &v);
    CHECK_EQ(got, n + 1);
    CHECK_EQ(count_tag(v, got, TAG_PARENT), n);
    free(v);
    s = get_stats(d);
    CHECK_EQ(s.enqueued, n + 1);
    CHECK_EQ(s.dispatched, n + 1);
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

typedef struct fork_producer {
    const bd_dispatcher *d;
    uint32_t tag;
    uint32_t cap;
    atomic_int *stop;
    atomic_uint ok; /* entries accepted so far */
    int errors;
} fork_producer;

static void *fork_produce(void *arg) {
    fork_producer *p = arg;
    uint32_t i = 0;
    while (!atomic_load(p->stop) && i < p->cap) {
        if (enqueue_tagged(p->d, p->tag, i) != BD_STATUS_OK) {
            p->errors++;
            break;
        }
        i++;
        atomic_store(&p->ok, i);
    }
    return NULL;
}

static bool producers_going(void *arg) {
    fork_producer *p = arg;
    return atomic_load(&p[0].ok) >= 1000 && atomic_load(&p[1].ok) >= 1000;
}

/* The same while two threads keep enqueueing in the parent as it forks. */
static void fork_while_threads_enqueue(void) {
    const uint32_t n = 100, m = 50;
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o); /* nothing is dispatched before the flush */
    warm_up(&r, d);                            /* see fork_child() */
    atomic_int stop;
    atomic_init(&stop, 0);
    fork_producer p[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        memset(&p[i], 0, sizeof p[i]);
        p[i].d = d;
        p[i].tag = i == 0 ? TAG_A : TAG_B;
        p[i].cap = 200000;
        p[i].stop = &stop;
        atomic_init(&p[i].ok, 0);
        CHECK(pthread_create(&th[i], NULL, fork_produce, &p[i]) == 0);
    }
    for (uint32_t i = 0; i < n; i++) {
        CHECK_STATUS(enqueue_tagged(d, TAG_PARENT, i), BD_STATUS_OK);
    }
    CHECK(wait_until(producers_going, p, T(10000)));
    pid_t pid = fork_child();
    if (pid == 0) {
        child_run(&r, d, m, false);
    }
    int status = wait_child(pid);
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK_EQ(p[i].errors, 0);
    }
    CHECK_EQ(status, 0);
    CHECK_STATUS(bd_flush(d, T(30000)), BD_STATUS_OK);
    uint32_t na = atomic_load(&p[0].ok), nb = atomic_load(&p[1].ok);
    tagseq *v;
    size_t got = rec_delivered(&r, &v);
    CHECK_EQ(count_tag(v, got, TAG_PARENT), n);
    CHECK_EQ(count_tag(v, got, TAG_A), na);
    CHECK_EQ(count_tag(v, got, TAG_B), nb);
    CHECK_EQ(got, (size_t)n + na + nb + 1); /* and nothing of the child's */
    free(v);
    bd_stats s = get_stats(d);
    CHECK_EQ(s.enqueued, (uint64_t)n + na + nb + 1);
    CHECK_EQ(s.dispatched, (uint64_t)n + na + nb + 1);
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    rec_check_sane(&r);
    rec_destroy(&r);
}

/* bd_free in the child calls user_data_free (the child's copy of user_data) exactly once, as
 * bd_free does everywhere else; the parent's bd_free does too, for the parent's copy. */
static void fork_child_free_calls_user_data_free(void) {
    recorder r;
    rec_init(&r);
    bd_options o = rec_options();
    bd_dispatcher *d = rec_new(&r, 60000, &o);
    warm_up(&r, d); /* see fork_child() */
    CHECK_STATUS(enqueue_tagged(d, TAG_PARENT, 0), BD_STATUS_OK);
    pid_t pid = fork_child();
    if (pid == 0) {
        child_run(&r, d, 3, true);
    }
    CHECK_EQ(wait_child(pid), 0);
    bd_free(d);
    CHECK_EQ(atomic_load(&r.freed), 1);
    CHECK_EQ(rec_disp_entries(&r), 2); /* warm-up + the parent's entry */
    rec_check_sane(&r);
    rec_destroy(&r);
}

int main(int argc, char **argv) {
    static const test_case tests[] = {
        {"fork_child_gets_empty_dispatcher", fork_child_gets_empty_dispatcher},
        {"fork_while_threads_enqueue", fork_while_threads_enqueue},
        {"fork_child_free_calls_user_data_free", fork_child_free_calls_user_data_free},
    };
    return RUN_TESTS(tests, argc, argv);
}
