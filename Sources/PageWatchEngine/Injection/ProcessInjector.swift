import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Runs PageWatch's code in one tracked process: the injection gadget and
/// its scratch pages (`RemoteSyscall`), the fault trampoline's slots and
/// their data page, and the protection changes (`protect`, `protectAll`,
/// `pin`). Every injection goes through `inject`, so a thread's side of one
/// (the syscall entry it abandons, the signals that arrived meanwhile, an
/// interrupt stop passed on the way) is noted in one place.
final class ProcessInjector {
    unowned let session: Tracker
    /// The gadget and scratch pages; nil until placed (a new image, an
    /// attach's first stop) and after a detach removed them.
    var remote: RemoteSyscall?
    /// The fault slots' data page as PageWatch maps it, when shared (`shareSlotData`).
    var slotData: SharedSlotData?
    /// False when the slots' data page may be another process's (a fork
    /// child's copy that could not be replaced): faults take the slow path.
    var slotsUsable = true

    init(session: Tracker) { self.session = session }

    func trace(_ message: @autoclosure () -> String) { session.trace(message()) }

    /// A fork child's: the parent's gadget (the page is copied with the
    /// rest), no journal (the guardian watches the attached process only),
    /// and no slot until its data page is its own (`shareSlotData`).
    func forkedCopy() -> ProcessInjector {
        let copy = ProcessInjector(session: session)
        copy.remote = remote
        copy.slotsUsable = false
        copy.remote?.journal = nil
        return copy
    }

    /// Places the gadget in a new address space, from `thread`.
    func place(in thread: TrackedThread, completing: Int64? = nil, journal: GuardianState?) throws {
        slotData = nil
        let (gadget, held) = try RemoteSyscall.bootstrap(in: thread.tid, completing: completing)
        remote = gadget
        remote?.journal = journal
        thread.signals.held.append(contentsOf: held)
    }

    /// Unmaps the scratch pages (the detach), from `thread`.
    func removeScratch(_ thread: TrackedThread) throws {
        guard var remote else { return }
        remote.restoring = try abandoningEntry(thread)
        thread.signals.held += try remote.unmapScratch(in: thread.tid)
    }

    /// One injection into `thread`, and the thread's side of it: one made at
    /// a syscall entry abandons the call (`abandoningEntry`); signals
    /// that arrived meanwhile are held; an interrupt stop passed on the way
    /// was consumed.
    func inject<Result>(
        _ thread: TrackedThread, _ body: (RemoteSyscall, Int64?) throws -> (Result, RemoteSyscall.Outcome)
    )
        throws -> Result?
    {
        guard var remote else { return nil }
        remote.restoring = try abandoningEntry(thread)
        let (result, outcome) = try body(remote, thread.syscall.completing)
        thread.signals.held.append(contentsOf: outcome.heldSignals)
        if outcome.consumedInterrupt { thread.interrupt.pending = false }
        return result
    }

    /// At a syscall entry: the registers an injection gives the thread back.
    /// Its first injection skips the call (`orig_rax = -1`), so each gives
    /// it back already rewound onto its `syscall` instruction with the call
    /// skipped (`abandoningSyscall`), and the guardian's journal names
    /// those: PageWatch dying at any moment leaves the thread to make its
    /// call again, never to return the skipped call's -ENOSYS (a rewind
    /// left to the resume was lost with PageWatch). Before that first
    /// injection the thread is untouched at its entry, and released there
    /// it makes its call. Nil elsewhere: the thread's own registers.
    func abandoningEntry(_ thread: TrackedThread) throws -> HostArchitecture.Registers? {
        guard thread.syscall.atEntry else { return nil }
        // Read now if the entry had not needed them: nothing changed them yet.
        let entry = try thread.syscall.entryRegisters ?? HostArchitecture.readRegisters(tid: thread.tid)
        thread.syscall.entryRegisters = entry
        thread.syscall.abandoned = true
        return HostArchitecture.abandoningSyscall(entry)
    }

    /// Runs a call that takes or fills a structure in the scratch pages
    /// (`RemoteSyscall.run(_:_:input:outputCount:in:completing:)`).
    func run(
        _ number: Int64, _ arguments: [UInt64], input: [UInt8], outputCount: Int,
        _ thread: TrackedThread
    ) throws -> (value: Int64, output: [UInt8])? {
        try inject(thread) { remote, completing in
            let (outcome, raw) = try remote.run(
                number, arguments, input: input, outputCount: outputCount,
                in: thread.tid, completing: completing)
            return ((outcome.value, raw), outcome)
        }
    }

    func protect(_ range: AddressRange, _ protection: Protection, _ thread: TrackedThread) throws {
        let tid = thread.tid
        trace("  mprotect \(range) \(protection) in \(tid)")
        do {
            _ = try inject(thread) { remote, completing in
                ((), try remote.mprotect(range, protection, in: tid, completing: completing))
            }
        } catch {
            if Tracker.debug {
                trace("    failed; maps: \(mappings(overlapping: range, tid: tid))")
            }
            throw error
        }
    }

    /// Several `mprotect`s in one injection when there are several (the
    /// scratch code page's batch loop), else one; their results in order (0 or -errno).
    func protectAll(_ changes: [ProtectionChange], _ thread: TrackedThread) throws -> [Int64] {
        let tid = thread.tid
        guard changes.count > 1, Self.batchedSweeps, remote != nil else {
            return try changes.map { c in
                do { try protect(c.range, c.protection, thread); return 0 } catch TraceError.remoteSyscall(
                    _, let e, _, _)
                {
                    return -Int64(e.rawValue)
                }
            }
        }
        trace("  mprotect batch of \(changes.count) in \(tid)")
        let results =
            try inject(thread) { remote, completing in
                try remote.mprotectBatch(changes.map { ($0.range, $0.protection) }, in: tid, completing: completing)
            } ?? []
        if Tracker.debug {
            for (c, r) in zip(changes, results) where r != 0 {
                trace("    \(c.range) \(c.protection): \(r); maps: \(mappings(overlapping: c.range, tid: tid))")
            }
        }
        return results
    }

    /// `MADV_POPULATE_WRITE` of one page at each of `pages`, in one
    /// injection: the page's mapping gets its anon_vma before it is armed, so
    /// the pieces arming splits it into share it and merge again (a page
    /// first written inside a one-page piece would get its own, and that
    /// piece never merge with its neighbours). Contents are unchanged (a zero
    /// page, or a private copy of the file's). Failures are ignored (a guard
    /// page, a page armed after all); EINVAL, a kernel before 5.14, ends
    /// populating for the session. Returns the pages it populated.
    func populate(_ pages: [RemoteAddress], _ thread: TrackedThread) throws -> [RemoteAddress] {
        guard !pages.isEmpty, !Self.populateUnsupported, Self.populatesMappings else { return [] }
        let tid = thread.tid
        trace("  populate \(pages.count) mapping(s) in \(tid)")
        let results = try madvise(pages, Self.madvPopulateWrite, thread)
        for (page, r) in zip(pages, results) where r != 0 {
            if notePopulateUnsupported(r) { break }
            trace("    populate \(page.hex): \(r)")
        }
        return zip(pages, results).filter { $0.1 == 0 }.map(\.0)
    }

    /// Discards `pages` (`MADV_DONTNEED`), which PageWatch populated and the
    /// program never wrote: they are missing again, as before `populate`.
    func discard(_ pages: [RemoteAddress], _ thread: TrackedThread) throws {
        guard !pages.isEmpty else { return }
        let tid = thread.tid
        trace("  discard \(pages.count) populated page(s) in \(tid)")
        let results = try madvise(pages, Self.madvDontNeed, thread)
        for (page, r) in zip(pages, results) where r != 0 { trace("    discard \(page.hex): \(r)") }
    }

    /// `madvise(page, one page, advice)` for each of `pages`, in one injection; the results in order.
    private func madvise(_ pages: [RemoteAddress], _ advice: UInt64, _ thread: TrackedThread) throws -> [Int64] {
        try batch(
            pages.map {
                RemoteSyscall.BatchCall(number: HostArchitecture.syscalls.madvise, $0.value, Page.size, advice)
            },
            thread)
    }

    /// Runs `calls` in one injection (the scratch code page's batch loop); their results in order.
    private func batch(_ calls: [RemoteSyscall.BatchCall], _ thread: TrackedThread) throws -> [Int64] {
        try inject(thread) { remote, completing in
            try remote.batch(calls, in: thread.tid, completing: completing)
        } ?? []
    }

    /// Whether `result` is the EINVAL of a kernel without MADV_POPULATE_WRITE
    /// (before 5.14): populating then ends for the session.
    private func notePopulateUnsupported(_ result: Int64) -> Bool {
        guard result == -Int64(EINVAL) else { return false }
        Self.populateUnsupported = true
        trace("    MADV_POPULATE_WRITE unsupported (EINVAL): mappings are armed without an anon_vma")
        return true
    }

    /// `populate` for a range already armed (the program's own mprotect
    /// made it writable and PageWatch ran that call without write): the
    /// whole range un-armed, its first page populated, the range armed again,
    /// in one injection. The whole range, not its first page alone: a VMA
    /// made writable is charged (VM_ACCOUNT), and one made read-only while it
    /// has no anon_vma is uncharged, so a page un-armed alone would differ
    /// from its neighbours and never merge with them. Only for pages dirty
    /// in the model: a write by another thread meanwhile does not fault, and
    /// is reported anyway. Returns whether the range is armed again (false:
    /// the re-arming failed and it must count as written) and whether its
    /// first page was populated.
    func populateArmed(_ range: AddressRange, _ protection: Protection, _ thread: TrackedThread) throws -> (
        armed: Bool, populated: Bool
    ) {
        guard !Self.populateUnsupported, Self.populatesMappings else { return (true, false) }
        let tid = thread.tid
        trace("  populate armed \(range) in \(tid)")
        let mprotect = HostArchitecture.syscalls.mprotect
        let calls = [
            RemoteSyscall.BatchCall(number: mprotect, range.start.value, range.length, UInt64(protection.rawValue)),
            RemoteSyscall.BatchCall(
                number: HostArchitecture.syscalls.madvise, range.start.value, Page.size,
                Self.madvPopulateWrite),
            RemoteSyscall.BatchCall(
                number: mprotect, range.start.value, range.length, UInt64(protection.armed.rawValue)),
        ]
        let results = try batch(calls, thread)
        guard results.count == 3 else { return (true, false) }
        _ = notePopulateUnsupported(results[1])
        if results != [0, 0, 0] { trace("    results: \(results)") }
        return (results[0] != 0 || results[2] == 0, results[0] == 0 && results[1] == 0)
    }

    static let madvPopulateWrite: UInt64 = 23
    static let madvDontNeed: UInt64 = 4
    /// Set once the kernel answered EINVAL to MADV_POPULATE_WRITE (before 5.14).
    nonisolated(unsafe) static var populateUnsupported = false
    /// PAGEWATCH_POPULATE=no: arm without populating (for the benchmark's comparison).
    static let populatesMappings = getenv("PAGEWATCH_POPULATE").map { String(cString: $0) != "no" } ?? true

    /// Pins `range` in `memory` (never armed again: rseq areas, buffers the
    /// kernel holds) and gives it its program protection.
    func pin(_ range: AddressRange, in memory: inout TrackedMemory, _ thread: TrackedThread) throws {
        trace("  pin \(range)")
        for change in memory.pin(range) {
            try protect(change.range, change.protection, thread)
        }
    }

    /// A batched mprotect's result that is not 0: -errno, or the call's
    /// number when the batch never reached it.
    static func mprotectFailed(_ result: Int64, at address: RemoteAddress, tid: Int32) -> TraceError {
        .remoteSyscall("mprotect", Errno(result < 0 ? Int32(-result) : EIO), tid: tid, address: address)
    }

    /// PAGEWATCH_SWEEP=one-by-one: one injection per re-armed range (for the benchmark's comparison).
    static let batchedSweeps = getenv("PAGEWATCH_SWEEP").map { String(cString: $0) != "one-by-one" } ?? true

    /// PAGEWATCH_DEBUG: the mappings around a failed mprotect, as maps shows them now.
    func mappings(overlapping range: AddressRange, tid: Int32) -> String {
        ((try? ProcFS.maps(of: tid)) ?? []).filter { $0.range.overlaps(range) }
            .map { "\($0.range) \($0.protection)" }.joined(separator: ", ")
    }

    // MARK: - The fault trampoline's slots

    /// Shares the slots' data page with PageWatch (`SharedSlotData`) when
    /// the process has just the one thread, stopped: a new image's exec
    /// stop, a followed fork child's first stop. A fork child's page is its
    /// parent's shared one until then: replaced, or made private if sharing
    /// fails; if both fail it uses no slot. Sharing failing otherwise only
    /// costs speed (the words go by process_vm_writev).
    func shareSlotData(_ thread: TrackedThread, forkChild: Bool) {
        guard let remote else { return }
        slotData = nil
        var held: [HeldSignal] = []
        defer { thread.signals.held += held }
        do {
            slotData = try SharedSlotData.share(remote, in: thread.tid, held: &held)
            slotsUsable = true
            return
        } catch {
            trace("  slots' data page not shared: \(error)")
        }
        guard forkChild else { return }
        do {
            try SharedSlotData.unshare(remote, in: thread.tid, held: &held)
            slotsUsable = true
        } catch {
            trace("  slots' data page not made private either: \(error); no slots")
            slotsUsable = false
        }
    }

    /// The slots of the scratch pages, through the shared data page when there is one.
    var slots: FaultTrampoline? {
        remote.map { FaultTrampoline(code: $0.trampoline.code, shared: slotData) }
    }
}
