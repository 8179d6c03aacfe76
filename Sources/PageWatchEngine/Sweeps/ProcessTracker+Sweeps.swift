import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// A process's sweeps: asked for, served in a stopped thread, reported,
/// and the pages re-armed; or tracking given up.
extension ProcessTracker {
    func requestSweep(_ reason: SweepReason) {
        if pendingSweep == nil, !finalSweepDone { pendingSweep = reason }
    }

    /// Interval sweeps need a stopped thread to inject into: interrupt one
    /// that is safe to interrupt. A thread blocked in a call that writes user
    /// memory when interrupted (nanosleep's remaining time) into an armed page
    /// would get EFAULT, so such threads are left alone; when no
    /// thread is safe, the sweep reports without re-arming (`reportOnlySweep`).
    /// Returns false when no thread could be interrupted.
    @discardableResult
    func requestInterruptIfNeeded(excluding excluded: Int32? = nil) -> Bool {
        if excluded == nil, threads.values.contains(where: \.interrupt.pending) { return true }
        // Not a thread PageWatch keeps at a stop (`waiting`): it stops nowhere else until let go.
        let candidates = threads.keys.sorted().filter { t in
            let s = threads[t]!
            return t != excluded && !s.exiting && !s.inGroupStop && s.waiting == nil
        }
        for t in candidates where safeToInterrupt(t) {
            if (try? Ptrace.interrupt(t)) != nil {
                threads[t]?.interrupt.pending = true
                threads[t]?.interrupt.sentNs = monotonicNs()
                return true
            }
        }
        return false
    }

    func safeToInterrupt(_ tid: Int32) -> Bool {
        switch ProcFS.activity(pid: pid, tid: tid) {
        // Sleeping in a page fault: the fault completes, then the thread stops.
        case .running, .outsideSyscall: return true
        case .unknown: return false
        case let .inSyscall(number, arguments):
            guard let written = SyscallOutputs.writtenOnInterruption(number: number, arguments: arguments) else {
                return false
            }
            return written.allSatisfy { pagesArmedInFact(in: $0).isEmpty }
        }
    }

    func sweepIfPending(in thread: TrackedThread) throws {
        let tid = thread.tid
        guard let reason = pendingSweep, session.allThreadsSeen, !groupExiting,
            !memoryCallInFlight(besides: tid)
        else { return }
        try sweep(reason: reason, in: thread)
    }

    /// Whether pages may be armed now. Not before the first sweep of an
    /// attach (every thread seen, its rseq area pinned; the gadget in place):
    /// until then the program's memory calls run as they are and new pages
    /// are left for that sweep, which arms them.
    var armsNow: Bool { injector.remote != nil && session.allThreadsSeen }

    /// Whether another thread is between the entry and the exit of one of
    /// the program's own memory calls (mmap, mprotect, ...). A sweep then
    /// waits for that exit: its maps could show the call's new mapping
    /// before the exit's handling (which takes maps as they are then, and
    /// would drop pages the sweep armed: the next write to one a fatal
    /// SIGSEGV), and its re-arming mprotect could run after the program's
    /// own and undo it. A change of the SIGSEGV action counts too: a fault
    /// checks the action against PageWatch's copy (`restoreSegvActionIfReset`).
    func memoryCallInFlight(besides tid: Int32) -> Bool {
        threads.contains { other, state in
            guard other != tid else { return false }
            switch state.syscall.pendingExit {
            case .memory?, .segvAction?: return true
            default: return false
            }
        }
    }

    /// Reports and re-arms. Re-protection comes before the dirty bits are
    /// cleared, so a write racing with the sweep lands in the next interval:
    /// pages written while we work are unarmed, hence dirty, and
    /// writes after their re-arm fault and are handled after this sweep.
    func sweep(reason: SweepReason, in thread: TrackedThread) throws {
        let tid = thread.tid
        if reason == .attach, try stopTrackingForIOUringBeforeAttach(thread) { return }
        if givesUpAtSweep, let why = session.givingUp { return try stopTracking(because: why, thread) }
        pendingSweep = nil
        try restoreSegvActionIfUnchecked(thread)  // once a sweep at least
        // Re-armed pages may fault again legitimately: forget the repeated-fault markers.
        for t in threads.values { t.suppressedFault.page = nil }
        try refreshMaps()
        try setUpWriteProtectionIfPending(thread)
        coverWithWriteProtection(window: nil, maps: attribution.lastMaps)
        scanWriteProtected(tid: tid)
        checkContents(tid: tid)
        let dirty = dirtyPagesOfBothBackends()
        var busy = pagesStillToBeWritten(besides: tid)
        // The same buffers in write-protected memory, which the scan
        // protected again: a call may write them through pages it pinned
        // (O_DIRECT), past any write-protect bit. Counted written again.
        let busyWriteProtected = busy.intersection(writeProtect.covered)
        // Pages rewritten at every sweep of a starving program stay writable (presumed written).
        let elapsed = monotonicNs() &- lastSweepNs
        let presume = presumption.applies(toInterval: reason == .interval, busyNs: busyNs, elapsedNs: elapsed)
        var presumed = PageSet()
        if presume || presumption.isActive {
            let writable = memory.unarmedWritablePages()
            presumed = presumption.unseen(dirty: dirty, eligible: writable)
            busy.formUnion(
                presumption.decide(
                    dirty: dirty, eligible: writable, fillable: memory.writableUnpinnedPages(), presume: presume))
        }
        noteStarvation(reason: reason, elapsedNs: elapsed)
        // Mappings new since the last sweep get their anon_vma before their first arming.
        let toPopulate = memory.pagesToPopulate(maps: attribution.lastMaps, excluded: userfaultRangesHere)
        memory.notePopulated(try injector.populate(toPopulate, thread))
        var changes: [ProtectionChange] = []
        for planned in memory.rearmPlan() {
            // Buffers another thread's blocked call will still write stay
            // writable (and dirty, so reported again): re-arming them now would
            // turn its copy-out into EFAULT.
            var pieces = PageSet([planned.range])
            for b in busy.intersection(planned.range).ranges { pieces.remove(b) }
            changes += pieces.ranges.map { ProtectionChange(range: $0, protection: planned.protection) }
        }
        // Gaps filled between presumed runs: un-armed, so that the runs and
        // the gaps between them are one writable VMA (reported presumed).
        let unarming = presumption.filled.ranges.flatMap { memory.armedPieces(in: $0) }
        let results = try injector.protectAll(changes + unarming, thread)
        for (i, (change, result)) in zip(changes + unarming, results).enumerated() {
            if result == 0 {
                if i < changes.count { memory.markArmed(change.range) } else { memory.markUnarmed(change.range) }
            } else if result == -Int64(Errno.ENOMEM.rawValue) {
                // vm.max_map_count, possibly applied in part: give
                // the region its program protection everywhere; its pages stay
                // dirty and are reported again next sweep (never missed).
                try unarmRegion(containing: change.range.start, thread)
            } else {
                throw ProcessInjector.mprotectFailed(result, at: change.range.start, tid: tid)
            }
        }
        memory.clearPinnedDirty()
        memory.clearReadOnlyDirty()
        if presumption.isActive { presumption.rearmed(memory.armedPages()) }
        publishForGuardian()
        emitSweep(reason: reason, dirty: dirty, presumed: presumed)
        writeProtect.countWrittenAgain(busyWriteProtected)
        // After the sweep read pagemap: reading a page never written maps the zero page.
        copyContents(dirty: dirty, tid: tid)
    }

    /// An interval sweep that runs no code in the program: where memory is
    /// write-protected by userfaultfd, the scan (PAGEMAP_SCAN on
    /// /proc/PID/pagemap) reports and re-protects it from outside. With
    /// the ptrace side clean (nothing to re-arm, populate or check, which
    /// takes a stopped thread) no thread stops for the sweep. With
    /// `ptraceSideLeft`, in place of a report-only sweep when no thread can
    /// be stopped: the ptrace side's pages stay writable and are reported
    /// again, the write-protected ones are re-armed all the same. False
    /// where it does not apply (then a thread is stopped as usual).
    func sweepWithoutStop(reason: SweepReason, ptraceSideLeft: Bool = false) throws -> Bool {
        guard reason == .interval, writeProtect.isActive, !writeProtect.covered.isEmpty,
            session.allThreadsSeen, !givesUpAtSweep
        else { return false }
        if !ptraceSideLeft {
            stoplessSweepDeclined = sweeps  // until it proves possible: tried once per pending sweep
            guard !signalActions.resetUnchecked, !presumption.isActive, memory.rearmPlan().isEmpty else { return false }
            try refreshMaps()
            var probe = memory  // planning marks mappings settled: only a look here
            guard memory.rearmPlan().isEmpty,
                probe.pagesToPopulate(maps: attribution.lastMaps, excluded: userfaultRangesHere).isEmpty
            else { return false }
        } else {
            try refreshMaps()
        }
        pendingSweep = nil
        let tid = liveThread()
        coverWithWriteProtection(window: nil, maps: attribution.lastMaps)
        scanWriteProtected(tid: tid)
        checkContents(tid: tid)
        let dirty = dirtyPagesOfBothBackends()
        // As in a sweep at a stop: buffers the kernel may still write
        // through pages it pinned count written again.
        let busy = pagesStillToBeWritten(besides: 0)
        noteStarvation(reason: reason, elapsedNs: monotonicNs() &- lastSweepNs)
        memory.clearPinnedDirty()
        memory.clearReadOnlyDirty()
        emitSweep(reason: reason, dirty: dirty)
        writeProtect.countWrittenAgain(busy.intersection(writeProtect.covered))
        copyContents(dirty: dirty, tid: tid)
        trace("  sweep \(sweeps) without a stop\(ptraceSideLeft ? ", the ptrace side's pages left writable" : "")")
        return true
    }

    /// An interval sweep with no thread to run code in: report what is known.
    /// Dirty pages stay unarmed and dirty, so they are reported again next
    /// time: extra pages, never a missed one.
    func reportOnlySweep(reason: SweepReason) throws {
        pendingSweep = nil
        try refreshMaps()
        coverWithWriteProtection(window: nil, maps: attribution.lastMaps)
        // Left as found, like the ptrace path's pages: reported again next time.
        scanWriteProtected(tid: liveThread(), reprotect: false)
        checkContents(tid: liveThread())
        let dirty = dirtyPagesOfBothBackends()
        memory.clearPinnedDirty()
        emitSweep(reason: reason, dirty: dirty, reportedAgain: true)
    }

    /// The last sweep: report without re-arming (the program is exiting).
    func finalSweep(reason: SweepReason) throws {
        finalSweepDone = true
        pendingSweep = nil
        try? refreshMaps()
        scanWriteProtected(tid: liveThread(), reprotect: false)
        checkContents(tid: liveThread())
        emitSweep(reason: reason, dirty: dirtyPagesOfBothBackends())
        // The program is ending: its registrations go with its memory.
        writeProtect.reset(to: .off)
    }

    /// `reported again`: the pages stay dirty for the next sweep (nothing
    /// was re-armed), so their writers are kept. `presumed`: the pages
    /// reported because presumption left them writable, not seen written;
    /// by default those still writable now.
    func emitSweep(reason: SweepReason, dirty: PageSet, reportedAgain: Bool = false, presumed: PageSet? = nil) {
        let presumed =
            presumed
            ?? (!presumption.leavesPagesUnseen
                ? PageSet() : presumption.unseen(dirty: dirty, eligible: memory.unarmedWritablePages()))
        sweeps += 1
        busyNs = 0
        lastSweepNs = monotonicNs()
        if !dirty.isEmpty || !memory.regions.isEmpty || !writeProtect.covered.isEmpty { everSelected = true }
        let held = sortUnseen(dirty: dirty, presumed: presumed)
        if Tracker.debug {
            trace(
                "  sweep \(sweeps): \(dirty.pageCount) dirty: \(held.zero.pageCount) zero, \(held.file.pageCount) file")
        }
        let sites = attribution.sites(
            of: held.data, pinned: memory.pinned, presumed: presumed, reportedAgain: reportedAgain)
        var record = SweepRecord(
            seq: sweeps, pid: pid, reason: reason, timeNs: wallClockNs(),
            ranges: held.data.ranges, faults: faultsThisInterval, sites: sites)
        record.presumed = presumed.ranges
        record.zeroRanges = held.zero.ranges
        record.fileRanges = held.file.ranges
        record.mappings = mappingsNewToTheLog()
        noteRearming(&record, dirty: dirty, reported: held.data, reportOnly: reportedAgain)
        memory.keepUnseenStillDirty()
        writeProtect.reported()
        dumpSweep(record, held: held)
        emit(.sweep(record))
        faultsThisInterval = 0
    }

    /// What a sweep must leave writable, besides `tid`'s: the outputs of
    /// the calls other threads are blocked in, and of io_uring requests not
    /// yet completed (the kernel writes them later), and the pages another
    /// thread was sent to un-arm through its trampoline slot, not seen
    /// since, its call not yet run (that mprotect may still run after the
    /// sweep and would leave the page writable behind an armed model).
    /// They stay dirty, reported again next sweep.
    func pagesStillToBeWritten(besides tid: Int32) -> PageSet {
        var busy = outputsOfBlockedCalls(excluding: tid)
        for page in pagesInFlight(in: nil, besides: tid) {
            busy.insert(AddressRange(start: page, end: page + Page.size))
        }
        busy.formUnion(ioUringBuffersInFlight())
        return busy
    }

    /// The output buffers of the calls other threads are in now: those
    /// PageWatch un-armed at their entry, and those of the calls /proc/PID/
    /// task/TID/syscall shows them blocked in; and the words exiting threads
    /// have yet to write; page-aligned.
    func outputsOfBlockedCalls(excluding tid: Int32) -> PageSet {
        var busy = PageSet()
        for (other, state) in threads {
            if other != tid { for r in state.syscall.callOutputs?.ranges ?? [] { busy.insert(r) } }
            if !state.exitWords.kept.isEmpty {
                if exitWritesDone(state) {
                    state.exitWords.kept = []  // written: re-armed like any other page from now on
                } else {
                    for r in state.exitWords.kept { busy.insert(r.pageAligned) }
                }
            }
        }
        for other in threads.keys where other != tid {
            guard case let .inSyscall(number, arguments) = ProcFS.activity(pid: liveThread(), tid: other),
                let call = Arch.syscall(number: number)
            else { continue }
            let outputs = SyscallOutputs(read: { a, n in (try? Ptrace.readMemory(other, a, count: n)) ?? [] })
            for r in outputs.ranges(call, arguments) ?? [] { busy.insert(r.pageAligned) }
        }
        return busy
    }

    /// The pages threads were sent to un-arm through their trampoline slots
    /// and not seen since (in `range`, but `tid`'s): writable in the model,
    /// but their `mprotect` may not have run yet. Not those whose slot says
    /// it has (its result word, 0): that thread is past the call, and a
    /// sweep may re-arm the page (else a thread that blocks right after its
    /// last fault, as at a barrier, had that page reported again at every
    /// sweep, never written).
    func pagesInFlight(in range: AddressRange?, besides tid: Int32? = nil) -> [RemoteAddress] {
        threads.flatMap { other, state -> [RemoteAddress] in
            guard other != tid, let span = state.trampoline.span, !slotCallSucceeded(state) else { return [] }
            return (0..<span.pageCount).map { span.start + $0 * Page.size }.filter { page in
                guard range.map({ $0.pageAligned.contains(page) }) ?? true, case .writable = memory.state(of: page)
                else { return false }
                return true
            }
        }
    }

    /// The pages touching `range` a write would fault on now: armed in the
    /// model, or writable in it but in flight (another thread's slot is to
    /// un-arm them and has not yet).
    func pagesArmedInFact(in range: AddressRange) -> PageSet {
        var armed = PageSet(memory.armedPieces(in: range).map(\.range))
        for page in pagesInFlight(in: range) { armed.insert(page: page) }
        return armed
    }

    /// Whether `tid`'s slot has run its `mprotect`, successfully.
    func slotCallSucceeded(_ thread: TrackedThread) -> Bool {
        let tid = thread.tid
        guard let slot = thread.trampoline.slot, let slots = injector.slots else { return false }
        return (try? slots.result(slot, tid: tid)) == 0
    }

    /// Re-reads `/proc/PID/maps`: new selected mappings become tracked (and
    /// dirty), vanished ones are forgotten.
    func refreshMaps() throws {
        // Before maps is read: a slot whose mprotect runs between the two
        // reads must count as in flight (below). Looked at after, a call that
        // ran in between looked done while maps still showed the page armed,
        // and reconcile dropped the page from tracking (the thread's next
        // write there: a fatal SIGSEGV; seen under node's worker threads).
        let inFlight = pagesInFlight(in: nil)
        // Through a live thread: once the main thread has exited, /proc/PID/maps is empty.
        var maps = try ProcFS.maps(of: liveThread())
        // Empty: the thread read through has just exited (its mm is gone),
        // not a process without memory; at an exit_group another thread may
        // still have it (the one stopped at its exit event does). Taken as
        // is, every tracked page would be forgotten and every frame left
        // unnamed, so with none it is not taken.
        if maps.isEmpty {
            for tid in threads.keys.sorted() where tid != liveThread() {
                if let theirs = try? ProcFS.maps(of: tid), !theirs.isEmpty {
                    maps = theirs
                    break
                }
            }
        }
        guard !maps.isEmpty else { return }
        reconcile(maps, keepingInFlight: inFlight) { memory, programs in
            memory.reconcile(maps: programs, selection: trackingSelection, stackAnchors: stackAnchors)
        }
        attribution.mapsRead(maps)
    }

    /// Runs `reconcile` on `maps` without PageWatch's own scratch pages (the
    /// trampoline's data page is writable, never tracked). `inFlight`: the
    /// pages threads were sent to un-arm through their trampoline slots,
    /// looked at before maps was read. Such a page is writable in the model,
    /// but the thread may not have run the slot's mprotect yet: maps can
    /// still show it armed, which reconcile would take for the program's own
    /// protection (and drop a read-only page from tracking: the thread's
    /// write then faults on an untracked page and kills it). Reconciled as
    /// armed, un-armed again after.
    func reconcile(
        _ maps: [Mapping], keepingInFlight inFlight: [RemoteAddress],
        _ reconcile: (inout TrackedMemory, [Mapping]) -> Void
    ) {
        let programs = maps.filter { m in injector.remote.map { !$0.scratch.contains(m.range.start) } ?? true }
        for page in inFlight { memory.markArmedKeepingDirty(AddressRange(start: page, end: page + Page.size)) }
        reconcile(&memory, programs)
        for page in inFlight {
            if case .armed = memory.state(of: page) { memory.markWritten(page) }
        }
        publishForGuardian()
    }

    /// Every region with armed pages gets the program's protection back
    /// (detach, untracked), in one injection.
    func giveBackProtections(_ thread: TrackedThread) throws {
        let tid = thread.tid
        let changes = armedRegions()
        for (change, result) in zip(changes, try injector.protectAll(changes, thread)) where result != 0 {
            throw ProcessInjector.mprotectFailed(result, at: change.range.start, tid: tid)
        }
    }

    /// Gives up tracking this process without changing it: a last sweep
    /// (reason `untracked`) reports what was written, every armed page gets
    /// the program's protection back, and an `untracked` record says why.
    func stopTracking(because reason: String, _ thread: TrackedThread) throws {
        try settleAllTrampolines()
        try? refreshMaps()
        scanWriteProtected(tid: thread.tid, reprotect: false)
        try giveBackProtections(thread)
        try absorbHeldFaults(thread)
        try restoreSegvActionIfUnchecked(thread)
        let dirty = dirtyPagesOfBothBackends()
        pendingSweep = nil
        finalSweepDone = true
        emitSweep(reason: .untracked, dirty: dirty)
        releaseWriteProtection()
        emit(.untracked(pid: pid, reason: reason, timeNs: wallClockNs()))
        releasedRanges = memory.trackedRanges
        memory.reset()
        presumption.reset()
        trackingStopped = true
    }

    /// After tracking stopped: whether `tid`'s SIGSEGV is a write fault on
    /// a page that was armed, taken before the protections were given back
    /// and reported after (another thread, in a multithreaded program). Its
    /// write can now run: the signal is dropped, once per thread and address
    /// (a repeat, or a page the program keeps without write, is its own).
    func isReleasedPageFault(_ tid: Int32) -> Bool {
        guard let info = try? Ptrace.signalInfo(tid), info.code == SignalInfo.SEGV_ACCERR,
            releasedRanges.contains(info.faultAddress), releasedFaults[tid] != info.faultAddress,
            let maps = try? ProcFS.maps(of: pid),
            maps.first(where: { $0.range.contains(info.faultAddress) })?.protection.contains(.write) == true
        else { return false }
        releasedFaults[tid] = info.faultAddress
        return true
    }
}
