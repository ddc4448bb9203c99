#define _GNU_SOURCE
#include "stitch_kernels.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

/* The memory products stream: packed weights, and each thread's packing buffers.

   Packed weights are mapped in 2 MB-aligned chunks the kernel is asked to back with transparent huge pages: a product
   of a few rows (a decoding step) streams every weight once, and on 4 KB pages GPT-2's 500 MB of them need 120000 TLB
   entries a token, each miss a walk of two page tables in a virtual machine. Measured on a 2-core Zen 4 VM, side by side
   with the same build on ordinary pages: gpt2-greedy 16.6-18.2 -> 13.6-16.8 ms a token, MiniLM 64.7-74.7 -> 62.9-72.7 ms;
   CLIP at bf16 unchanged. */

enum { HUGE_PAGE = 2 << 20, ALIGNMENT = 64 };   /* ALIGNMENT: what the kernels' vector loads want */

#if defined(__linux__)
#include <sys/mman.h>

/* `size` bytes (a multiple of HUGE_PAGE), 2 MB-aligned; pages not yet touched take no memory. NULL when none is left. */
static void *map_pages(size_t size) {
    /* Over-reserve by a huge page and trim both ends to the aligned region. */
    char *raw = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *base = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (base > raw) munmap(raw, (size_t)(base - raw));
    munmap(base + size, (size_t)(raw + HUGE_PAGE - base));
    madvise(base, size, MADV_HUGEPAGE);   /* a hint: without THP the pages are ordinary ones */
    return base;
}

static void unmap_pages(void *base, size_t size) { munmap(base, size); }

#else

static void *map_pages(size_t size) { return aligned_alloc(HUGE_PAGE, size); }

static void unmap_pages(void *base, size_t size) {
    (void)size;
    free(base);
}

#endif

/* `bytes` (at least 1) rounded up to a multiple of `unit`, or 0 when that overflows. */
static size_t round_up(size_t bytes, size_t unit) {
    if (bytes == 0) bytes = 1;
    return bytes > SIZE_MAX - unit ? 0 : (bytes + unit - 1) / unit * unit;
}

/* Packed weights: carved from chunks shared by many weights (a 2 MB block each cost a CLIP model 130 MB more memory),
   handed out by a bump pointer from the first chunk with room (a weight too large for the newest chunk's tail leaves
   it to smaller ones), unmapped when their last weight is freed. */
enum { CHUNK = 32 << 20 };

typedef struct chunk {
    char *base;
    size_t size, used;
    long live;   /* allocations not yet freed */
    struct chunk *next;
} chunk;

static struct {
    pthread_mutex_t mutex;
    chunk *chunks;   /* newest first */
} arena = {.mutex = PTHREAD_MUTEX_INITIALIZER};

static chunk *new_chunk(size_t bytes) {
    size_t size = round_up(bytes, HUGE_PAGE);
    if (size == 0) return NULL;
    if (size < CHUNK) size = CHUNK;
    chunk *record = malloc(sizeof *record);
    char *base = record ? map_pages(size) : NULL;
    if (!base) {
        free(record);
        return NULL;
    }
    *record = (chunk){.base = base, .size = size};
    return record;
}

void *stitch_weight_allocate(size_t bytes) {
    size_t rounded = round_up(bytes, ALIGNMENT);
    if (rounded == 0) return NULL;
    pthread_mutex_lock(&arena.mutex);
    chunk *owner = arena.chunks;
    while (owner && owner->size - owner->used < rounded) owner = owner->next;
    if (!owner) {
        if (!(owner = new_chunk(rounded))) {
            pthread_mutex_unlock(&arena.mutex);
            return NULL;
        }
        owner->next = arena.chunks;
        arena.chunks = owner;
    }
    void *memory = owner->base + owner->used;
    owner->used += rounded;
    owner->live++;
    pthread_mutex_unlock(&arena.mutex);
    return memory;
}

void stitch_weight_free(void *memory) {
    if (!memory) return;
    pthread_mutex_lock(&arena.mutex);
    for (chunk **link = &arena.chunks; *link; link = &(*link)->next) {
        chunk *owner = *link;
        if ((char *)memory < owner->base || (char *)memory >= owner->base + owner->size) continue;
        if (--owner->live == 0) {
            *link = owner->next;
            unmap_pages(owner->base, owner->size);
            free(owner);
        }
        pthread_mutex_unlock(&arena.mutex);
        return;
    }
    pthread_mutex_unlock(&arena.mutex);
    abort();   /* not from stitch_weight_allocate: a caller's bug, never input's */
}

/* Packing buffers: each thread keeps its own between products (a product of a few rows allocated and freed them on
   every call), freed when the thread ends. Ordinary memory: on huge pages they took 4 MB a thread and measured no
   faster. */
typedef struct {
    void *base;
    size_t size;
} scratch_buffer;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void release_scratch(void *buffers) {
    scratch_buffer *slots = buffers;
    for (int slot = 0; slot < STITCH_SCRATCH_SLOTS; slot++) free(slots[slot].base);
    free(slots);
}

static void make_scratch_key(void) { pthread_key_create(&scratch_key, release_scratch); }

void *stitch_thread_scratch(int slot, size_t bytes) {
    pthread_once(&scratch_once, make_scratch_key);
    scratch_buffer *slots = pthread_getspecific(scratch_key);
    if (!slots) {
        if (!(slots = calloc(STITCH_SCRATCH_SLOTS, sizeof *slots))) return NULL;
        pthread_setspecific(scratch_key, slots);
    }
    scratch_buffer *buffer = &slots[slot];
    if (buffer->size < bytes || !buffer->base) {
        free(buffer->base);
        size_t size = round_up(bytes, ALIGNMENT);
        buffer->base = size ? aligned_alloc(ALIGNMENT, size) : NULL;
        buffer->size = buffer->base ? size : 0;
    }
    return buffer->base;
}
