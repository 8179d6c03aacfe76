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
    /// Of `memoryReads`, those served from the tracer's own mapping of a
    /// module's file (`.eh_frame_hdr`, `.eh_frame`, code): no syscall.
    public var windowReads: UInt64
    /// `find_proc_info` calls answered from the module table (`UnwindTables`).
    public var tableLookups: UInt64
    /// Of those, IPs outside every module with code (anonymous memory, or a
    /// module mapped since the table was made).
    public var moduleMisses: UInt64
    /// Pages `process_vm_readv` refused (`PROT_NONE`), read through `/proc/PID/mem`.
    public var forcedPageReads: UInt64
}

/// The call stacks of the threads of one traced process, unwound with
/// libunwind's remote API at a ptrace stop (the engine's write fault).
///
/// Fast on repeated stacks: one libunwind address space with its global
/// cache of unwind info per IP; unwind tables found through `UnwindTables`
/// (each module's file parsed once a session, its `.eh_frame_hdr` searched
/// in the tracer's own mapping of the file); other tracee memory read a page
/// at a time with `process_vm_readv` (file-backed read-only pages kept until
/// `mappingsChanged`; stack pages for one call stack only), and registers
/// read with one `PTRACE_GETREGS`. Use from the tracer thread only.
public final class Unwinder {
    public let pid: Int32
    private let unwinder: OpaquePointer
    /// libunwind-ptrace's per-thread handles (`_UPT_create`), kept across call stacks.
    private var threads: [Int32: UnsafeMutableRawPointer] = [:]
    /// The session's parsed ELF files.
    public let images: UnwindImageCache
    /// The process's mappings as last read or handed over; nil: read them
    /// before the next call stack.
    private var maps: [Mapping]?
    /// What C was handed (`cu_set_modules`), kept alive here.
    private var tables = UnwindTables()
    /// Set when a lookup that missed every module read the maps again: the
    /// next miss does not read them until the mappings change, so code in
    /// anonymous memory (JIT) never costs a maps read per fault.
    private var missedSinceChange = false
    /// The thread whose `/proc/TID/maps` is read: the last one unwound.
    private var mapsReader: Int32
    /// The `UserfaultRanges.generation` the C side's guarded ranges come from.
    private var guardedGeneration: UInt64?

    public init(pid: Int32, images: UnwindImageCache = UnwindImageCache()) throws {
        guard let u = cu_unwinder_create(pid) else { throw AttributionError.unwinderUnavailable(pid: pid) }
        self.pid = pid
        self.unwinder = u
        self.images = images
        self.mapsReader = pid
    }

    deinit {
        for handle in threads.values { cu_thread_destroy(handle) }
        cu_unwinder_destroy(unwinder)
        // The process exited or exec'd: the session forgets the files only it mapped.
        tables = UnwindTables()
        images.dropUnused()
    }

    /// The instruction pointers of `tid`'s stack, innermost first: the first
    /// is the thread's current IP, the others are return addresses. The
    /// thread must be ptrace-stopped. At most `maxDepth` entries; empty when
    /// the thread is gone or its stack cannot be unwound at all.
    public func callStack(tid: Int32, maxDepth: Int) -> [UInt64] { unwind(tid: tid, maxDepth: maxDepth).ips }

    /// A call stack, and which of its frames were reached by frame pointer.
    public struct CallStack: Sendable, Equatable {
        /// Innermost first, as `callStack` gives them.
        public var ips: [UInt64] = []
        /// Indices of `ips` the unwinder reached by following the frame
        /// pointer, the frame below having no unwind information (JIT code,
        /// assembly without CFI); ascending, usually empty.
        public var framePointerFrames: [Int] = []

        public init(ips: [UInt64] = [], framePointerFrames: [Int] = []) {
            self.ips = ips
            self.framePointerFrames = framePointerFrames
        }
    }

    /// `callStack` with the frames found by frame pointer marked. Such a
    /// frame is kept only when it looks like one: the stack pointer moved
    /// up (checked in C) and the return address is in executable memory;
    /// the stack ends before the first that does not.
    public func unwind(tid: Int32, maxDepth: Int) -> CallStack {
        guard maxDepth > 0 else { return CallStack() }
        // Through the thread: once the main thread has exited, /proc/PID/maps is empty.
        mapsReader = tid
        if maps == nil { use(maps: (try? ProcFS.maps(of: tid)) ?? []) }
        if guardedGeneration != UserfaultRanges.shared.generation { loadGuardedRanges() }
        guard let thread = handle(for: tid) else { return CallStack() }
        let depth = Int32(clamping: maxDepth)
        var ips = [UInt64](repeating: 0, count: Int(depth))
        var byFramePointer = [UInt8](repeating: 0, count: Int(depth))
        let count = ips.withUnsafeMutableBufferPointer { ips in
            byFramePointer.withUnsafeMutableBufferPointer {
                cu_call_stack(unwinder, tid, thread, ips.baseAddress, $0.baseAddress, depth)
            }
        }
        guard count > 0 else { return CallStack() }
        ips.removeLast(ips.count - Int(count))
        var stack = CallStack(ips: ips)
        for i in 1..<ips.count where byFramePointer[i] != 0 {
            guard isCode(ips[i]) else {
                stack.ips.removeLast(ips.count - i)
                break
            }
            stack.framePointerFrames.append(i)
        }
        return stack
    }

    /// Whether `ip` is in an executable mapping (maps read again once when
    /// it is in none: code mapped since).
    private func isCode(_ ip: UInt64) -> Bool {
        if let m = mapping(at: ip) { return m.protection.contains(.execute) }
        return moduleMissed(ip: ip) && mapping(at: ip)?.protection.contains(.execute) == true
    }

    /// The mapping holding `ip` (this is the fault path: by halving).
    private func mapping(at ip: UInt64) -> Mapping? { maps?.mapping(containing: ip) }

    /// Call after the process's mappings changed (mmap, munmap, mprotect of
    /// code, exec): drops cached pages and unwind info, and makes the module
    /// table again (files already parsed are not read again). `maps`: the new
    /// `/proc/PID/maps` when the caller has read it anyway; otherwise the
    /// next call stack reads it.
    public func mappingsChanged(maps: [Mapping]? = nil) {
        cu_unwinder_flush(unwinder)
        for handle in threads.values { cu_thread_destroy(handle) }
        threads.removeAll()
        self.maps = nil
        missedSinceChange = false
        if let maps { use(maps: maps) }
    }

    /// Call when the program unmapped `range` (`munmap` returned): the
    /// modules there leave the table, and the session forgets files no
    /// process maps any more. No maps read; nothing flushed when only
    /// anonymous memory went (heap churn).
    public func unmapped(_ range: AddressRange) {
        guard let current = maps else { return }
        var changed = false, filesChanged = false
        var kept: [Mapping] = []
        for m in current {
            guard m.range.overlaps(range) else { kept.append(m); continue }
            changed = true
            filesChanged = filesChanged || m.isFileBacked
            if m.range.start < range.start {
                var below = m
                below.range.end = range.start
                kept.append(below)
            }
            if range.end < m.range.end {
                var above = m
                above.offset = m.isFileBacked ? m.offset &+ (range.end - m.range.start) : m.offset
                above.range.start = range.end
                kept.append(above)
            }
        }
        guard changed else { return }
        guard filesChanged else {
            maps = kept
            return
        }
        // Cached unwind info and pages of what was there are dropped with it.
        cu_unwinder_flush(unwinder)
        use(maps: kept)
        images.dropUnused()
    }

    /// Call when `tid` has exited: frees its handle.
    public func threadGone(tid: Int32) {
        if let handle = threads.removeValue(forKey: tid) { cu_thread_destroy(handle) }
    }

    public var statistics: UnwinderStatistics {
        var s = cu_stats()
        cu_unwinder_stats(unwinder, &s)
        return UnwinderStatistics(
            memoryReads: s.memory_reads, pageFills: s.page_fills, pageReads: s.page_reads,
            wordPeeks: s.word_peeks,
            procInfoMemoryReads: s.proc_info_memory_reads, registerReads: s.register_reads,
            windowReads: s.window_reads, tableLookups: s.table_lookups,
            moduleMisses: s.module_misses, forcedPageReads: s.forced_page_reads)
    }

    /// The modules with code in the table handed to C, as (start, end, has
    /// an `.eh_frame_hdr` table): for tests.
    public var modules: [(range: AddressRange, hasTable: Bool)] {
        tables.modules.map { (AddressRange($0.start_ip, $0.end_ip), $0.segbase != 0) }
    }

    private func handle(for tid: Int32) -> UnsafeMutableRawPointer? {
        if let handle = threads[tid] { return handle }
        guard let handle = cu_thread_create(tid) else { return nil }
        threads[tid] = handle
        return handle
    }

    /// Takes `maps` as the process's mappings: the module table and the stable ranges.
    private func use(maps: [Mapping]) {
        self.maps = maps
        setStableRanges(from: maps)
        let tables = UnwindTables(maps: maps, pid: mapsReader, cache: images)
        let context = Unmanaged.passUnretained(self).toOpaque()
        let status = tables.modules.withUnsafeBufferPointer { modules in
            tables.windows.withUnsafeBufferPointer { windows in
                cu_set_modules(
                    unwinder, modules.baseAddress, modules.count, windows.baseAddress, windows.count,
                    { context, ip in
                        guard let context else { return 0 }
                        return Unmanaged<Unwinder>.fromOpaque(context).takeUnretainedValue()
                            .moduleMissed(ip: ip) ? 1 : 0
                    }, context)
            }
        }
        // On ENOMEM C holds empty tables: what it points into may go.
        self.tables = status == 0 ? tables : UnwindTables()
    }

    /// find_proc_info found no module at `ip`: the maps are read again, once
    /// until the next change, when they do not know the address at all (a
    /// module mapped without the caller telling). True when the table changed.
    private func moduleMissed(ip: UInt64) -> Bool {
        guard !missedSinceChange, let known = maps,
            !known.contains(where: { $0.range.contains(RemoteAddress(ip)) })
        else { return false }
        missedSinceChange = true
        guard let fresh = try? ProcFS.maps(of: mapsReader), fresh != known else { return false }
        use(maps: fresh)
        return true
    }

    /// Pages that may stay cached across stops: file-backed and not writable
    /// (`.eh_frame_hdr`, `.eh_frame`, code). The engine arms writable memory
    /// read-only, so an armed `.data` page looks stable too; unwinding never
    /// reads `.data`, so that is harmless. Without maps (the process is gone)
    /// nothing is stable, which is merely slower.
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
        let stable =
            maps
            .filter { $0.isFileBacked && !$0.protection.contains(.write) }
            .map(\.range)
            .sorted()
        let starts = stable.map(\.start.value), ends = stable.map(\.end.value)
        if cu_set_stable_ranges(unwinder, starts, ends, stable.count) != 0 {
            _ = cu_set_stable_ranges(unwinder, nil, nil, 0)
        }
    }
}
