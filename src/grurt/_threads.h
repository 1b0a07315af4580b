/* Synchronization for the threads of one call (_threads.pxi, the unit split of a GRU layer).
 *
 * A reusable barrier: a thread that arrives early spins for a few microseconds (the usual
 * wait when the threads have cores of their own), then sleeps, so that a thread that lost its
 * core to another process can get one back. */
#ifndef GRURT_THREADS_H
#define GRURT_THREADS_H

#include <pthread.h>
#include <sched.h>

typedef struct {
    int arrived, generation, parties;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} grurt_barrier;

static void grurt_barrier_wait(grurt_barrier *b) {
    int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->parties) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        pthread_mutex_lock(&b->lock);
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&b->wake);
        pthread_mutex_unlock(&b->lock);
        return;
    }
    for (int spins = 0; spins < 200000; ++spins)
        if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != generation)
            return;
    pthread_mutex_lock(&b->lock);
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation)
        pthread_cond_wait(&b->wake, &b->lock);
    pthread_mutex_unlock(&b->lock);
}

static void grurt_barrier_init(grurt_barrier *b, int parties) {
    b->arrived = b->generation = 0;
    b->parties = parties;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->wake, NULL);
}

static void grurt_barrier_destroy(grurt_barrier *b) {
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->wake);
}

static inline int grurt_load_acquire(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void grurt_store_release(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

#endif
