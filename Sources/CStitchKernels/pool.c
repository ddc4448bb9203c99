#define _GNU_SOURCE
#include "stitch_kernels.h"
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A pool of worker threads for Stitch's parallel loops. Workers spin for a short time after each
   job (a model's layers come back to back, and waking a sleeping thread costs more than a small
   layer), then sleep on a condition variable. The spin is bounded in time, not rounds (a pause
   instruction takes 10 to 150 cycles depending on the CPU), and short: a spinning worker takes
   a core from whatever else runs on the machine, other processes or a server's event loops.

   A job is published in one atomic word, `claim`: job number (24 bits), iteration count (20 bits)
   and next iteration (20 bits). An iteration is taken by compare-and-swap on that word, so a
   worker late from a finished job can never take an iteration of the next one, and the job's
   function and context stay valid while any of its iterations can still be taken. */

#define MAX_WORKERS 255
#define SPIN_NANOSECONDS 100000L

static struct {
    pthread_once_t started;
    _Atomic uint64_t claim;
    _Atomic long done;            /* iterations finished in the current job */
    _Atomic long participants;    /* how many threads may work on the current job, caller included */
    _Atomic int busy;             /* a job is running: other callers run theirs inline */
    _Atomic long sleepers;
    stitch_task function;
    void *context;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
} pool = {.started = PTHREAD_ONCE_INIT, .mutex = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_nanoseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static inline uint64_t job_of(uint64_t claim) { return claim >> 40; }
static inline uint64_t count_of(uint64_t claim) { return (claim >> 20) & 0xFFFFF; }
static inline uint64_t index_of(uint64_t claim) { return claim & 0xFFFFF; }

/* Takes and runs iterations of job `job` until none is left. */
static void work_on(uint64_t job) {
    uint64_t claim = atomic_load(&pool.claim);
    while (job_of(claim) == job && index_of(claim) < count_of(claim)) {
        if (atomic_compare_exchange_weak(&pool.claim, &claim, claim + 1)) {
            pool.function(pool.context, (long)index_of(claim));
            atomic_fetch_add(&pool.done, 1);
            claim = atomic_load(&pool.claim);
        }
    }
}

static void *worker_main(void *argument) {
    long rank = (long)(intptr_t)argument;   /* 1 ... workers; the caller is 0 */
    uint64_t seen = job_of(atomic_load(&pool.claim));
    for (;;) {
        uint64_t job;
        long long spin_end = now_nanoseconds() + SPIN_NANOSECONDS;
        long spins = 0;
        while ((job = job_of(atomic_load(&pool.claim))) == seen) {
            /* the clock is read every 64 rounds: a vDSO call, cheap beside 64 pauses */
            if ((++spins & 63) != 0 || now_nanoseconds() < spin_end) { relax(); continue; }
            atomic_fetch_add(&pool.sleepers, 1);
            pthread_mutex_lock(&pool.mutex);
            while (job_of(atomic_load(&pool.claim)) == seen) pthread_cond_wait(&pool.wake, &pool.mutex);
            pthread_mutex_unlock(&pool.mutex);
            atomic_fetch_sub(&pool.sleepers, 1);
            spin_end = now_nanoseconds() + SPIN_NANOSECONDS;
        }
        seen = job;
        if (rank < atomic_load(&pool.participants)) work_on(job);
    }
    return NULL;
}

/* Dynamic adjustment, as OpenMP runtimes offer it (OMP_DYNAMIC): a region uses no more threads than the CPUs other
   processes leave free. At most every 100 ms the caller of a region compares the busy time of this process's CPUs
   (/proc/stat) with this process's own CPU time over the window since; what others took, rounded to whole CPUs, is
   left to them. Split over a core that another CPU-bound process shares, a region waits for the part whose thread is
   paused, often for a whole scheduler slice; run on fewer threads, with the idle workers asleep, the scheduler gives
   those threads the cores that are free. (Regions long beside those pauses still ask for every thread: Parallel.swift's
   `threads(work:)`.) Only the caller holding `pool.busy` touches this state. */
#define LOAD_WINDOW_NANOSECONDS 100000000LL
#define MAX_CPUS 1024

static struct {
    int cpus[MAX_CPUS];        /* this process's CPUs (its affinity mask) */
    long cpu_count;
    long long checked, own;    /* ns: when the window began, and this process's CPU time then */
    unsigned long long busy;   /* busy ticks of those CPUs then */
    _Atomic long left;         /* CPUs other processes leave to this one; 0 until a window has closed */
    int unreadable;            /* no /proc/stat: no adjustment */
} load;

unsigned long long stitch_stat_busy_ticks(const char *text, const int *cpus, long count) {
    unsigned long long total = 0;
    for (const char *line = text, *next; line && *line; line = next) {
        const char *newline = strchr(line, '\n');
        next = newline ? newline + 1 : NULL;
        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9') continue;
        char *end;
        long cpu = strtol(line + 3, &end, 10);
        int wanted = 0;
        for (long i = 0; i < count && !wanted; i++) wanted = cpus[i] == cpu;
        if (!wanted) continue;
        unsigned long long field[8] = {0};   /* user nice system idle iowait irq softirq steal */
        for (int f = 0; f < 8; f++) field[f] = strtoull(end, &end, 10);
        total += field[0] + field[1] + field[2] + field[5] + field[6] + field[7];
    }
    return total;
}

long stitch_cpus_left(long cpus, long left_before, double busy_seconds, double own_seconds, double wall_seconds) {
    if (!(wall_seconds > 0)) return cpus;
    double others = (busy_seconds - own_seconds) / wall_seconds;
    long taken = others > 0 ? (long)(others + 0.5) : 0;
    /* A CPU others took is given back only once they use less than a quarter of it: this process's threads on the core
       it shares with them count as its own time, so a busy loop there shows as about half a CPU while it still wants
       a whole one, and a plain rounding would flip between the two verdicts from one window to the next. */
    long taken_before = left_before > 0 ? cpus - left_before : 0;
    if (taken < taken_before && others > (double)taken_before - 0.75) taken = taken_before;
    long left = cpus - taken;
    return left < 1 ? 1 : left > cpus ? cpus : left;
}

static void update_load(void) {
    long long now = now_nanoseconds();
    if (load.unreadable || (load.checked != 0 && now - load.checked < LOAD_WINDOW_NANOSECONDS)) return;
    static char text[1 << 16];   /* the cpu lines come first; the rest may be cut */
    int file = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (file < 0) { load.unreadable = 1; return; }
    long length = 0, got;
    while (length < (long)sizeof text - 1 && (got = read(file, text + length, sizeof text - 1 - length)) > 0) length += got;
    close(file);
    text[length] = 0;
    struct timespec cpu_time;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_time);
    long long own = (long long)cpu_time.tv_sec * 1000000000LL + cpu_time.tv_nsec;
    unsigned long long busy = stitch_stat_busy_ticks(text, load.cpus, load.cpu_count);
    if (load.checked != 0) {
        double tick = 1.0 / (double)sysconf(_SC_CLK_TCK);
        atomic_store(&load.left, stitch_cpus_left(load.cpu_count, atomic_load(&load.left), (double)(busy - load.busy) * tick,
                                                  (double)(own - load.own) / 1e9, (double)(now - load.checked) / 1e9));
    }
    load.checked = now;
    load.own = own;
    load.busy = busy;
}

/* `threads` less the CPUs others took (never more than asked: an explicit oversubscription stays). */
static long threads_left(long threads) {
    long left = atomic_load(&load.left);
    return left > 0 && left < load.cpu_count && threads > left ? left : threads;
}

/* The CPUs of this process's affinity mask, the first `room` of them listed in `cpus`: their count, 0 where the
   mask cannot be read. */
static long affinity(int *cpus, long room) {
    long count = 0;
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        if (count < room) cpus[count] = cpu;
        count++;
    }
#else
    (void)cpus, (void)room;
#endif
    return count;
}

static void find_cpus(void) {
    long count = affinity(load.cpus, MAX_CPUS);
    load.cpu_count = count < MAX_CPUS ? count : MAX_CPUS;
    if (load.cpu_count == 0) load.unreadable = 1;
}

static void start_workers(void) {
    find_cpus();
    long cores = stitch_affinity_cpus();
    long wanted = cores > 1 ? cores - 1 : 0;
    if (wanted > MAX_WORKERS) wanted = MAX_WORKERS;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    for (long i = 0; i < wanted; i++) {
        pthread_t thread;
        if (pthread_create(&thread, &attributes, worker_main, (void *)(intptr_t)(i + 1)) != 0) break;
    }
    pthread_attr_destroy(&attributes);
}

void stitch_parallel_for(long count, long threads, stitch_task function, void *context) {
    int idle = 0;
    if (count <= 1 || threads <= 1 || count > 0xFFFFF || !atomic_compare_exchange_strong(&pool.busy, &idle, 1)) {
        for (long i = 0; i < count; i++) function(context, i);
        return;
    }
    pthread_once(&pool.started, start_workers);
    pool.function = function;
    pool.context = context;
    atomic_store(&pool.participants, threads);
    atomic_store(&pool.done, 0);
    uint64_t job = (job_of(atomic_load(&pool.claim)) + 1) & 0xFFFFFF;
    atomic_store(&pool.claim, (job << 40) | ((uint64_t)count << 20));
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mutex);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mutex);
    }
    work_on(job);
    /* The last iterations may be on a worker the scheduler has paused (another process shares its core): spin
       briefly, then yield, so that on a shared core the waiting caller gives its time to the worker it waits for. */
    long long spin_end = now_nanoseconds() + SPIN_NANOSECONDS;
    long spins = 0;
    while (atomic_load(&pool.done) < count) {
        if ((++spins & 63) != 0 || now_nanoseconds() < spin_end) relax(); else sched_yield();
    }
    atomic_store(&pool.busy, 0);
}

long stitch_parallel_threads(long threads) {
    int idle = 0;
    if (threads <= 1) return threads;
    /* The window is measured by whichever caller holds the pool; a busy pool's callers read the last result (the
       caller of a region asks here first, so stitch_parallel_for itself needs no measuring). */
    if (atomic_compare_exchange_strong(&pool.busy, &idle, 1)) {
        pthread_once(&pool.started, start_workers);
        update_load();
        atomic_store(&pool.busy, 0);
    }
    return threads_left(threads);
}

long stitch_affinity_cpus(void) {
    long count = affinity(NULL, 0);
    if (count > 0) return count;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? online : 1;
}
