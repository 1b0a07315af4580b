/* Standalone checks and timings of src/grurt/_pool.h.
 *
 *   cc -O2 -pthread -Isrc/grurt tests/c/pool_harness.c -o /tmp/pool_harness && /tmp/pool_harness
 *
 * Checks: every item of a job runs exactly once whatever the number of threads; phased work
 * keeps phase order (each item sees every item of the previous phase); concurrent callers
 * never hold more workers than the pool has; a forked child runs jobs with new workers.
 * Times: a call to grurt_pool_run with an empty job against pthread_create + join.
 */
#include "_pool.h"
#include <assert.h>
#include <stdio.h>
#include <sys/wait.h>

typedef struct {
    int next, n;
    int *hits;
    int ran_by[64];
} count_job;

static void count_fn(void *arg, int slot) {
    count_job *j = (count_job *)arg;
    for (int i; (i = grurt_claim(&j->next)) < j->n;) {
        __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&j->ran_by[slot], 1, __ATOMIC_RELAXED);
    }
}

static void check_counts(int threads, int n) {
    count_job j = {0};
    j.n = n;
    j.hits = calloc(n, sizeof(int));
    int ran = grurt_pool_run(threads, count_fn, &j);
    assert(ran >= 1 && ran <= threads);
    for (int i = 0; i < n; ++i)
        assert(j.hits[i] == 1);
    free(j.hits);
}

typedef struct {
    grurt_phased w;
    int phases, per_phase;
    int *value;          /* value[p * per_phase + i] = 1 + sum of phase p-1 */
} phased_job;

static void phased_fn(void *arg, int slot) {
    (void)slot;
    phased_job *j = (phased_job *)arg;
    long waited = 0;
    for (int t; (t = grurt_phased_claim(&j->w, &waited)) >= 0;) {
        int p = t / j->per_phase;
        long long sum = 0;
        if (p > 0)
            for (int i = 0; i < j->per_phase; ++i)
                sum += j->value[(p - 1) * j->per_phase + i];
        j->value[t] = (int)((1 + sum) % 1000003);
        grurt_phased_done(&j->w);
    }
}

static void check_phased(int threads) {
    phased_job j;
    j.phases = 200;
    j.per_phase = 3;
    j.value = calloc(j.phases * j.per_phase, sizeof(int));
    grurt_phased_init(&j.w, j.per_phase, j.phases);
    grurt_pool_run(threads, phased_fn, &j);
    /* the values one thread computes in order: v_p = 1 + per_phase * v_(p-1) */
    long long v = 0;
    for (int p = 0; p < j.phases; ++p) {
        v = (1 + (p == 0 ? 0 : j.per_phase * v)) % 1000003;
        for (int i = 0; i < j.per_phase; ++i)
            assert(j.value[p * j.per_phase + i] == (int)v);
    }
    free(j.value);
}

static void *caller_thread(void *arg) {
    (void)arg;
    for (int k = 0; k < 2000; ++k)
        check_counts(4, 64);
    return NULL;
}

static void empty_fn(void *arg, int slot) { (void)arg; (void)slot; }
static void *empty_thread(void *arg) { (void)arg; return NULL; }

int main(void) {
    for (int threads = 1; threads <= 8; ++threads)
        for (int n = 0; n < 50; n += 7)
            check_counts(threads, n);
    for (int threads = 1; threads <= 4; ++threads)
        check_phased(threads);
    printf("workers after single-caller jobs: %d (capacity %d)\n", grurt_pool_workers(), grurt_pool.capacity);

    pthread_t callers[4];
    for (int i = 0; i < 4; ++i)
        pthread_create(&callers[i], NULL, caller_thread, NULL);
    for (int i = 0; i < 4; ++i)
        pthread_join(callers[i], NULL);
    assert(grurt_pool_workers() <= grurt_pool.capacity);
    printf("4 concurrent callers x 2000 jobs: ok, workers %d\n", grurt_pool_workers());

    pid_t child = fork();
    if (child == 0) {
        assert(grurt_pool_workers() == 0);
        for (int threads = 1; threads <= 4; ++threads)
            check_counts(threads, 100);
        check_phased(2);
        _exit(grurt_pool_workers() == grurt_pool.capacity ? 0 : 3);
    }
    int status;
    waitpid(child, &status, 0);
    assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("forked child: new workers, jobs ok\n");

    /* timings */
    int reps = 20000;
    long start = grurt_now_ns();
    for (int k = 0; k < reps; ++k)
        grurt_pool_run(2, empty_fn, NULL);
    printf("grurt_pool_run(2, empty job), back to back: %.2f us per call\n", (grurt_now_ns() - start) / 1e3 / reps);
    struct timespec pause = {0, 1000000};
    long total = 0;
    for (int k = 0; k < 200; ++k) {
        nanosleep(&pause, NULL);           /* the worker has gone to sleep */
        start = grurt_now_ns();
        grurt_pool_run(2, empty_fn, NULL);
        total += grurt_now_ns() - start;
    }
    printf("grurt_pool_run(2, empty job) after 1 ms idle: %.2f us per call\n", total / 1e3 / 200);
    start = grurt_now_ns();
    for (int k = 0; k < 2000; ++k) {
        pthread_t t;
        pthread_create(&t, NULL, empty_thread, NULL);
        pthread_join(t, NULL);
    }
    printf("pthread_create + join: %.2f us per call\n", (grurt_now_ns() - start) / 1e3 / 2000);
    puts("pool harness: all checks passed");
    return 0;
}
