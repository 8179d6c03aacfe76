import PageWatchAddressSpace
import PageWatchPtrace

/// The private anonymous memory of one process tracked by asynchronous
/// userfaultfd write-protection instead of ptrace: registered with
/// PageWatch's userfaultfd, write-protected, swept by `PAGEMAP_SCAN`.
/// These pages are left out of `TrackedMemory` (the ptrace path's model)
/// through the selection (`Selection.excluded`); the sweep reports both.
struct WriteProtectedMemory {
    enum State {
        /// Everything on the ptrace path (`--backend ptrace`, a fork child
        /// until its exec, a fallback).
        case off
        /// To be set up at the next chance (a new image, the attach sweep).
        case pending
        case active(WriteProtectFD, PageMap)
    }

    var state = State.off
    /// Registered and write-protected through PageWatch's userfaultfd.
    private(set) var covered = PageSet()
    /// Given to the ptrace path for good (the program registered them with
    /// its own userfaultfd; registering failed): never covered again
    /// until they are unmapped.
    private(set) var declined = PageSet()
    /// Covered pages counted written without a scan seeing it: new (just
    /// registered), moved, discarded (`madvise`). Reported by the next
    /// sweep and sorted by pagemap like the ptrace path's unseen pages.
    private(set) var unseen = PageSet()
    /// What the current sweep's scan found, until the sweep reports it.
    var written = WrittenPages()
    /// `--verify-contents`: covered pages whose contents changed with no
    /// write found (read before the scan, kept until the check reports them).
    var missed = PageSet()
    /// Covered ranges whose holes are left unprotected (`sparseMinimum`):
    /// scanned for present or swapped pages only, so that the walk skips
    /// the 2 MiB pieces that have no page table.
    private(set) var sparse = PageSet()
    /// Pages of `sparse` ranges that held nothing (zero) at the last scan
    /// and carry no protection: a page populated there since has no
    /// write-protect bit, so the next scan finds it; one that maps the
    /// zero page was only read, and is not reported (`takeFound`).
    private(set) var holes = PageSet()

    var fd: WriteProtectFD? {
        if case .active(let fd, _) = state { return fd }
        return nil
    }

    /// The process's pagemap, opened with the descriptor (it holds the
    /// address space it was opened for, like the userfaultfd).
    var pagemap: PageMap? {
        if case .active(_, let pagemap) = state { return pagemap }
        return nil
    }

    var isActive: Bool { fd != nil }

    /// Larger pieces stay on the ptrace path. Write-protection leaves a pte
    /// marker in every page never populated (on 6.18 whatever the features
    /// asked), so protecting a range whole costs the program a page table
    /// per 2 MiB of it (2 MiB per GiB), and each sweep's scan walks them all
    /// (about 12 ns a page here): a sparse reservation of terabytes (a
    /// sanitizer's shadow) protected whole (huge pages possible) would run
    /// the program out of memory.
    static let largestRange: UInt64 = 16 << 30

    /// From this size on, a range's holes are left unprotected (no marker,
    /// no page table) unless transparent huge pages could fill them: only
    /// the 2 MiB pieces that hold data are write-protected, and scans skip
    /// the rest. Smaller ranges are protected whole: their markers cost at
    /// most 64 KiB of page tables and 0.2 ms a scan, and no `smaps` look.
    static let sparseMinimum: UInt64 = 32 << 20
    /// KSM may map the zero page in place of a page written with zeros
    /// (`/sys/kernel/mm/ksm/use_zero_pages`, read once a session): in a
    /// hole, that write would look like a read. Ranges are protected whole then.
    static let kernelMergesZeroPages: Bool = {
        guard let text = try? ProcFS.read("/sys/kernel/mm/ksm/use_zero_pages", pid: 0) else { return false }
        return text.split(separator: "\n").first != "0"
    }()

    /// The span of one page table: a hole this large and aligned costs none.
    static let pageTableSpan: UInt64 = 2 << 20

    /// The 2 MiB pieces of `range` that hold any of `data` (populated or
    /// swapped pages): what a sparse range write-protects.
    static func pageTablePieces(of range: AddressRange, holding data: PageSet) -> PageSet {
        var pieces = PageSet()
        for run in data.intersection(range).ranges {
            let start = RemoteAddress(run.start.value / pageTableSpan * pageTableSpan)
            let end = RemoteAddress((run.end.value + pageTableSpan - 1) / pageTableSpan * pageTableSpan)
            if let piece = AddressRange(start: start, end: end).intersection(range) { pieces.insert(piece) }
        }
        return pieces
    }

    /// `smaps` says whether the kernel may give the mapping at `address`
    /// transparent huge pages (`THPeligible: 1`): a first touch of an
    /// empty, aligned 2 MiB piece would then map a huge page, all 512 of
    /// its pages unprotected (found written by the next scan). nil when
    /// no mapping there is found.
    static func hugePagesEligible(inSmaps text: String, at address: RemoteAddress) -> Bool? {
        var inside = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
                let start = UInt64(line[line.startIndex..<dash], radix: 16),
                let end = UInt64(line[line.index(after: dash)..<space], radix: 16)
            {
                inside = start <= address.value && address.value < end
                continue
            }
            guard inside, line.hasPrefix("THPeligible:") else { continue }
            return line.dropFirst("THPeligible:".count).split(separator: " ").first != "0"
        }
        return nil
    }

    /// The pieces of `maps` (entries overlapping `window`, or all) that
    /// should be covered and are not: private anonymous writable memory
    /// the selection takes, not covered or declined yet, not in `excluded`
    /// (the program's own userfaultfd ranges, PageWatch's scratch pages),
    /// and not armed on the ptrace path (`armed`: such pages stay there).
    func candidates(
        maps: [Mapping], window: AddressRange?, selection: Selection, stackAnchors: [RemoteAddress],
        excluded: PageSet, armed: PageSet
    ) -> [AddressRange] {
        var out: [AddressRange] = []
        for m in maps where m.isPrivate && m.isAnonymous && m.protection.contains(.write) {
            if let window, !m.range.overlaps(window) { continue }
            let isThreadStack = stackAnchors.contains { m.range.contains($0) }
            var wanted = PageSet(selection.specifiedPart(of: m, protection: m.protection, isThreadStack: isThreadStack))
            if let window { wanted = wanted.intersection(window) }
            wanted = wanted.subtracting(covered).subtracting(declined).subtracting(excluded).subtracting(armed)
            out += wanted.ranges.filter { $0.length <= Self.largestRange }
        }
        return out
    }

    /// `range` was registered and write-protected: covered, counted written.
    /// `unprotected`: its holes left without protection (a sparse range).
    mutating func cover(_ range: AddressRange, unprotected: PageSet? = nil) {
        covered.insert(range)
        unseen.insert(range)
        if let unprotected {
            sparse.insert(range)
            holes.formUnion(unprotected.intersection(range))
        }
    }

    /// `range`'s holes were write-protected after all (huge pages advised):
    /// scanned whole from now on.
    mutating func protectedWhole(_ range: AddressRange) {
        sparse.remove(range)
        holes.remove(range)
    }

    /// What a scan of a sparse range found, without the pages that were
    /// holes at the last scan and now map the zero page: read, never
    /// written (a write would have copied the page). A write to them is
    /// found by a later scan: the scan protected them. The scan protected
    /// every page it found (`reprotect`): none of them is a hole now.
    mutating func takeFound(_ found: WrittenPages, reprotect: Bool) -> WrittenPages {
        var kept = found
        let onlyRead = found.zeroPages.intersection(holes)
        if !onlyRead.isEmpty {
            kept.written = kept.written.subtracting(onlyRead)
            kept.zeroPages = kept.zeroPages.subtracting(onlyRead)
        }
        if reprotect, !holes.isEmpty { holes = holes.subtracting(found.written) }
        return kept
    }

    /// `range` goes to the ptrace path for good.
    mutating func decline(_ range: AddressRange) {
        forget(range)
        declined.insert(range)
    }

    /// `range` is no longer covered (unmapped, replaced, moved away): its
    /// registration went with its mapping.
    mutating func forget(_ range: AddressRange) {
        covered.remove(range)
        declined.remove(range)
        unseen.remove(range)
        zeroKnown.remove(range)
        written.written.remove(range)
        written.zeroPages.remove(range)
        missed.remove(range)
        sparse.remove(range)
        holes.remove(range)
    }

    /// `madvise` discarded covered pages: their contents changed without
    /// a write; `zeroed`: they read as zeros now (not `MADV_FREE`'s, which
    /// keep their data until the kernel takes them).
    mutating func markDiscarded(_ range: AddressRange, zeroed: Bool) {
        let discarded = covered.intersection(range)
        unseen.formUnion(discarded)
        if zeroed {
            zeroKnown.formUnion(discarded)
            // Zero from here, reported by this sweep: holes as at a scan.
            holes.formUnion(discarded.intersection(sparse))
        }
    }

    /// After a sweep: `pages` (buffers calls in flight may still write)
    /// are counted written again by the next.
    mutating func countWrittenAgain(_ pages: PageSet) {
        unseen.formUnion(pages.intersection(covered))
    }

    /// Counts the covered part of `pages` written (`--verify-contents` found them changed).
    mutating func markWritten(_ pages: PageSet) {
        written.written.formUnion(pages.intersection(covered))
    }

    /// Everything this sweep reports of covered memory.
    var dirty: PageSet {
        var all = written.written
        all.formUnion(unseen)
        return all
    }

    /// Unseen pages known to read as zeros when they became unseen (never
    /// populated, discarded): zero still unless written since. Learned
    /// then, not at the sweep: pagemap shows the pte markers that
    /// write-protection leaves in unpopulated pages as swapped pages.
    private(set) var zeroKnown = PageSet()

    mutating func noteZero(_ pages: PageSet) { zeroKnown.formUnion(pages) }

    /// The covered pages this sweep reports as zeros (`zero_ranges`):
    /// unseen and zero then and not written since, or found mapping the
    /// zero page (populated by a read where no marker was).
    var zeroNow: PageSet {
        var zero = unseen.intersection(zeroKnown).subtracting(written.written)
        zero.formUnion(written.zeroPages)
        return zero
    }

    /// After a sweep reported `dirty`: what it found is cleared.
    mutating func reported() {
        unseen = PageSet()
        zeroKnown = PageSet()
        written = WrittenPages()
    }

    /// Closes the descriptor and forgets everything (a new image, an end).
    mutating func reset(to state: State) {
        fd?.close()
        self = WriteProtectedMemory()
        self.state = state
    }
}
