import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// The userfaultfd backend of one process (`--backend uffd`, docs/design.md
/// "The userfaultfd backend"): PageWatch makes a userfaultfd in the program
/// (one injected `userfaultfd(2)`), takes a copy with `pidfd_getfd(2)`,
/// closes the program's, and registers the private anonymous memory of the
/// selection with its copy, write-protected asynchronously: a first write
/// costs the program a minor fault in the kernel, no stop. Sweeps find and
/// re-protect written pages with `PAGEMAP_SCAN` from outside. What this
/// path cannot hold safely stays on (or goes back to) the ptrace path.
extension ProcessTracker {
    /// The selection the ptrace path tracks: the user's, without what the
    /// userfaultfd backend covers.
    var trackingSelection: Selection {
        guard !writeProtect.covered.isEmpty else { return config.selection }
        var selection = config.selection
        selection.excluded = writeProtect.covered
        return selection
    }

    /// What the `start` record says tracks each class of memory.
    var backendNames: [String: String] {
        let planned: Bool
        switch writeProtect.state {
        case .off: planned = false
        // An attach sets it up at its first sweep (a fallback then says so).
        case .pending, .active: planned = true
        }
        return ["anonymous": planned ? "uffd" : "ptrace", "file": "ptrace"]
    }

    /// A new image (the program's first, or an exec: a new address space,
    /// whose userfaultfd must be new too): set up from its only thread.
    func startWriteProtection(_ thread: TrackedThread) throws {
        writeProtect.reset(to: config.triesWriteProtect ? .pending : .off)
        try setUpWriteProtectionIfPending(thread, newImage: true)
    }

    /// Makes the userfaultfd and takes it over, when one is to be made.
    /// A new image (`newImage`) has one thread and a descriptor table of its
    /// own (exec unshares it): the descriptor is made in the program and
    /// closed there at once. An attached process may have other threads
    /// running, io-wq workers, processes sharing its table: a descriptor
    /// made there could change the numbers they get, so a helper thread
    /// with a table of its own makes it (`userfaultfdFromHelperThread`);
    /// failing that (no `PIDFD_THREAD`, clone refused), the program makes it
    /// only while it has one thread. Anything failing leaves the ptrace path alone.
    func setUpWriteProtectionIfPending(_ thread: TrackedThread, newImage: Bool = false) throws {
        guard case .pending = writeProtect.state, injector.remote != nil else { return }
        do {
            try setUpWriteProtection(thread, newImage: newImage)
        } catch TraceError.traceeGone(let tid) {
            throw TraceError.traceeGone(tid: tid)
        } catch {
            // An injection that failed: the ptrace path, as without the backend.
            fallBackFromWriteProtection("\(error)")
        }
    }

    private func setUpWriteProtection(_ thread: TrackedThread, newImage: Bool) throws {
        if let why = WriteTrackingBackend.kernelLacks { return fallBackFromWriteProtection(why) }
        // A call a filter of the program's would kill, trap or show to a
        // supervisor is never made: judged at an attach (the filters then
        // in place) and at each filter the program installs while tracked.
        if let why = seccompForbidsUserfaultfd { return fallBackFromWriteProtection(why) }
        if !newImage {
            if let gadget = injector.remote?.gadget, let why = seccompRefusal(of: thread.tid, gadget: gadget) {
                return fallBackFromWriteProtection(why)
            }
            do {
                return activateWriteProtection(try userfaultfdFromHelperThread(thread))
            } catch let failure as HelperThreadFailure {
                switch failure {
                case .noThreadPidfds, .cloneRefused:
                    guard threads.count == 1 else {
                        return fallBackFromWriteProtection(
                            "\(failure), and pid \(pid) has \(threads.count) threads (a descriptor made in it could change the numbers the others get)"
                        )
                    }
                    trace("  \(failure): the userfaultfd is made in the program's one thread")
                default:
                    return fallBackFromWriteProtection("\(failure)")
                }
            }
        }
        let tid = thread.tid
        let made = try injector.inject(thread) { remote, completing in
            let outcome = try remote.run(
                Arch.userfaultfdNumber, [WriteProtectFD.creationFlags], in: tid, completing: completing)
            return (outcome.value, outcome)
        }
        guard let made else { return }
        if made < 0 {
            // EPERM (vm.unprivileged_userfaultfd=0 for a user-mode-only fd
            // is allowed, so: a seccomp policy, a container), ENOSYS.
            return fallBackFromWriteProtection(
                "userfaultfd(2) in pid \(pid) failed: \(Errno(Int32(truncatingIfNeeded: -made)))")
        }
        let remoteFD = Int32(truncatingIfNeeded: made)
        var taken: Result<WriteProtectFD, Error>
        do { taken = .success(try WriteProtectFD(pid: pid, remoteFD: remoteFD)) } catch { taken = .failure(error) }
        // The program's copy goes whatever happened: it never sees it.
        _ = try injector.inject(thread) { remote, completing in
            let outcome = try remote.run(Arch.number(.close)!, [UInt64(remoteFD)], in: tid, completing: completing)
            return ((), outcome)
        }
        switch taken {
        case .success(let fd): activateWriteProtection(fd)
        case .failure(let error): fallBackFromWriteProtection("\(error)")
        }
    }

    private func activateWriteProtection(_ fd: WriteProtectFD) {
        guard let pagemap = try? PageMap(pid: pid) else {
            return fallBackFromWriteProtection("/proc/\(pid)/pagemap cannot be opened")
        }
        writeProtect.state = .active(fd, pagemap)
        trace("  userfaultfd backend on in \(pid)")
    }

    /// The ptrace path for everything in this process; under `--backend
    /// uffd` one warning (stderr and the log) says why, under `auto` a trace line.
    func fallBackFromWriteProtection(_ why: String) {
        writeProtect.reset(to: .off)
        guard config.backend == .uffd else { return trace("  userfaultfd backend off: \(why)") }
        let message = "--backend uffd: \(why); write tracking stays on the ptrace path"
        session.warn(message)
        emit(.warning(pid: pid, message: message, timeNs: wallClockNs()))
    }

    /// Registers and write-protects what should be covered and is not, in
    /// `window` (all of `maps` when nil): new private anonymous memory the
    /// ptrace path has not armed. Its pages count written (unseen) and
    /// leave the ptrace path's model. A range the kernel refuses goes to
    /// the ptrace path for good (`decline`).
    func coverWithWriteProtection(window: AddressRange?, maps: [Mapping]) {
        guard let fd = writeProtect.fd else { return }
        var excluded = userfaultRangesHere
        if let scratch = injector.remote?.scratch { excluded.insert(scratch) }
        // Writable in the model, but their slot's mprotect may not have run:
        // still read-only by PageWatch, they must stay where they are armed.
        for page in pagesInFlight(in: window) { excluded.insert(page: page) }
        let armed = window.map { w in PageSet(memory.armedPieces(in: w).map(\.range)) } ?? memory.armedPages()
        let candidates = writeProtect.candidates(
            maps: maps, window: window, selection: config.selection, stackAnchors: stackAnchors,
            excluded: excluded, armed: armed)
        for range in candidates {
            do {
                try fd.register(range)
            } catch {
                trace("  \(error): \(range) stays on the ptrace path")
                writeProtect.decline(range)
                continue
            }
            // What holds data, before the markers of write-protection look
            // like swapped pages: populated or swapped now, or populated
            // between this look and the protection (present after it).
            let before = try? writeProtect.pagemap?.runs(range)
            let unprotected = before.flatMap { holesLeftUnprotected(in: range, holding: $0) }
            do {
                if let unprotected {
                    for piece in PageSet([range]).subtracting(unprotected).ranges { try fd.writeProtect(piece) }
                } else {
                    try fd.writeProtect(range)
                }
            } catch {
                trace("  \(error): \(range) stays on the ptrace path")
                try? fd.unregister(range)
                writeProtect.decline(range)
                continue
            }
            if let before, let after = try? writeProtect.pagemap?.runs(range) {
                var data = PageSet()
                for run in before where run.isSwapped || (run.isPresent && !run.isZeroPage) { data.insert(run.range) }
                for run in after where run.isPresent && !run.isZeroPage { data.insert(run.range) }
                writeProtect.noteZero(PageSet([range]).subtracting(data))
            }
            writeProtect.cover(range, unprotected: unprotected)
            if let unprotected { trace("  \(range): \(unprotected.pageCount) pages of holes left unprotected") }
            // Never armed (candidates): its pages were all dirty there, and are unseen here.
            memory.forget(range)
            presumption.forget(range)
        }
    }

    /// The holes of a large `range` (`WriteProtectedMemory.sparseMinimum`)
    /// to leave unprotected, given what it holds (`runs`, read before the
    /// protection): every 2 MiB piece without data, or nil to protect it
    /// whole. Whole where the kernel could fill a hole with a huge page
    /// (`smaps` says `THPeligible`: 512 pages unprotected at a first
    /// touch, all reported) or replace a page written with zeros by the
    /// zero page (KSM's `use_zero_pages`: a written hole would look read).
    func holesLeftUnprotected(in range: AddressRange, holding runs: [PageMapRun]) -> PageSet? {
        guard range.length >= WriteProtectedMemory.sparseMinimum, !WriteProtectedMemory.kernelMergesZeroPages,
            let smaps = try? ProcFS.read("/proc/\(pid)/smaps", pid: pid),
            WriteProtectedMemory.hugePagesEligible(inSmaps: smaps, at: range.start) == false
        else { return nil }
        var data = PageSet()
        for run in runs where run.isPresent || run.isSwapped { data.insert(run.range) }
        return PageSet([range]).subtracting(WriteProtectedMemory.pageTablePieces(of: range, holding: data))
    }

    /// The program asks for huge pages in `range` (`madvise` with
    /// `MADV_HUGEPAGE` or `MADV_COLLAPSE`, at the call's entry): the
    /// unprotected holes of sparse ranges there are protected first, as
    /// without the sparse protection, so that no huge page maps 512 pages
    /// unprotected. What was populated there since the last scan is found
    /// first (and kept for the sweep); a page populated between that scan
    /// and the protection lost its evidence, and counts written.
    func protectHolesBeforeHugePages(_ range: AddressRange) {
        guard let fd = writeProtect.fd, let pagemap = writeProtect.pagemap else { return }
        for piece in writeProtect.sparse.intersection(range.pageAligned).ranges {
            let holes: PageSet
            do {
                let found = try PageMapScan.takeWritten(piece, in: pagemap, onlyData: true)
                let kept = writeProtect.takeFound(found, reprotect: true)
                writeProtect.written.written.formUnion(kept.written)
                writeProtect.written.zeroPages.formUnion(kept.zeroPages)
                holes = writeProtect.holes.intersection(piece)
                try fd.writeProtect(piece)
            } catch {
                trace("  \(error): \(piece) counted written")
                recoverWriteProtection(piece)
                continue
            }
            writeProtect.protectedWhole(piece)
            trace("  \(piece): huge pages asked, \(holes.pageCount) pages of holes protected")
            guard !holes.isEmpty else { continue }
            var populated = PageSet()
            if let after = try? pagemap.runs(piece) {
                for run in after where run.isPresent { populated.insert(run.range) }
                writeProtect.countWrittenAgain(populated.intersection(holes))
            } else {
                writeProtect.countWrittenAgain(holes)
            }
        }
    }

    /// At a sweep: the covered pages written since the last one, found and
    /// write-protected again (`PageMapScan`), kept for the sweep to report.
    /// With `--verify-contents` the covered pages' contents are compared
    /// first: a page found changed must then be found written too (its
    /// write came before the scan), or the write was missed.
    func scanWriteProtected(tid: Int32, reprotect: Bool = true) {
        guard writeProtect.isActive, !writeProtect.covered.isEmpty else { return }
        let changed = changedWriteProtectedPages(tid: tid)
        guard let pagemap = writeProtect.pagemap else { return }
        for range in writeProtect.covered.ranges {
            let sparse = writeProtect.sparse.intersection(range)
            let pieces =
                sparse.ranges.map { ($0, true) } + PageSet([range]).subtracting(sparse).ranges.map { ($0, false) }
            for (piece, isSparse) in pieces {
                do {
                    var found = try PageMapScan.takeWritten(
                        piece, in: pagemap, reprotect: reprotect, onlyData: isSparse)
                    if isSparse { found = writeProtect.takeFound(found, reprotect: reprotect) }
                    writeProtect.written.written.formUnion(found.written)
                    writeProtect.written.zeroPages.formUnion(found.zeroPages)
                } catch {
                    // A registration lost behind PageWatch's back: everything
                    // still mapped there counts written, and is covered again.
                    trace("  \(error): \(piece) counted written")
                    recoverWriteProtection(piece)
                }
            }
        }
        let missed = changed.subtracting(writeProtect.dirty)
        writeProtect.markWritten(missed)
        writeProtect.missed = missed
    }

    /// A covered `range` the scan could not read: counted written where
    /// still mapped, registered and protected again, or given to the ptrace path.
    func recoverWriteProtection(_ range: AddressRange) {
        var mapped = PageSet()
        for m in attribution.lastMaps where m.range.overlaps(range) { mapped.insert(m.range.intersection(range)!) }
        writeProtect.forget(range)
        for piece in mapped.ranges {
            if let fd = writeProtect.fd, (try? fd.register(piece)) != nil, (try? fd.writeProtect(piece)) != nil {
                writeProtect.cover(piece)
            } else {
                writeProtect.decline(piece)
            }
        }
    }

    /// Every page this sweep reports: the ptrace path's and the covered ones.
    func dirtyPagesOfBothBackends() -> PageSet {
        var dirty = memory.dirtyPages()
        if writeProtect.isActive { dirty.formUnion(writeProtect.dirty) }
        return dirty
    }

    /// The tracked ranges of both backends, for the sweep's mapping names.
    var trackedRangesOfBothBackends: [AddressRange] {
        guard !writeProtect.covered.isEmpty else { return memory.regions.map(\.range) }
        var all = memory.trackedRanges
        all.formUnion(writeProtect.covered)
        return all.ranges
    }

    /// The exit of one of the program's memory calls, before the ptrace
    /// path's model learns of it (so that what is covered now is left out
    /// of it). A mapping replaced or unmapped takes its registration with
    /// it; a moved one (`mremap`) loses it (PageWatch does not ask for
    /// `UFFD_FEATURE_EVENT_REMAP`, whose events would need a reader) along
    /// with its pages' write-protect bits: it is covered again, all of it
    /// counted written. New memory is covered at once.
    func writeProtectMemoryExit(_ call: Syscall, _ a: [UInt64], result: Int64) throws {
        guard writeProtect.isActive, !(result < 0 && result > -4096) else { return }
        func range(_ start: UInt64, _ length: UInt64) -> AddressRange {
            AddressRange(start: RemoteAddress(start), end: RemoteAddress(start) + length).pageAligned
        }
        var window: AddressRange?
        switch call {
        case .munmap:
            writeProtect.forget(range(a[0], a[1]))
        case .mmap:
            window = range(UInt64(bitPattern: result), a[1])
            writeProtect.forget(window!)
        case .mremap:
            writeProtect.forget(range(a[0], a[1]))
            window = range(UInt64(bitPattern: result), a[2])
            writeProtect.forget(window!)
        case .brk:
            let newEnd = Page.ceil(RemoteAddress(UInt64(bitPattern: result)))
            guard let oldEnd = heapEnd(in: attribution.lastMaps), oldEnd != newEnd else { return }
            window = AddressRange(start: min(oldEnd, newEnd), end: max(oldEnd, newEnd))
            if newEnd < oldEnd { writeProtect.forget(window!) }
        case .shmat:
            // SHM_REMAP may replace covered memory; the segment's size is maps'.
            let at = range(UInt64(bitPattern: result), Page.size)
            for m in try entries(overlapping: at, tid: liveThread()) where m.range.contains(at.start) {
                writeProtect.forget(m.range)
            }
        case .madvise:
            // MADV_DONTNEED, MADV_REMOVE, MADV_DONTNEED_LOCKED: zeros from now on.
            writeProtect.markDiscarded(range(a[0], a[1]), zeroed: [4, 9, 24].contains(a[2]))
        default:
            break
        }
        guard let window, !window.isEmpty else { return }
        let entries = try entries(overlapping: window, tid: liveThread())
        coverWithWriteProtection(window: window, maps: entries)
    }

    /// Covered memory the userfaultfd path cannot hold goes to the ptrace
    /// path, new to it (its next sweep reports all of it):
    /// - the program registers it with its own userfaultfd (PageWatch's
    ///   registration would make its `UFFDIO_REGISTER` fail with EBUSY);
    ///   given up first, which drops the pages' write-protect bits: the
    ///   program finds them as without PageWatch;
    /// - io_uring pins it (registered or provided buffers): the kernel
    ///   writes pinned pages through its own mapping, which no
    ///   write-protect bit sees; the ptrace path reports them every sweep.
    func yieldWriteProtection(_ range: AddressRange, to whom: String = "the program's own userfaultfd") throws {
        guard let fd = writeProtect.fd else { return }
        let overlap = writeProtect.covered.intersection(range.pageAligned)
        guard !overlap.isEmpty else { return }
        for piece in overlap.ranges {
            trace("  \(piece) given up to \(whom): ptrace path")
            do { try fd.unregister(piece) } catch { trace("  \(error)") }
            writeProtect.decline(piece)
        }
        try refreshMaps()
    }

    /// Detach, tracking given up, the end: every registration undone and
    /// the descriptor closed; the program keeps nothing of it.
    func releaseWriteProtection() {
        if let fd = writeProtect.fd {
            for range in writeProtect.covered.ranges { try? fd.unregister(range) }
        }
        writeProtect.reset(to: .off)
    }

    /// `--verify-contents`: covered pages whose contents differ from their
    /// copies, read before the scan.
    func changedWriteProtectedPages(tid: Int32) -> PageSet {
        guard let copies = contentCopies, !memoryCallInFlight(besides: tid) else { return PageSet() }
        return pagesDiffering(from: copies, in: writeProtect.covered.ranges, tid: tid)
    }
}
