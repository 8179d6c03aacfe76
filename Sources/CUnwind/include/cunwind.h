// Thin C over libunwind's remote API. Swift cannot call it directly: the
// entry points (unw_init_remote, unw_step, unw_get_reg) are macros for
// _Ux86_64_* functions, and libunwind reads the tracee through a struct of C
// callbacks. The callbacks here serve memory from the tracer's copies of
// mapped files (cu_set_modules) or a page cache filled by process_vm_readv
// (one syscall per 4 KiB page instead of one PTRACE_PEEKDATA per word),
// registers from one PTRACE_GETREGS per call stack, and unwind tables from a
// module table found in Swift (cu_set_modules); the rest is delegated to
// libunwind-ptrace's _UPT_* callbacks. Which pages may stay cached is decided
// by the Swift caller (cu_set_stable_ranges).
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
    uint64_t window_reads;          ///< of memory_reads, those served from a file window (cu_set_modules)
    uint64_t table_lookups;         ///< find_proc_info calls answered from the module table
    uint64_t module_misses;         ///< of those, IPs outside every module (the miss callback was asked)
    uint64_t forced_page_reads;     ///< pages process_vm_readv refused, read through /proc/PID/mem (PROT_NONE)
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

/// One executable segment of a mapped ELF file, and where its unwind table
/// (.eh_frame_hdr's binary-search table) is in the tracee. Found in Swift
/// from the process's mappings and the file, never by libunwind-ptrace.
typedef struct cu_module {
    uint64_t start_ip, end_ip;  ///< the segment's code, [start_ip, end_ip)
    uint64_t segbase;           ///< the tracee address of .eh_frame_hdr; 0: no table (frame pointers)
    uint64_t table_data;        ///< the tracee address of its search table
    uint64_t table_len;         ///< the table's size in 8-byte words (one entry each)
} cu_module;

/// Tracee memory that is a copy of a file's bytes (a read-only PT_LOAD
/// segment as mapped): served from the tracer's own mapping of the file.
typedef struct cu_file_window {
    uint64_t start, end;        ///< tracee range [start, end)
    const void *bytes;          ///< the same bytes in the tracer
} cu_file_window;

/// Called by find_proc_info when no module holds `ip`. It may hand down a new
/// table (cu_set_modules) and returns nonzero when it did; the lookup is then
/// tried once more.
typedef int (*cu_module_miss)(void *context, uint64_t ip);

/// Replaces the modules (sorted by start_ip, not overlapping) and file
/// windows (sorted, not overlapping); copied. The bytes of the windows must
/// stay valid until the next call or the unwinder's destruction. From the
/// first call on, find_proc_info uses these tables only: an IP outside every
/// module, or in one without a table, gets -UNW_ENOINFO, on which libunwind
/// follows the frame pointer. -ENOMEM on failure (the tables are then empty).
int cu_set_modules(cu_unwinder *unwinder, const cu_module *modules, size_t count,
                   const cu_file_window *windows, size_t window_count, cu_module_miss miss, void *context);

/// libunwind-ptrace's per-thread state (_UPT_create); NULL when out of memory.
void *cu_thread_create(int32_t tid);
void cu_thread_destroy(void *thread);

/// Unwinds the ptrace-stopped thread `tid` (whose cu_thread_create handle is
/// `thread`) into ips, innermost first, at most max_depth entries. Stops at a
/// zero IP or when unw_step returns <= 0. Returns the count, or -errno when the
/// registers cannot be read (ESRCH: the thread is gone), or libunwind's
/// negative UNW_E* code when unwinding cannot start. `by_fp` (NULL, or
/// max_depth bytes): 1 for each frame reached by frame pointer because the
/// frame below it had no unwind information, else 0.
int cu_call_stack(cu_unwinder *unwinder, int32_t tid, void *thread, uint64_t *ips, uint8_t *by_fp,
                  int max_depth);

void cu_unwinder_stats(const cu_unwinder *unwinder, cu_stats *stats);

/// For measurements only: the same walk through libunwind-ptrace's stock
/// accessors (one PTRACE_PEEKDATA per word) in a fresh uncached address
/// space, with `thread` from cu_thread_create. Same results as cu_call_stack.
int cu_stock_call_stack(void *thread, uint64_t *ips, int max_depth);

#ifdef __cplusplus
}
#endif

#endif
