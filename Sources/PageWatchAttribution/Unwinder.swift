internal import CUnwind
import PageWatchAddressSpace
import PageWatchPtrace

/// Errors of the attribution layer.
public enum AttributionError: Error, Equatable, CustomStringConvertible {
    /// libunwind would not create an address space (or memory ran out).
    case unwinderUnavailable(pid: Int32)

    public var description: String {
        switch self {
        case let .unwinderUnavailable(pid):
            return "cannot create a libunwind address space for pid \(pid)"
        }
    }
}

/// What the unwinder's memory callbacks did since it was created: how much of
/// libunwind's word-by-word reading the page cache absorbed.
public struct UnwinderStatistics: Sendable, Equatable {
    /// Words libunwind read from the tracee.
    public var memoryReads: UInt64
    /// Pages read with `process_vm_readv`: the page cache's misses (and the
    /// stack pages read ahead with a missed one).
    public var pageFills: UInt64
    /// `process_vm_readv` calls.
    public var pageReads: UInt64
    /// Words read with `PTRACE_PEEKDATA` because `process_vm_readv` refused their page.
    public var wordPeeks: UInt64
    /// Of `memoryReads`, those made by `find_proc_info` (the `.eh_frame_hdr`
    /// table and the FDEs): proof that the delegated `_UPT_find_proc_info` reads through the cache.
    public var procInfoMemoryReads: UInt64
    /// Register reads served from the one `PTRACE_GETREGS` of each call stack.
    public var registerReads: UInt64
}

/// The call stacks of the threads of one traced process, unwound with
/// libunwind's remote API at a ptrace stop (the engine's write fault).
///
/// Fast on repeated stacks: one libunwind address space with its global
/// cache of unwind info per IP, tracee memory read a page at a time with
/// `process_vm_readv` (file-backed read-only pages, where `.eh_frame` lives,
/// kept until `mappingsChanged`; stack pages for one call stack only), and
/// registers read with one `PTRACE_GETREGS`. Use from the tracer thread only.
public final class Unwinder {
    public let pid: Int32
    private let unwinder: OpaquePointer
    /// libunwind-ptrace's per-thread handles (`_UPT_create`), kept across call stacks.
    private var threads: [Int32: UnsafeMutableRawPointer] = [:]
    /// The stable ranges come from `/proc/PID/maps`, read again lazily after a change.
    private var stableRangesAreCurrent = false
    /// The `UserfaultRanges.generation` the C side's guarded ranges come from.
    private var guardedGeneration: UInt64?

    public init(pid: Int32) throws {
        guard let u = cu_unwinder_create(pid) else { throw AttributionError.unwinderUnavailable(pid: pid) }
        self.pid = pid
        self.unwinder = u
    }

    deinit {
        for handle in threads.values { cu_thread_destroy(handle) }
        cu_unwinder_destroy(unwinder)
    }

    /// The instruction pointers of `tid`'s stack, innermost first: the first
    /// is the thread's current IP, the others are return addresses. The
    /// thread must be ptrace-stopped. At most `maxDepth` entries; empty when
    /// the thread is gone or its stack cannot be unwound at all.
    public func callStack(tid: Int32, maxDepth: Int) -> [UInt64] {
        guard maxDepth > 0 else { return [] }
        if !stableRangesAreCurrent { loadStableRanges() }
        if guardedGeneration != UserfaultRanges.shared.generation { loadGuardedRanges() }
        guard let thread = handle(for: tid) else { return [] }
        let depth = Int32(clamping: maxDepth)
        var ips = [UInt64](repeating: 0, count: Int(depth))
        let count = ips.withUnsafeMutableBufferPointer {
            cu_call_stack(unwinder, tid, thread, $0.baseAddress, depth)
        }
        guard count > 0 else { return [] }
        ips.removeLast(ips.count - Int(count))
        return ips
    }

    /// Call after the process's mappings changed (mmap, munmap, mprotect of
    /// code, exec): drops cached pages and unwind info, and libunwind-ptrace's
    /// handles, which keep the ELF image of the last module they used. `maps`:
    /// the new `/proc/PID/maps` when the caller has read it anyway; otherwise
    /// the next call stack reads it (parsing it is most of a cold unwind).
    public func mappingsChanged(maps: [Mapping]? = nil) {
        cu_unwinder_flush(unwinder)
        for handle in threads.values { cu_thread_destroy(handle) }
        threads.removeAll()
        stableRangesAreCurrent = false
        if let maps { setStableRanges(from: maps) }
    }

    /// Call when `tid` has exited: frees its handle.
    public func threadGone(tid: Int32) {
        if let handle = threads.removeValue(forKey: tid) { cu_thread_destroy(handle) }
    }

    public var statistics: UnwinderStatistics {
        var s = cu_stats()
        cu_unwinder_stats(unwinder, &s)
        return UnwinderStatistics(memoryReads: s.memory_reads, pageFills: s.page_fills, pageReads: s.page_reads,
                                  wordPeeks: s.word_peeks,
                                  procInfoMemoryReads: s.proc_info_memory_reads, registerReads: s.register_reads)
    }

    private func handle(for tid: Int32) -> UnsafeMutableRawPointer? {
        if let handle = threads[tid] { return handle }
        guard let handle = cu_thread_create(tid) else { return nil }
        threads[tid] = handle
        return handle
    }

    /// Pages that may stay cached across stops: file-backed and not writable
    /// (`.eh_frame_hdr`, `.eh_frame`, code). The engine arms writable memory
    /// read-only, so an armed `.data` page looks stable too; unwinding never
    /// reads `.data`, so that is harmless. Without maps (the process is gone)
    /// nothing is stable, which is merely slower.
    private func loadStableRanges() {
        setStableRanges(from: (try? ProcFS.maps(of: pid)) ?? [])
    }

    /// Where the program's own userfaultfd would be asked: libunwind may
    /// read anywhere a frame points (a saved frame pointer that is really
    /// data), and there `process_vm_readv` would wait for the program's
    /// handler thread, which may be held at a ptrace stop.
    private func loadGuardedRanges() {
        let ranges = UserfaultRanges.shared.all
        let starts = ranges.map(\.start.value), ends = ranges.map(\.end.value)
        if cu_set_guarded_ranges(unwinder, starts, ends, ranges.count) == 0 {
            guardedGeneration = UserfaultRanges.shared.generation
        }
    }

    private func setStableRanges(from maps: [Mapping]) {
        stableRangesAreCurrent = true
        let stable = maps
            .filter { $0.isFileBacked && !$0.protection.contains(.write) }
            .map(\.range)
            .sorted()
        let starts = stable.map(\.start.value), ends = stable.map(\.end.value)
        if cu_set_stable_ranges(unwinder, starts, ends, stable.count) != 0 {
            _ = cu_set_stable_ranges(unwinder, nil, nil, 0)
        }
    }
}
