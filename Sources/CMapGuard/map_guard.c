#define _GNU_SOURCE
#include "map_guard.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

enum { slot_count = 4096 };

// Written under `lock` by register/unregister; read without locks by the signal handler, which sees either a
// whole registration (base is stored last, with release order) or none.
static struct {
    _Atomic(uintptr_t) base;
    size_t size;
    atomic_int damaged;
} slots[slot_count];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t installed = PTHREAD_ONCE_INIT;
static struct sigaction previous;
static atomic_ulong faults;

static void on_bus_error(int signal_number, siginfo_t *info, void *context) {
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < slot_count; i++) {
        uintptr_t base = atomic_load_explicit(&slots[i].base, memory_order_acquire);
        if (base == 0 || address < base || address >= base + slots[i].size) continue;
        uintptr_t page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t page = address & ~(page_size - 1);
        // Zero pages from the fault to the mapping's end: the read resumes, the rest of the file reads as zeros.
        if (mmap((void *)page, base + slots[i].size - page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
            atomic_store(&slots[i].damaged, 1);
            atomic_fetch_add(&faults, 1);
            return;
        }
        break;
    }
    // Not ours: hand over to what was there before (by default, the process ends with SIGBUS).
    sigaction(SIGBUS, &previous, NULL);
    (void)signal_number;
    (void)context;
}

static void install(void) {
    struct sigaction action = {0};
    action.sa_sigaction = on_bus_error;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &previous);
}

int stitch_map_guard_register(const void *base, size_t size) {
    pthread_once(&installed, install);
    pthread_mutex_lock(&lock);
    int found = -1;
    for (int i = 0; i < slot_count && found < 0; i++) {
        if (atomic_load(&slots[i].base) != 0) continue;
        slots[i].size = size;
        atomic_store(&slots[i].damaged, 0);
        atomic_store_explicit(&slots[i].base, (uintptr_t)base, memory_order_release);
        found = i;
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void stitch_map_guard_unregister(int slot) {
    if (slot < 0 || slot >= slot_count) return;
    pthread_mutex_lock(&lock);
    atomic_store(&slots[slot].base, 0);
    pthread_mutex_unlock(&lock);
}

int stitch_map_guard_damaged(int slot) {
    return slot >= 0 && slot < slot_count && atomic_load(&slots[slot].damaged);
}

unsigned long stitch_map_guard_fault_count(void) {
    return atomic_load(&faults);
}
