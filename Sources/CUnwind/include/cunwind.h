// Thin C over libunwind's remote API. Swift cannot call it directly: the
// entry points (unw_init_remote, unw_step, unw_get_reg) are macros for
// _Ux86_64_* functions, and libunwind reads the tracee through a struct of C
// callbacks. The callbacks here serve memory from a page cache filled by
// process_vm_readv (one syscall per 4 KiB page instead of one PTRACE_PEEKDATA
// per word) and registers from one PTRACE_GETREGS per call stack; everything
// else is delegated to libunwind-ptrace's _UPT_* callbacks. Which pages may
// stay cached is decided by the Swift caller (cu_set_stable_ranges).
// Functions return 0 (or a count) on success, a negative value on failure.
#ifndef CUNWIND_H
#define CUNWIND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// One traced process: a libunwind address space (global caching policy) and its page cache.
typedef struct cu_unwinder cu_unwinder;

/// Counters of what the callbacks did, since the unwinder was created.
typedef struct cu_stats {
    uint64_t memory_reads;          ///< access_mem calls (words) libunwind made
    uint64_t page_fills;            ///< pages read with process_vm_readv
    uint64_t page_reads;            ///< process_vm_readv calls (a stack page and up to 2 above it each)
    uint64_t word_peeks;            ///< words read with PTRACE_PEEKDATA (process_vm_readv refused the page)
    uint64_t proc_info_memory_reads; ///< of memory_reads, those made inside find_proc_info
    uint64_t register_reads;        ///< access_reg calls served from the PTRACE_GETREGS copy
} cu_stats;

/// NULL when out of memory or when libunwind refuses the address space.
cu_unwinder *cu_unwinder_create(int32_t pid);
void cu_unwinder_destroy(cu_unwinder *unwinder);

/// Replaces the half-open ranges [starts[i], ends[i]) whose pages stay cached
/// across call stacks until cu_unwinder_flush; sorted, not overlapping.
/// Pages outside them (stacks) are cached for one call stack only. -ENOMEM on failure.
int cu_set_stable_ranges(cu_unwinder *unwinder, const uint64_t *starts, const uint64_t *ends, size_t count);

/// Replaces the half-open ranges (sorted, not overlapping) where the
/// program's own userfaultfd would be asked for a missing page: never read
/// with process_vm_readv (which waits for the program's handler thread);
/// words there are read with PTRACE_PEEKDATA, which fails on such a page
/// instead. -ENOMEM on failure (the old ranges stay).
int cu_set_guarded_ranges(cu_unwinder *unwinder, const uint64_t *starts, const uint64_t *ends, size_t count);

/// Forgets every cached page and libunwind's cached unwind info (after mmap, munmap, exec).
void cu_unwinder_flush(cu_unwinder *unwinder);

/// libunwind-ptrace's per-thread state (_UPT_create); NULL when out of memory.
void *cu_thread_create(int32_t tid);
void cu_thread_destroy(void *thread);

/// Unwinds the ptrace-stopped thread `tid` (whose cu_thread_create handle is
/// `thread`) into ips, innermost first, at most max_depth entries. Stops at a
/// zero IP or when unw_step returns <= 0. Returns the count, or -errno when the
/// registers cannot be read (ESRCH: the thread is gone), or libunwind's
/// negative UNW_E* code when unwinding cannot start.
int cu_call_stack(cu_unwinder *unwinder, int32_t tid, void *thread, uint64_t *ips, int max_depth);

void cu_unwinder_stats(const cu_unwinder *unwinder, cu_stats *stats);

/// For measurements only: the same walk through libunwind-ptrace's stock
/// accessors (one PTRACE_PEEKDATA per word) in a fresh uncached address
/// space, with `thread` from cu_thread_create. Same results as cu_call_stack.
int cu_stock_call_stack(void *thread, uint64_t *ips, int max_depth);

#ifdef __cplusplus
}
#endif

#endif
