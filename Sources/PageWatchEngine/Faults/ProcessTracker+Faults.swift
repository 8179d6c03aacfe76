import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Write faults: PageWatch's SIGSEGVs, the armed page made writable again
/// and marked dirty (the slow path; `ProcessTracker+Trampoline` the fast one).
extension ProcessTracker {
    /// Returns true when the SIGSEGV was PageWatch's and has been handled.
    func handleSegv(_ info: SignalInfo, _ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        if info.code == SignalInfo.SI_KERNEL {
            // The kernel could not update the thread's rseq area.
            return try rescueRseq(thread)
        }
        guard info.code == SignalInfo.SEGV_ACCERR else { return false }
        if memoryCallInFlight(besides: tid) {
            thread.waiting = .fault
            return true
        }
        let page = Page.floor(info.faultAddress)
        if pendingSweep != nil, memory.state(of: page) != .untracked { try sweepAtFault(thread) }
        trace("  fault at \(info.faultAddress): \(memory.state(of: page))")
        switch memory.state(of: page) {
        case .untracked:
            return false
        case .armed(let protection):
            noteWrite(page, by: attribution.writer(nil, tid: tid), fault: true, tid: tid)
            thread.suppressedFault.page = nil
            faultsThisInterval += 1
            totalFaults += 1
            try noteAbsorbedWriteFault(thread)
            let span = fillingGaps(around: page)
            if try unarmThroughTrampoline(page, span, protection, thread) { return true }
            try unarm(page, protection, thread, span: span)
            try resume(thread)
            return true
        case .writable(let protection):
            // Another thread got there first: just retry the write.
            // At the same page again, make sure the kernel has the program's
            // protection there; a third time the fault is not ours (a guard region, say).
            guard protection.contains(.write) else { return false }
            let repeats: Int
            if thread.suppressedFault.page == page { repeats = thread.suppressedFault.repeats + 1 } else { repeats = 0 }
            thread.suppressedFault.page = page
            thread.suppressedFault.repeats = repeats
            if repeats >= 2 {
                thread.suppressedFault.page = nil
                return false
            }
            try noteAbsorbedWriteFault(thread)
            if repeats == 1 {
                try injector.protect(AddressRange(start: page, end: page + Page.size), protection, thread)
            }
            attribution.ledger.countFault(at: page)
            faultsThisInterval += 1
            totalFaults += 1
            try resume(thread)
            return true
        }
    }

    /// Un-arms every armed page in `range` (they become dirty), written by `writer`.
    func unarmRange(_ range: AddressRange, by writer: Writer, _ thread: TrackedThread) throws {
        let tid = thread.tid
        try makeWritablePagesInFlight(in: range, thread)
        var page = range.start
        while page < range.end {
            if case .armed(let protection) = memory.state(of: page) {
                noteWrite(page, by: writer, fault: false, tid: tid)
                try unarm(page, protection, thread)
            }
            page = page + Page.size
        }
    }

    /// Pages of `range` another thread was sent to un-arm through its slot
    /// are writable in the model, maybe not yet in the kernel: made so now,
    /// by `thread`, before the kernel writes there for it. (`thread`'s own
    /// slot was settled at this stop.)
    func makeWritablePagesInFlight(in range: AddressRange, _ thread: TrackedThread) throws {
        for page in pagesInFlight(in: range, besides: thread.tid) {
            if case .writable(let protection) = memory.state(of: page) {
                try injector.protect(AddressRange(start: page, end: page + Page.size), protection, thread)
            }
        }
    }

    /// What a write fault at armed `page` un-arms: the page, and while a
    /// presumption lasts the gaps beside it (`WritePresumption`), noted
    /// as filled: reported presumed by the next sweep, not seen written.
    func fillingGaps(around page: RemoteAddress) -> AddressRange {
        let only = AddressRange(start: page, end: page + Page.size)
        guard presumption.fillsAtFaults else { return only }
        let span = memory.gapSpan(around: page, maxGap: WritePresumption.faultGapPages)
        if span.start < page { presumption.filledAtFault(AddressRange(start: span.start, end: page)) }
        if span.end > only.end { presumption.filledAtFault(AddressRange(start: only.end, end: span.end)) }
        return span
    }

    /// Makes one armed page writable again and marks it dirty; `span`, when
    /// given, the armed pages around it un-armed with it (a filled gap).
    func unarm(
        _ page: RemoteAddress, _ protection: Protection, _ thread: TrackedThread, span: AddressRange? = nil
    ) throws {
        let range = span ?? AddressRange(start: page, end: page + Page.size)
        do {
            try injector.protect(range, protection, thread)
            memory.markUnarmed(range)
            return
        } catch TraceError.remoteSyscall(_, let errno, _, _) where errno == .ENOMEM {
            // vm.max_map_count reached: every page made writable
            // inside an armed range split a VMA. Below: re-arm the whole
            // region early, keeping its dirty bits (the report stays exact),
            // which merges its VMAs back into one; then try again.
        }
        if let plan = memory.rearmRegionPlan(containing: page) {
            do {
                for change in plan { try injector.protect(change.range, change.protection, thread) }
                memory.markRegionArmedKeepingDirty(containing: page)
                try injector.protect(range, protection, thread)
                memory.markUnarmed(range)
                return
            } catch TraceError.remoteSyscall(_, let errno, _, _) where errno == .ENOMEM {
                // Still no room: fall through to the last resort.
            }
        }
        try unarmRegion(containing: page, thread)
    }

    /// The last resort at vm.max_map_count: the region's program protection
    /// everywhere (one VMA again), every page dirty until the next sweep.
    func unarmRegion(containing page: RemoteAddress, _ thread: TrackedThread) throws {
        if let whole = memory.markRegionWritten(containing: page) {
            try injector.protect(whole.range, whole.protection, thread)
        }
    }

    /// A write fault can be pending when PageWatch stops a thread (it
    /// faulted just before a PTRACE_INTERRUPT): it then arrives during an
    /// injection and is held. Such a SIGSEGV is PageWatch's like any other:
    /// handle it here instead of delivering it; the instruction runs again.
    /// Also called when PageWatch lets go of the process (detach, untracked):
    /// a held fault there would otherwise be sent again after the release and
    /// kill the program (the pages are the program's again by then). The
    /// same goes for the kernel's forced SIGSEGV for an armed rseq area.
    func absorbHeldFaults(_ thread: TrackedThread) throws {
        let tid = thread.tid
        var rounds = 0
        while rounds < 8,
            let i = thread.signals.held.firstIndex(where: {
                $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SEGV_ACCERR
            })
        {
            rounds += 1
            let page = Page.floor(thread.signals.held[i].faultAddress)
            switch memory.state(of: page) {
            case .armed(let protection):
                thread.signals.held.remove(at: i)
                noteWrite(page, by: attribution.writer(nil, tid: tid), fault: true, tid: tid)
                try noteAbsorbedWriteFault(thread)
                try unarm(page, protection, thread)
                faultsThisInterval += 1
                totalFaults += 1
            case .writable(let protection) where protection.contains(.write):
                thread.signals.held.remove(at: i)
                try noteAbsorbedWriteFault(thread)
            default:
                return  // the program's own fault: delivered as it is
            }
        }
        if let i = thread.signals.held.firstIndex(where: {
            $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SI_KERNEL
        }),
            let area = try? Ptrace.rseqArea(tid), case .armed = memory.state(of: area.address)
        {
            thread.signals.held.remove(at: i)
            thread.rseqKnown = true
            try injector.pin(area.range.pageAligned, in: &memory, thread)
        }
    }

    /// A SIGSEGV the kernel forced because it could not write the rseq area:
    /// pin the area and let the thread go on, as it would have without us.
    func rescueRseq(_ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        guard let area = try? Ptrace.rseqArea(tid) else { return false }
        guard case .armed = memory.state(of: area.address) else { return false }
        thread.rseqKnown = true
        try restoreSegvActionIfReset(thread)
        try injector.pin(area.range.pageAligned, in: &memory, thread)
        try resume(thread)
        return true
    }
}
