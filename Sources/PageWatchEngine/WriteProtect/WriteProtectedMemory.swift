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
    /// asked), so covering a range costs the program a page table per 2 MiB
    /// of it (2 MiB per GiB), and each sweep's scan walks them all (about
    /// 12 ns a page here): a sparse reservation of terabytes (a sanitizer's
    /// shadow) would run the program out of memory.
    static let largestRange: UInt64 = 16 << 30

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
    mutating func cover(_ range: AddressRange) {
        covered.insert(range)
        unseen.insert(range)
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
    }

    /// `madvise` discarded covered pages: their contents changed without
    /// a write; `zeroed`: they read as zeros now (not `MADV_FREE`'s, which
    /// keep their data until the kernel takes them).
    mutating func markDiscarded(_ range: AddressRange, zeroed: Bool) {
        let discarded = covered.intersection(range)
        unseen.formUnion(discarded)
        if zeroed { zeroKnown.formUnion(discarded) }
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
