import PageWatchAddressSpace

/// A contiguous run of tracked pages with one intended protection.
/// State per page, one bit each: armed (read-only by us) and dirty (written,
/// or new, since the last sweep re-armed it). Invariant: a tracked page that
/// is not armed is dirty, unless it is pinned.
public struct TrackedRegion: Sendable {
    public var range: AddressRange
    /// The protection the program itself set (maps shows `armed` pages without write).
    public var protection: Protection
    public var armed: PageBitmap
    public var dirty: PageBitmap

    public init(range: AddressRange, protection: Protection) {
        self.range = range
        self.protection = protection
        armed = PageBitmap(pageCount: Int(range.pageCount))
        dirty = PageBitmap(pageCount: Int(range.pageCount))
    }

    public func index(of a: RemoteAddress) -> Int { Int((Page.floor(a) - range.start) / Page.size) }
    public func address(ofPage i: Int) -> RemoteAddress { range.start + UInt64(i) * Page.size }
    /// Indices of this region's pages that `range` touches, or nil.
    public func pageIndices(touching range: AddressRange) -> Range<Int>? {
        guard let x = self.range.intersection(range.pageAligned) else { return nil }
        return index(of: x.start)..<index(of: RemoteAddress(x.end.value - 1)) + 1
    }

    public func range(ofPages r: Range<Int>) -> AddressRange {
        AddressRange(start: address(ofPage: r.lowerBound), end: address(ofPage: r.upperBound))
    }
}

/// An `mprotect` the engine must run.
public struct ProtectionChange: Equatable, Sendable {
    public var range: AddressRange
    public var protection: Protection
}

/// PageWatch's model of the tracked part of the tracee's address space.
public struct TrackedMemory: Sendable {
    public private(set) var regions: [TrackedRegion] = []
    /// Pages never armed because the kernel writes them behind the program's
    /// back (rseq areas, the lowest page of the main stack); reported dirty every sweep.
    public private(set) var pinned = PageSet()
    /// Mapped ranges whose anon_vma PageWatch has seen to before arming them:
    /// one page populated, or nothing to do (`pagesToPopulate`).
    public private(set) var anonVmaSettled = PageSet()

    /// The pages PageWatch populated for that. A registration of the
    /// program's for missing-page faults takes them back when they still
    /// hold nothing (`ProcessTracker.returnPopulatedPages`): its handler
    /// must be asked for them as if PageWatch had not been there.
    public private(set) var populated = PageSet()

    /// Pages dirty without a write PageWatch saw: new to it (a new mapping,
    /// the first sweep), changed behind its back (`madvise`, a protection
    /// the program changed), or counted written conservatively. A sweep
    /// tells from pagemap which of them hold data (`UnseenPages`). Kept
    /// only while they are dirty (`keepUnseenStillDirty`).
    public private(set) var unseen = PageSet()

    public init() {}

    public var trackedPageCount: UInt64 { regions.reduce(0) { $0 + $1.range.pageCount } }
    public var trackedRanges: PageSet { PageSet(regions.map(\.range)) }

    /// Index of the region containing `a`.
    public func regionIndex(containing a: RemoteAddress) -> Int? {
        var lo = 0, hi = regions.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if regions[mid].range.end <= a { lo = mid + 1 } else { hi = mid }
        }
        return lo < regions.count && regions[lo].range.contains(a) ? lo : nil
    }

    public enum PageState: Equatable { case untracked, armed(Protection), writable(Protection) }

    public func state(of a: RemoteAddress) -> PageState {
        guard let r = regionIndex(containing: a) else { return .untracked }
        let i = regions[r].index(of: a)
        return regions[r].armed[i] ? .armed(regions[r].protection) : .writable(regions[r].protection)
    }

    /// A write fault at an armed page: it is now writable and dirty.
    public mutating func markWritten(_ a: RemoteAddress) {
        guard let r = regionIndex(containing: a) else { return }
        let i = regions[r].index(of: a)
        regions[r].armed[i] = false
        regions[r].dirty[i] = true
    }

    /// What a fault at armed page `a` un-arms when gaps are filled: `a`,
    /// and on either side the armed pages between it and the nearest page
    /// of its region not armed (written since the last sweep, presumed or
    /// pinned), when at most `maxGap` pages lie between. One `mprotect`
    /// then leaves one writable run where page-by-page un-arming leaves
    /// two or three, each splitting the armed VMA around it.
    public func gapSpan(around a: RemoteAddress, maxGap: Int) -> AddressRange {
        let page = AddressRange(start: Page.floor(a), end: Page.floor(a) + Page.size)
        guard maxGap > 0, let r = regionIndex(containing: a) else { return page }
        let region = regions[r]
        let i = region.index(of: a)
        // The nearest page not armed within maxGap + 1 on each side.
        let below = region.armed.lastClear(in: max(0, i - 1 - maxGap)..<i)
        let above = region.armed.firstClear(in: (i + 1)..<min(region.armed.pageCount, i + 2 + maxGap))
        return region.range(ofPages: (below.map { $0 + 1 } ?? i)..<(above ?? i + 1))
    }

    /// Marks every page of region `r` writable and dirty (the fallback when a
    /// single-page mprotect fails at vm.max_map_count).
    public mutating func markRegionWritten(containing a: RemoteAddress) -> ProtectionChange? {
        guard let r = regionIndex(containing: a) else { return nil }
        regions[r].armed.clearAll()
        regions[r].dirty.setAll()
        unseen.insert(regions[r].range)
        return ProtectionChange(range: regions[r].range, protection: regions[r].protection)
    }

    /// Rebuilds the tracked set from a fresh `/proc/PID/maps`. A page keeps
    /// its state when maps shows the protection PageWatch expects for it
    /// (`armed` → without write); any other page is new or was changed by the
    /// program, so it takes the protection maps shows and counts as dirty.
    ///
    /// Decided a run at a time, not a page at a time: a maps entry's
    /// selected part is cut where old regions begin and end, and each piece
    /// inside an old region is taken over with word-wide bitmap copies, so
    /// the cost is the maps entries plus the tracked pages over 64 (a sweep
    /// of an 8 GiB region no longer walks its 2 Mi pages).
    public mutating func reconcile(maps: [Mapping], selection: Selection, stackAnchors: [RemoteAddress]) {
        var built = RegionBuilder()
        let oldRegions = regions[...]
        var old = oldRegions.startIndex  // cursor into regions, which are sorted like maps

        for group in MappingGroup.group(maps) {
            if group.mapping.isMainStack {
                // The kernel grows [stack] by extending its lowest VMA, with
                // that VMA's protection: were its lowest page armed, the new
                // pages would be read-only too and the program's first push
                // there a fatal fault. The lowest page is never armed.
                pinned.insert(page: group.mapping.range.start)
            }
            let isThreadStack = stackAnchors.contains { group.mapping.range.contains($0) }
            for entry in group.entries {
                var probe = group.mapping
                probe.range = entry.range
                // Which pages would be selected if writable; protection is decided per run below.
                let parts = selection.selectedPart(
                    of: probe, protection: [.read, .write], isThreadStack: isThreadStack)
                for part in parts { built.add(part, shown: entry.protection, old: oldRegions, cursor: &old) }
            }
        }
        regions = built.regions
        unseen.formUnion(built.changed)
    }

    /// The calls that arm the whole region containing `a` (its pinned pages
    /// excepted), used to merge its VMAs back at vm.max_map_count.
    public func rearmRegionPlan(containing a: RemoteAddress) -> [ProtectionChange]? {
        guard let r = regionIndex(containing: a) else { return nil }
        var rest = PageSet([regions[r].range])
        for p in pinned.intersection(regions[r].range).ranges { rest.remove(p) }
        return rest.ranges.map { ProtectionChange(range: $0, protection: regions[r].protection.armed) }
    }

    /// Marks the region containing `a` armed (its pinned pages excepted), keeping dirty bits.
    public mutating func markRegionArmedKeepingDirty(containing a: RemoteAddress) {
        guard let r = regionIndex(containing: a) else { return }
        armUnpinned(region: r, pages: 0..<regions[r].armed.pageCount)
    }

    /// Sets the armed bits of region `r`'s `pages`, its pinned pages excepted.
    private mutating func armUnpinned(region r: Int, pages: Range<Int>) {
        var i = pages.lowerBound
        for p in pinned.intersection(regions[r].range(ofPages: pages)).ranges {
            let held = regions[r].pageIndices(touching: p)!
            regions[r].armed.set(i..<held.lowerBound, to: true)
            i = held.upperBound
        }
        regions[r].armed.set(i..<pages.upperBound, to: true)
    }

    /// Pins `range`: its pages are never armed again. Returns the armed pages
    /// that must be made writable now.
    public mutating func pin(_ range: AddressRange) -> [ProtectionChange] {
        pinned.insert(range)
        var changes: [ProtectionChange] = []
        for r in regions.indices {
            guard let pages = regions[r].pageIndices(touching: range) else { continue }
            for i in pages where regions[r].armed[i] {
                regions[r].armed[i] = false
                regions[r].dirty[i] = true
                changes.append(
                    ProtectionChange(
                        range: regions[r].range(ofPages: i..<(i + 1)),
                        protection: regions[r].protection))
            }
        }
        return changes
    }

    public func isPinned(_ a: RemoteAddress) -> Bool { pinned.contains(a) }

    /// Everything to report for this interval: dirty pages plus the tracked pinned pages.
    public func dirtyPages() -> PageSet {
        var set = PageSet()
        for r in regions where r.dirty.setCount > 0 {
            for run in r.dirty.runs() { set.insert(r.range(ofPages: run)) }
        }
        set.formUnion(pinned.intersection(trackedRanges))
        return set
    }

    /// The pages armed now.
    public func armedPages() -> PageSet {
        var set = PageSet()
        for r in regions where r.armed.setCount > 0 {
            for run in r.armed.runs() { set.insert(r.range(ofPages: run)) }
        }
        return set
    }

    /// Dirty pages the program may write that are not armed now, pinned
    /// pages excepted: the pages a sweep could leave writable.
    public func unarmedWritablePages() -> PageSet {
        var set = PageSet()
        for r in regions where r.dirty.setCount > 0 && r.protection.contains(.write) {
            for run in r.dirty.runs() {
                var i = run.lowerBound
                for armedRun in r.armed.runs(in: run) {
                    if i < armedRun.lowerBound { set.insert(r.range(ofPages: i..<armedRun.lowerBound)) }
                    i = armedRun.upperBound
                }
                if i < run.upperBound { set.insert(r.range(ofPages: i..<run.upperBound)) }
            }
        }
        return set.subtracting(pinned)
    }

    /// Tracked pages the program may write, pinned pages excepted, armed or
    /// not: the pages a sweep may un-arm to leave writable.
    public func writableUnpinnedPages() -> PageSet {
        PageSet(regions.filter { $0.protection.contains(.write) }.map(\.range)).subtracting(pinned)
    }

    /// The `mprotect` calls that re-arm every dirty, unpinned page: one per
    /// region, from its first dirty page to its last, split only around
    /// pinned pages. Clean pages in between are armed already, and arming
    /// them again is harmless, so scattered dirty pages cost one call, and
    /// the VMAs the faults split merge back (so vm.max_map_count is not reached).
    public func rearmPlan() -> [ProtectionChange] {
        var plan: [ProtectionChange] = []
        for r in regions where r.dirty.setCount > 0 && r.protection.contains(.write) {
            let all = 0..<r.dirty.pageCount
            let span = r.range(ofPages: r.dirty.firstSet(in: all)!..<r.dirty.lastSet(in: all)! + 1)
            var rest = PageSet([span])
            for p in pinned.intersection(span).ranges { rest.remove(p) }
            for piece in rest.ranges {
                plan.append(ProtectionChange(range: piece, protection: r.protection.armed))
            }
        }
        return plan
    }

    /// After PageWatch un-armed `range` itself: writable, hence dirty.
    public mutating func markUnarmed(_ range: AddressRange) {
        for r in regions.indices {
            guard let pages = regions[r].pageIndices(touching: range) else { continue }
            regions[r].armed.set(pages, to: false)
            regions[r].dirty.set(pages, to: true)
        }
    }

    /// Records that `change` (from `rearmPlan`) was applied: armed, no longer dirty.
    public mutating func markArmed(_ range: AddressRange) {
        for r in regions.indices {
            guard let pages = regions[r].pageIndices(touching: range) else { continue }
            regions[r].armed.set(pages, to: true)
            regions[r].dirty.set(pages, to: false)
        }
    }

    /// After a sweep: pages the program keeps read-only cannot be written
    /// until it makes them writable again (which arms them), so their dirty
    /// bits, reported now, are cleared without re-arming.
    public mutating func clearReadOnlyDirty() {
        for i in regions.indices where !regions[i].protection.contains(.write) { regions[i].dirty.clearAll() }
    }

    /// Clears the dirty bits of pinned pages once a sweep has reported them.
    public mutating func clearPinnedDirty() {
        for p in pinned.ranges {
            for r in regions.indices {
                guard let pages = regions[r].pageIndices(touching: p) else { continue }
                regions[r].dirty.set(pages, to: false)
            }
        }
    }

    // MARK: - One populated page per mapping before arming

    /// One page to populate in each private mapping (maps line) that has
    /// tracked pages and is not settled yet: its first tracked page that is
    /// writable now (a page already armed cannot be populated from outside
    /// without un-arming it). The main stack (it grows down, and has its
    /// anon_vma from exec) and `excluded` pages (userfaultfd ranges) are left
    /// alone. Every piece looked at becomes settled.
    public mutating func pagesToPopulate(maps: [Mapping], excluded: PageSet) -> [RemoteAddress] {
        var pages: [RemoteAddress] = []
        for group in MappingGroup.group(maps) where group.mapping.isPrivate && !group.mapping.isMainStack {
            for entry in group.entries {
                var unsettled = PageSet([entry.range])
                for s in anonVmaSettled.intersection(entry.range).ranges { unsettled.remove(s) }
                for piece in unsettled.ranges {
                    guard let (page, tracked) = firstWritablePage(in: piece) else { continue }
                    if let page, !excluded.contains(page) { pages.append(page) }
                    if tracked { anonVmaSettled.insert(piece) }
                }
            }
        }
        return pages
    }

    /// The page to populate in a new mapping `range` about to be armed, if any; `range` becomes settled.
    public mutating func pageToPopulate(in range: AddressRange, excluded: PageSet) -> RemoteAddress? {
        let r = range.pageAligned
        guard settle(r) else { return nil }
        guard let (page, _) = firstWritablePage(in: r), let page, !excluded.contains(page) else { return nil }
        return page
    }

    /// Marks `range` settled; whether none of it was before.
    public mutating func settle(_ range: AddressRange) -> Bool {
        let r = range.pageAligned
        defer { anonVmaSettled.insert(r) }
        return anonVmaSettled.intersection(r).isEmpty
    }

    /// The first tracked page of `range` that the program may write and is
    /// not armed, and whether `range` has tracked pages at all; nil when none.
    private func firstWritablePage(in range: AddressRange) -> (page: RemoteAddress?, tracked: Bool)? {
        var lo = 0, hi = regions.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if regions[mid].range.end <= range.start { lo = mid + 1 } else { hi = mid }
        }
        var tracked = false
        for r in regions[lo...] {
            guard r.range.start < range.end else { break }
            guard let pages = r.pageIndices(touching: range) else { continue }
            tracked = true
            if r.protection.contains(.write), let i = r.armed.firstClear(in: pages) {
                return (r.address(ofPage: i), true)
            }
        }
        return tracked ? (nil, true) : nil
    }

    // MARK: - Edits for the program's own memory syscalls

    /// Makes a region boundary at `a` (splitting the region containing it).
    mutating func split(at a: RemoteAddress) {
        guard let r = regionIndex(containing: a), regions[r].range.start != a else { return }
        let old = regions[r]
        let cut = old.index(of: a)
        var left = TrackedRegion(
            range: AddressRange(start: old.range.start, end: old.range.start), protection: old.protection)
        var right = TrackedRegion(range: AddressRange(start: a, end: a), protection: old.protection)
        left.append(pages: 0..<cut, of: old, unarming: false)
        right.append(pages: cut..<old.armed.pageCount, of: old, unarming: false)
        regions.replaceSubrange(r...r, with: [left, right])
    }

    /// Indices of the regions inside `range`, after splitting at its ends.
    mutating func isolate(_ range: AddressRange) -> Range<Int> {
        split(at: range.start)
        split(at: range.end)
        let lo = regions.firstIndex { $0.range.end > range.start } ?? regions.count
        var hi = lo
        while hi < regions.count && regions[hi].range.start < range.end { hi += 1 }
        return lo..<hi
    }

    /// munmap: the pages are gone.
    public mutating func forget(_ range: AddressRange) {
        let r = range.pageAligned
        regions.removeSubrange(isolate(r))
        anonVmaSettled.remove(r)
        populated.remove(r)
        unseen.remove(r)
    }

    /// Tracks `range` afresh with the given state (replacing what was there).
    public mutating func insert(_ range: AddressRange, protection: Protection, armed: Bool, dirty: Bool) {
        let r = range.pageAligned
        forget(r)
        var region = TrackedRegion(range: r, protection: protection)
        if armed { region.armed.setAll() }
        if dirty {
            region.dirty.setAll()
            unseen.insert(r)
        }
        let at = regions.firstIndex { $0.range.start > r.start } ?? regions.count
        regions.insert(region, at: at)
    }

    /// The program's mprotect on tracked pages: their protection becomes
    /// `protection`; with `armAll` (PageWatch ran the call without write)
    /// every page is armed, dirty bits kept.
    public mutating func setProtection(_ range: AddressRange, _ protection: Protection, armAll: Bool) {
        for i in isolate(range.pageAligned) {
            regions[i].protection = protection
            if !protection.contains(.write) {
                // Read-only to the program itself: nothing PageWatch armed;
                // dirty bits are kept (written before) and the page stays
                // known, so making it writable again is no new mapping.
                regions[i].armed.clearAll()
            } else if armAll {
                armUnpinned(region: i, pages: 0..<regions[i].armed.pageCount)
            }
        }
    }

    /// madvise(MADV_DONTNEED/FREE/REMOVE): the contents changed without a store.
    public mutating func markDirty(_ range: AddressRange) {
        unseen.insert(range.pageAligned)
        for i in regions.indices {
            guard let pages = regions[i].pageIndices(touching: range) else { continue }
            regions[i].dirty.set(pages, to: true)
        }
    }

    /// Armed pages of `range`, as the changes that un-arm them.
    public func armedPieces(in range: AddressRange) -> [ProtectionChange] {
        var out: [ProtectionChange] = []
        for r in regions {
            guard let pages = r.pageIndices(touching: range) else { continue }
            for run in r.armed.runs(in: pages) {
                out.append(ProtectionChange(range: r.range(ofPages: run), protection: r.protection))
            }
        }
        return out
    }

    /// Tracked parts of `range`, with their regions' protections.
    public func trackedPieces(in range: AddressRange) -> [ProtectionChange] {
        regions.compactMap { r in
            r.range.intersection(range.pageAligned).map { ProtectionChange(range: $0, protection: r.protection) }
        }
    }

    /// After PageWatch armed `range` itself: armed, dirty bits kept (a new mapping stays dirty).
    public mutating func markArmedKeepingDirty(_ range: AddressRange) {
        for i in regions.indices {
            guard let pages = regions[i].pageIndices(touching: range) else { continue }
            armUnpinned(region: i, pages: pages)
        }
    }

    /// Whether the armed state is the same for every tracked page of `range`.
    public func isUniform(_ range: AddressRange) -> Bool {
        var seen: Bool?
        for r in regions {
            guard let pages = r.pageIndices(touching: range) else { continue }
            let anyArmed = r.armed.firstSet(in: pages) != nil, anyUnarmed = r.armed.firstClear(in: pages) != nil
            if anyArmed && anyUnarmed { return false }
            if let s = seen, s != anyArmed { return false }
            seen = anyArmed
        }
        return true
    }

    /// Forgets everything (exec replaced the address space).
    public mutating func reset() {
        regions = []
        pinned = PageSet()
        anonVmaSettled = PageSet()
        populated = PageSet()
        unseen = PageSet()
    }

    /// After a sweep reported them: only pages still dirty stay unseen.
    public mutating func keepUnseenStillDirty() {
        guard !unseen.isEmpty else { return }
        unseen = unseen.intersection(dirtyPages())
    }

    /// Remembers pages PageWatch populated.
    public mutating func notePopulated(_ pages: [RemoteAddress]) {
        for page in pages { populated.insert(page: page) }
    }

    /// The populated pages in `range`, forgotten as such.
    public mutating func takePopulated(in range: AddressRange) -> [RemoteAddress] {
        let r = range.pageAligned
        let taken = populated.intersection(r)
        populated.remove(r)
        return taken.ranges.flatMap { piece in
            stride(from: piece.start.value, to: piece.end.value, by: Int(Page.size)).map { RemoteAddress($0) }
        }
    }
}

// MARK: - Reconciling one range

extension TrackedMemory {
    /// `reconcile(maps:selection:stackAnchors:)` for the pages of `range`
    /// (widened to pages) alone, after a call that changed nothing else
    /// (mmap, mprotect, brk): the regions inside it are rebuilt from `maps`,
    /// the entries that overlap it, and the rest of the model is left as it
    /// is. Equal in effect to the whole reconcile when the rest of maps did
    /// not change, and neither did what is decided per mapping (a run of
    /// entries, `MappingGroup`) rather than per entry, which `maps` must
    /// then hold whole: that a mapping is the main stack (its lowest page is
    /// pinned; its pieces without the `[stack]` label are stack too) and,
    /// for `--track stack`, a thread stack (it holds an anchor). A call on
    /// a stack can change that outside `range` (an executable piece splits
    /// it): the engine reads all of maps there.
    public mutating func reconcile(
        maps: [Mapping], within range: AddressRange, selection: Selection, stackAnchors: [RemoteAddress]
    ) {
        let window = range.pageAligned
        guard !window.isEmpty else { return }
        let inside = isolate(window)
        let old = regions[inside]
        var built = RegionBuilder()
        var o = old.startIndex  // cursor into old, sorted like maps
        for group in MappingGroup.group(maps) {
            if group.mapping.isMainStack { pinned.insert(page: group.mapping.range.start) }
            let isThreadStack = stackAnchors.contains { group.mapping.range.contains($0) }
            for entry in group.entries where entry.range.overlaps(window) {
                var probe = group.mapping
                probe.range = entry.range
                let parts = selection.selectedPart(
                    of: probe, protection: [.read, .write], isThreadStack: isThreadStack)
                // As in the whole reconcile, cut to the window.
                for part in parts.compactMap({ $0.intersection(window) }) {
                    built.add(part, shown: entry.protection, old: old, cursor: &o)
                }
            }
        }
        regions.replaceSubrange(inside, with: built.regions)
        unseen.formUnion(built.changed)
        // The whole reconcile makes one region of a run with one protection
        // across the window's ends too.
        join(at: window.end)
        join(at: window.start)
    }

    /// Joins the region ending at `a` and the one starting there when they
    /// have the same protection.
    mutating func join(at a: RemoteAddress) {
        guard let right = regionIndex(containing: a), right > 0, regions[right].range.start == a,
            regions[right - 1].range.end == a, regions[right - 1].protection == regions[right].protection
        else { return }
        let next = regions[right]
        regions[right - 1].append(pages: 0..<next.armed.pageCount, of: next, unarming: false)
        regions.remove(at: right)
    }
}

extension TrackedRegion {
    /// Grows the region by `count` pages with the same state.
    mutating func append(count: Int, armed a: Bool, dirty d: Bool) {
        range = AddressRange(start: range.start, end: range.end + UInt64(count) * Page.size)
        armed.append(repeating: a, count: count)
        dirty.append(repeating: d, count: count)
    }

    /// Grows the region by `old`'s pages `pages` with their state, or,
    /// `unarming`, unarmed and dirty where they were armed.
    mutating func append(pages: Range<Int>, of old: TrackedRegion, unarming: Bool) {
        range = AddressRange(start: range.start, end: range.end + UInt64(pages.count) * Page.size)
        if unarming {
            armed.append(repeating: false, count: pages.count)
            dirty.append(count: pages.count) { k in
                old.dirty.word(from: pages.lowerBound + k) | old.armed.word(from: pages.lowerBound + k)
            }
        } else {
            armed.append(old.armed, pages: pages)
            dirty.append(old.dirty, pages: pages)
        }
    }
}

/// The regions `reconcile` builds, in address order: a run continuing the
/// last region with its protection joins it.
struct RegionBuilder {
    private(set) var regions: [TrackedRegion] = []
    /// Pages made dirty here: new, or changed behind PageWatch's back.
    private(set) var changed = PageSet()

    /// The region `range` joins, made if it continues none.
    private mutating func last(for range: AddressRange, _ protection: Protection) -> Int {
        if let last = regions.last, last.range.end == range.start, last.protection == protection {
            return regions.count - 1
        }
        regions.append(TrackedRegion(range: AddressRange(start: range.start, end: range.start), protection: protection))
        return regions.count - 1
    }

    /// `old`'s pages `pages`, which maps shows with protection `shown`. A
    /// page keeps its state when `shown` is what PageWatch expects for it
    /// (its protection, minus write if armed); any other page was changed
    /// by the program (`appendChanged`), except that a page shown with its
    /// region's own protection stays in the model with it.
    mutating func takeOver(_ old: TrackedRegion, pages: Range<Int>, shown: Protection) {
        guard !pages.isEmpty else { return }
        switch (old.protection.armed == shown, old.protection == shown) {
        case (true, true):
            // Read-only to the program (so never armed): nothing to decide.
            appendKept(pages, of: old)
        case (false, true):
            // Shown writable: armed pages were made writable by the program;
            // they stay, unarmed and dirty.
            regions[last(for: old.range(ofPages: pages), old.protection)].append(pages: pages, of: old, unarming: true)
            for run in old.armed.runs(in: pages) { changed.insert(old.range(ofPages: run)) }
        case (true, false):
            // Shown armed: armed pages keep their state, unarmed ones changed.
            var i = pages.lowerBound
            for run in old.armed.runs(in: pages) {
                appendChanged(old.range(ofPages: i..<run.lowerBound), shown: shown)
                appendKept(run, of: old)
                i = run.upperBound
            }
            appendChanged(old.range(ofPages: i..<pages.upperBound), shown: shown)
        case (false, false):
            appendChanged(old.range(ofPages: pages), shown: shown)
        }
    }

    /// A selected `part` of a maps entry that shows `shown`: the pages of
    /// `old`'s regions it covers are taken over, the others are new to the
    /// model. `cursor` walks `old`, which is sorted like maps.
    mutating func add(
        _ part: AddressRange, shown: Protection, old: ArraySlice<TrackedRegion>, cursor: inout Int
    ) {
        var page = part.start
        while page < part.end {
            while cursor < old.endIndex && old[cursor].range.end <= page { cursor += 1 }
            if cursor < old.endIndex && old[cursor].range.start <= page {
                let r = old[cursor]
                let end = min(part.end, r.range.end)
                takeOver(r, pages: r.index(of: page)..<r.index(of: end), shown: shown)
                page = end
            } else {
                let end = cursor < old.endIndex ? min(part.end, old[cursor].range.start) : part.end
                appendChanged(AddressRange(start: page, end: end), shown: shown)
                page = end
            }
        }
    }

    /// Pages new to the model, or changed behind PageWatch's back: they take
    /// the protection maps shows, unarmed and dirty, if the program can write them.
    mutating func appendChanged(_ range: AddressRange, shown: Protection) {
        guard shown.contains(.write), !range.isEmpty else { return }
        regions[last(for: range, shown)].append(count: Int(range.pageCount), armed: false, dirty: true)
        changed.insert(range)
    }

    /// `old`'s pages `pages` with their state. A whole region that continues
    /// nothing is shared, not copied.
    private mutating func appendKept(_ pages: Range<Int>, of old: TrackedRegion) {
        let range = old.range(ofPages: pages)
        if pages == 0..<old.armed.pageCount,
            regions.last.map({ $0.range.end != range.start || $0.protection != old.protection }) ?? true
        {
            regions.append(old)
            return
        }
        regions[last(for: range, old.protection)].append(pages: pages, of: old, unarming: false)
    }
}

/// Adjacent maps lines that are one mapping as the program made it: the
/// kernel splits a VMA wherever PageWatch arms part of it.
struct MappingGroup {
    var mapping: Mapping
    var entries: [Mapping]

    static func group(_ maps: [Mapping]) -> [MappingGroup] {
        var out: [MappingGroup] = []
        for m in maps {
            let continues =
                out.last.map { last in
                    last.mapping.range.end == m.range.start && last.mapping.isPrivate == m.isPrivate
                        && last.mapping.inode == m.inode && samePath(last.entries.last!.path, m.path)
                        && last.mapping.device == m.device
                        && last.entries.last!.protection.union(.write) == m.protection.union(.write)
                } ?? false
            if continues {
                // In place: a copy of the last group would copy its entries at
                // every line, quadratic in the VMAs scattered faults split a mapping into.
                let i = out.count - 1
                out[i].mapping.range = AddressRange(start: out[i].mapping.range.start, end: m.range.end)
                if m.path == "[stack]" { out[i].mapping.path = m.path }
                out[i].entries.append(m)
            } else {
                out.append(MappingGroup(mapping: m, entries: [m]))
            }
        }
        return out
    }

    /// The kernel labels only the piece of the main stack that holds the
    /// initial stack pointer `[stack]`; its other pieces show no path.
    static func samePath(_ a: String, _ b: String) -> Bool {
        a == b || (a == "[stack]" && b.isEmpty) || (a.isEmpty && b == "[stack]")
    }
}
