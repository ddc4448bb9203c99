#ifndef STITCH_MAP_GUARD_H
#define STITCH_MAP_GUARD_H
#include <stddef.h>

// Read-only file mappings that survive their file shrinking underneath them. Reading a mapped page past the
// file's new end raises SIGBUS; for a registered mapping the handler puts zero pages there instead and marks the
// mapping damaged, so the reader finishes and its owner reports the change as an error rather than crashing.
// A SIGBUS anywhere else takes the default action.

// Registers [base, base + size); returns a slot for the other calls, or -1 when all slots are taken.
int stitch_map_guard_register(const void *base, size_t size);
void stitch_map_guard_unregister(int slot);
// Whether a read of the mapping has faulted since it was registered.
int stitch_map_guard_damaged(int slot);
// How many faults the guard has absorbed in this process: a caller compares it before and after some work.
unsigned long stitch_map_guard_fault_count(void);

#endif
