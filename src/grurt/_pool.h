/* A persistent worker pool for the threads of one call, and the shared-work helpers the
 * kernels build on it.
 *
 * Why: creating threads for each call costs 20-35 µs, a core that was idle wakes slowly, and
 * a static split (thread k does part k) waits for the slowest thread, which on a core that
 * another process is using can be milliseconds behind. So:
 *
 *  - Workers are created once (lazily, at most one per usable CPU minus the caller) and
 *    live for the process. After a job a worker spins for GRURT_POOL_SPIN_US (default
 *    30 µs: back-to-back calls and the layers of one call find it awake; yielding its CPU
 *    after the first 5 µs), then sleeps on a futex (a condition variable off Linux). A
 *    longer spin made a worker that shares a CPU with its caller on a loaded machine slow
 *    the caller down.
 *  - A call takes the workers that are free at that moment (none when other calls hold
 *    them: concurrent callers never oversubscribe the cores) and starts working at once
 *    itself; it never waits for a worker to start. Work is claimed from atomic counters
 *    (grurt_claim), so a worker that wakes late, or never, just finds less or nothing to do.
 *    At the end the call withdraws the jobs that no worker started, and waits only for
 *    workers that are inside the job.
 *  - After fork() the child has no workers (threads do not survive fork): pthread_atfork
 *    resets the pool in the child, which creates new workers when it first needs them.
 *
 * grurt_pool_run(want, fn, arg) runs fn(arg, 0) on the calling thread and fn(arg, k) on up
 * to want - 1 workers, and returns the number of threads that ran fn (>= 1).
 *
 * Header-only (static functions), for one translation unit; POSIX threads and GCC/Clang
 * __atomic builtins.
 */
#ifndef GRURT_POOL_H
#define GRURT_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GRURT_POOL_MAX_WORKERS 63

typedef void (*grurt_pool_fn)(void *arg, int slot);

enum {
    GRURT_WORKER_FREE = 0,    /* idle, owned by nobody */
    GRURT_WORKER_RESERVED,    /* a call owns it, no job yet */
    GRURT_WORKER_POSTED,      /* a job waits for it to start */
    GRURT_WORKER_RUNNING,     /* inside the job */
    GRURT_WORKER_DONE         /* finished the job; the call sets it FREE */
};

typedef struct {
    int state;                /* GRURT_WORKER_*, atomic */
    int sleeping;             /* 1 while it waits (or is about to wait) on `wake`, atomic */
    int slot;                 /* the slot number its job runs as */
    grurt_pool_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    char pad[64];             /* keep workers' hot words off each other's cache lines */
} grurt_worker;

typedef struct {
    int started;              /* workers created so far (they never exit) */
    int capacity;             /* max workers: usable CPUs - 1, capped */
    int active_callers;       /* calls inside grurt_pool_run, atomic */
    long spin_ns;             /* how long an idle worker spins before sleeping */
    pthread_mutex_t create_lock;
    grurt_worker workers[GRURT_POOL_MAX_WORKERS];
} grurt_pool_t;

static grurt_pool_t grurt_pool;
static pthread_once_t grurt_pool_once = PTHREAD_ONCE_INIT;

static inline long grurt_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void grurt_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* CPUs this process may run on (the affinity mask when the platform tells it). */
static int grurt_usable_cpus(void) {
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void grurt_pool_reset(void) {
    grurt_pool.started = 0;
    grurt_pool.active_callers = 0;
    int capacity = grurt_usable_cpus() - 1;
    grurt_pool.capacity = capacity < 0 ? 0 : capacity > GRURT_POOL_MAX_WORKERS ? GRURT_POOL_MAX_WORKERS : capacity;
    const char *spin = getenv("GRURT_POOL_SPIN_US");
    grurt_pool.spin_ns = (spin && *spin ? atol(spin) : 30) * 1000L;
    pthread_mutex_init(&grurt_pool.create_lock, NULL);
}

/* fork(): the prepare handler holds the creation lock so that the child never sees a worker
 * half created; the child forgets every worker (only the forking thread exists there) and
 * creates new ones on demand. */
static void grurt_pool_prepare_fork(void) { pthread_mutex_lock(&grurt_pool.create_lock); }
static void grurt_pool_parent_fork(void) { pthread_mutex_unlock(&grurt_pool.create_lock); }
static void grurt_pool_child_fork(void) {
    memset(&grurt_pool, 0, sizeof grurt_pool);
    grurt_pool_reset();
}

static void grurt_pool_init(void) {
    grurt_pool_reset();
    pthread_atfork(grurt_pool_prepare_fork, grurt_pool_parent_fork, grurt_pool_child_fork);
}

/* Sleeping and waking. A worker sets `sleeping`, then checks `state`; a call stores `state`,
 * then checks `sleeping` (both sequentially consistent), so one of them sees the other and no
 * wake-up is lost. On Linux a futex on `state` itself: a wake costs about 2 µs. Elsewhere a
 * condition variable, signalled after the lock is released (signalling under the lock made
 * the woken worker block on the mutex: 100 µs at the 90th percentile here). */
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
static void grurt_worker_sleep(grurt_worker *w) {
    __atomic_store_n(&w->sleeping, 1, __ATOMIC_SEQ_CST);
    int state;
    while ((state = __atomic_load_n(&w->state, __ATOMIC_SEQ_CST)) != GRURT_WORKER_POSTED)
        syscall(SYS_futex, &w->state, FUTEX_WAIT_PRIVATE, state, NULL, NULL, 0);
    __atomic_store_n(&w->sleeping, 0, __ATOMIC_RELAXED);
}
static void grurt_worker_wake(grurt_worker *w) {
    syscall(SYS_futex, &w->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
#else
static void grurt_worker_sleep(grurt_worker *w) {
    pthread_mutex_lock(&w->lock);
    __atomic_store_n(&w->sleeping, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&w->state, __ATOMIC_SEQ_CST) != GRURT_WORKER_POSTED)
        pthread_cond_wait(&w->wake, &w->lock);
    __atomic_store_n(&w->sleeping, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&w->lock);
}
static void grurt_worker_wake(grurt_worker *w) {
    pthread_mutex_lock(&w->lock);     /* the worker is now waiting, or will see the new state */
    pthread_mutex_unlock(&w->lock);
    pthread_cond_signal(&w->wake);
}
#endif

static void *grurt_worker_main(void *p) {
    grurt_worker *w = (grurt_worker *)p;
    for (;;) {
        /* wait for a job: spin a while (a call that follows soon finds us awake), then sleep.
         * After the first few microseconds the spin yields at each turn: when the kernel put
         * us on the caller's CPU (the other one being busy), the caller gets it straight back
         * instead of waiting for us to be preempted. */
        long now = grurt_now_ns(), polite = now + 5000, deadline = now + grurt_pool.spin_ns;
        int spins = 0;
        while (__atomic_load_n(&w->state, __ATOMIC_ACQUIRE) != GRURT_WORKER_POSTED) {
            grurt_cpu_relax();
            if (++spins % 32 == 0) {
                now = grurt_now_ns();
                if (now > deadline)
                    grurt_worker_sleep(w);
                else if (now > polite)
                    sched_yield();
            }
        }
        int posted = GRURT_WORKER_POSTED;
        /* the call may withdraw the job first (it finished without us) */
        if (!__atomic_compare_exchange_n(&w->state, &posted, GRURT_WORKER_RUNNING, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        w->fn(w->arg, w->slot);
        __atomic_store_n(&w->state, GRURT_WORKER_DONE, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Reserve up to `want` free workers into `taken` (creating workers up to the capacity);
 * returns how many. */
static int grurt_pool_reserve(int want, grurt_worker **taken) {
    int n = 0;
    if (want <= 0)
        return 0;
    for (int i = 0; i < __atomic_load_n(&grurt_pool.started, __ATOMIC_ACQUIRE) && n < want; ++i) {
        int expected = GRURT_WORKER_FREE;
        if (__atomic_compare_exchange_n(&grurt_pool.workers[i].state, &expected, GRURT_WORKER_RESERVED, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            taken[n++] = &grurt_pool.workers[i];
    }
    if (n < want && __atomic_load_n(&grurt_pool.started, __ATOMIC_ACQUIRE) < grurt_pool.capacity) {
        pthread_mutex_lock(&grurt_pool.create_lock);
        while (n < want && grurt_pool.started < grurt_pool.capacity) {
            grurt_worker *w = &grurt_pool.workers[grurt_pool.started];
            w->state = GRURT_WORKER_RESERVED;
            w->sleeping = 0;
            pthread_mutex_init(&w->lock, NULL);
            pthread_cond_init(&w->wake, NULL);
            if (pthread_create(&w->thread, NULL, grurt_worker_main, w) != 0)
                break;
            pthread_detach(w->thread);
            __atomic_store_n(&grurt_pool.started, grurt_pool.started + 1, __ATOMIC_RELEASE);
            taken[n++] = w;
        }
        pthread_mutex_unlock(&grurt_pool.create_lock);
    }
    return n;
}

static void grurt_pool_post(grurt_worker *w, grurt_pool_fn fn, void *arg, int slot) {
    w->fn = fn;
    w->arg = arg;
    w->slot = slot;
    __atomic_store_n(&w->state, GRURT_WORKER_POSTED, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->sleeping, __ATOMIC_SEQ_CST))
        grurt_worker_wake(w);
}

/* Withdraw the job if the worker has not started it (unless `wait`); else wait until it
 * finished. Returns 1 if the worker ran the job. */
static int grurt_pool_collect(grurt_worker *w, int wait) {
    int posted = GRURT_WORKER_POSTED;
    if (!wait && __atomic_compare_exchange_n(&w->state, &posted, GRURT_WORKER_FREE, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE))
        return 0;
    for (int spins = 0; __atomic_load_n(&w->state, __ATOMIC_ACQUIRE) != GRURT_WORKER_DONE; ++spins) {
        if (spins < 4096)
            grurt_cpu_relax();
        else
            sched_yield();      /* the worker lost its core: give it ours */
    }
    __atomic_store_n(&w->state, GRURT_WORKER_FREE, __ATOMIC_RELEASE);
    return 1;
}

/* Runs fn(arg, 0) here and fn(arg, k) on up to threads - 1 free workers (so that the callers
 * inside the pool and their workers never outnumber the usable CPUs); returns the number of
 * threads that ran fn. With `wait` (tests: every worker taken must take part), a job that
 * no worker has started is waited for instead of withdrawn. */
static int grurt_pool_run_wait(int threads, grurt_pool_fn fn, void *arg, int wait) {
    grurt_worker *taken[GRURT_POOL_MAX_WORKERS];
    pthread_once(&grurt_pool_once, grurt_pool_init);
    int callers = __atomic_add_fetch(&grurt_pool.active_callers, 1, __ATOMIC_ACQ_REL);
    int want = threads - 1;
    /* each other caller inside the pool already has a CPU of its own */
    int room = grurt_pool.capacity - (callers - 1);
    if (want > room)
        want = room;
    int n = grurt_pool_reserve(want, taken);
    for (int k = 0; k < n; ++k)
        grurt_pool_post(taken[k], fn, arg, k + 1);
    fn(arg, 0);
    int ran = 1;
    for (int k = 0; k < n; ++k)
        ran += grurt_pool_collect(taken[k], wait);
    __atomic_sub_fetch(&grurt_pool.active_callers, 1, __ATOMIC_ACQ_REL);
    return ran;
}

static int grurt_pool_run(int threads, grurt_pool_fn fn, void *arg) {
    return grurt_pool_run_wait(threads, fn, arg, 0);
}

/* Threads a call may use: the usable CPUs when the pool started (cached; CPUs - 1 workers). */
static int grurt_pool_cpus(void) {
    pthread_once(&grurt_pool_once, grurt_pool_init);
    return grurt_pool.capacity + 1;
}

/* A cheap clock for comparing durations measured on the same machine: the time-stamp counter
 * where there is one (rdtsc costs ~20 cycles; clock_gettime ~100 ns in this VM), else ns. */
static inline long grurt_ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
    return (long)__builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    long v;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(v));
    return v;
#else
    return grurt_now_ns();
#endif
}

/* Workers created so far (for tests). */
static int grurt_pool_workers(void) {
    pthread_once(&grurt_pool_once, grurt_pool_init);
    return __atomic_load_n(&grurt_pool.started, __ATOMIC_ACQUIRE);
}

static inline int grurt_load_acquire(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void grurt_store_release(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int grurt_cas(int *p, int expected, int desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

/* ---- shared work ----
 *
 * A job's items are claimed one at a time from an atomic counter: whoever is free takes the
 * next item, so a thread that is slow (its core is busy) does fewer, and one that arrives
 * late finds the rest done. */
static inline int grurt_claim(int *next) { return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED); }

/* Phased work (the steps of a recurrence split by units): ticket t is item t % per_phase of
 * phase t / per_phase, and may start only when every item of the previous phases is done.
 * A thread claims a ticket, waits for its phase to open, runs the item and counts it done.
 * No barrier: nobody waits for a thread that has not claimed anything. */
typedef struct {
    int next;                 /* the next ticket, atomic */
    char pad0[60];
    int done;                 /* items finished, atomic; phase p is open when done >= p * per_phase */
    char pad1[60];
    int per_phase;
    int total;                /* tickets in all */
} grurt_phased;

static inline void grurt_phased_init(grurt_phased *w, int per_phase, int phases) {
    w->next = 0;
    w->done = 0;
    w->per_phase = per_phase;
    w->total = per_phase * phases;
}

/* Claims the next ticket and waits until its phase is open; returns -1 when all are taken.
 * *waited_ns accumulates the time spent waiting. */
static inline int grurt_phased_claim(grurt_phased *w, long *waited_ns) {
    int t = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED);
    if (t >= w->total)
        return -1;
    int ready = t - t % w->per_phase;
    if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE) < ready) {
        long start = grurt_now_ns();
        int spins = 0;
        while (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE) < ready) {
            grurt_cpu_relax();
            /* the thread we wait for lost its core: after ~50 µs, let it have ours */
            if (++spins % 256 == 0 && grurt_now_ns() - start > 50000)
                sched_yield();
        }
        *waited_ns += grurt_now_ns() - start;
    }
    return t;
}

static inline void grurt_phased_done(grurt_phased *w) { __atomic_add_fetch(&w->done, 1, __ATOMIC_RELEASE); }

#endif
