import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

/// The model against synthetic /proc/PID/maps snapshots.
@Suite struct TrackedMemoryTests {
    let rw: Protection = [.read, .write]
    let p = Page.size

    func anon(_ a: UInt64, _ b: UInt64, _ prot: Protection) -> Mapping {
        Mapping(range: AddressRange(a, b), protection: prot, isPrivate: true)
    }

    /// A model whose region 0x10000-0x18000 was reconciled and then fully re-armed.
    func armedModel() -> TrackedMemory {
        var m = TrackedMemory()
        m.reconcile(maps: [anon(0x10000, 0x18000, rw)], selection: Selection([]), stackAnchors: [])
        #expect(m.dirtyPages().ranges == [AddressRange(0x10000, 0x18000)])
        let plan = m.rearmPlan()
        #expect(plan == [ProtectionChange(range: AddressRange(0x10000, 0x18000), protection: [.read])])
        for c in plan { m.markArmed(c.range) }
        #expect(m.dirtyPages().isEmpty)
        return m
    }

    @Test func newMappingIsDirtyThenArmed() {
        let m = armedModel()
        #expect(m.state(of: RemoteAddress(0x12000)) == .armed(rw))
        #expect(m.state(of: RemoteAddress(0x18000)) == .untracked)
    }

    @Test func faultsMakePagesDirtyAndPlansCoalesce() {
        var m = armedModel()
        for a: UInt64 in [0x11000, 0x12000, 0x15000] { m.markWritten(RemoteAddress(a)) }
        #expect(m.state(of: RemoteAddress(0x11000)) == .writable(rw))
        #expect(m.dirtyPages().ranges == [AddressRange(0x11000, 0x13000), AddressRange(0x15000, 0x16000)])
        // One call from the first dirty page to the last: the clean page between is armed already.
        #expect(m.rearmPlan().map(\.range) == [AddressRange(0x11000, 0x16000)])
        for c in m.rearmPlan() { m.markArmed(c.range) }
        #expect(m.dirtyPages().isEmpty)
        #expect(m.state(of: RemoteAddress(0x13000)) == .armed(rw))
    }

    /// A fault's span when gaps are filled: up to the nearest page not
    /// armed on either side within `maxGap` pages, inside the region only.
    @Test func gapSpansReachTheNearestWritablePage() {
        var m = armedModel()  // pages 0x10-0x17
        m.markWritten(RemoteAddress(0x10000))
        m.markWritten(RemoteAddress(0x14000))
        func span(_ a: UInt64, _ gap: Int) -> AddressRange { m.gapSpan(around: RemoteAddress(a), maxGap: gap) }
        // Between 0x10 and 0x14: both gaps of 1 and 2 pages filled.
        #expect(span(0x12000, 8) == AddressRange(0x11000, 0x14000))
        #expect(span(0x12000, 1) == AddressRange(0x11000, 0x14000))
        // Gaps of 2 pages on one side: filled at 2, not at 1.
        #expect(span(0x11000, 2) == AddressRange(0x11000, 0x14000))
        #expect(span(0x13000, 2) == AddressRange(0x11000, 0x14000))
        #expect(span(0x13000, 1) == AddressRange(0x13000, 0x14000))
        // The region's end is no writable page: nothing filled towards it.
        #expect(span(0x16000, 2) == AddressRange(0x15000, 0x17000))
        #expect(span(0x17000, 1) == AddressRange(0x17000, 0x18000))
        // No filling asked, or no writable page near: the page alone.
        #expect(span(0x12000, 0) == AddressRange(0x12000, 0x13000))
        #expect(span(0x17000, 0) == AddressRange(0x17000, 0x18000))
        // Outside the model: the page alone.
        #expect(span(0x30000, 8) == AddressRange(0x30000, 0x31000))
    }

    @Test func reconcileKeepsStateWhereMapsShowsWhatWeDid() {
        var m = armedModel()
        m.markWritten(RemoteAddress(0x13000))
        // The kernel split the VMA where we made one page writable again.
        let maps = [anon(0x10000, 0x13000, [.read]), anon(0x13000, 0x14000, rw), anon(0x14000, 0x18000, [.read])]
        m.reconcile(maps: maps, selection: Selection([]), stackAnchors: [])
        #expect(m.regions.count == 1)
        #expect(m.dirtyPages().ranges == [AddressRange(0x13000, 0x14000)])
        #expect(m.state(of: RemoteAddress(0x10000)) == .armed(rw))
    }

    @Test func reconcileTreatsChangedPagesAsNewOrGone() {
        var m = armedModel()
        // The program replaced 0x14000-0x16000 by a fresh writable mapping (munmap + mmap),
        // made 0x10000-0x11000 read-only itself... maps shows r-- there, as for armed: kept armed.
        // and unmapped 0x16000-0x18000; heap grew a new mapping at 0x20000.
        let maps = [anon(0x10000, 0x14000, [.read]), anon(0x14000, 0x16000, rw), anon(0x20000, 0x22000, rw)]
        m.reconcile(maps: maps, selection: Selection([]), stackAnchors: [])
        #expect(m.dirtyPages().ranges == [AddressRange(0x14000, 0x16000), AddressRange(0x20000, 0x22000)])
        #expect(m.state(of: RemoteAddress(0x17000)) == .untracked)
        #expect(m.trackedPageCount == 4 + 2 + 2)
    }

    @Test func pinnedPagesAreNeverArmedAndAlwaysReported() {
        var m = armedModel()
        m.markWritten(RemoteAddress(0x10000))
        m.markWritten(RemoteAddress(0x17000))
        let changes = m.pin(AddressRange(0x12000, 0x14000))
        #expect(changes.map(\.range) == [AddressRange(0x12000, 0x13000), AddressRange(0x13000, 0x14000)])
        #expect(changes.allSatisfy { $0.protection == rw })
        // Re-arming goes around the pinned pages.
        #expect(m.rearmPlan().map(\.range) == [AddressRange(0x10000, 0x12000), AddressRange(0x14000, 0x18000)])
        #expect(
            m.dirtyPages().ranges == [
                AddressRange(0x10000, 0x11000), AddressRange(0x12000, 0x14000),
                AddressRange(0x17000, 0x18000),
            ])
        for c in m.rearmPlan() { m.markArmed(c.range) }
        m.clearPinnedDirty()
        for _ in 0..<2 {
            #expect(m.dirtyPages().ranges == [AddressRange(0x12000, 0x14000)])
            for c in m.rearmPlan() { m.markArmed(c.range) }
            m.clearPinnedDirty()
        }
        // A pin outside tracked memory reports nothing.
        _ = m.pin(AddressRange(0x90000, 0x91000))
        #expect(m.dirtyPages().ranges == [AddressRange(0x12000, 0x14000)])
    }

    @Test func regionFallbackUnarmsEverything() {
        var m = armedModel()
        let change = m.markRegionWritten(containing: RemoteAddress(0x14000))
        #expect(change == ProtectionChange(range: AddressRange(0x10000, 0x18000), protection: rw))
        #expect(m.dirtyPages().pageCount == 8)
    }

    @Test func protectionDifferencesSplitRegions() {
        var m = TrackedMemory()
        let rwx: Protection = [.read, .write, .execute]
        m.reconcile(
            maps: [anon(0x10000, 0x12000, rw), anon(0x12000, 0x13000, rwx)],
            selection: Selection([]), stackAnchors: [])
        #expect(m.regions.map(\.range) == [AddressRange(0x10000, 0x12000), AddressRange(0x12000, 0x13000)])
        // Arming keeps PROT_EXEC (JIT code still runs).
        #expect(m.rearmPlan().map(\.protection) == [[.read], [.read, .execute]])
    }

    @Test func threadStackAnchorsSelectWholeStacks() {
        var m = TrackedMemory()
        let maps = [anon(0x10000, 0x11000, []), anon(0x11000, 0x19000, rw), anon(0x30000, 0x31000, rw)]
        m.reconcile(maps: maps, selection: Selection([.stack]), stackAnchors: [RemoteAddress(0x18ff0)])
        #expect(m.regions.map(\.range) == [AddressRange(0x11000, 0x19000)])
        // After arming part of it the stack is split in maps but still one stack.
        m.markArmed(AddressRange(0x11000, 0x15000))
        let split = [anon(0x10000, 0x11000, []), anon(0x11000, 0x15000, [.read]), anon(0x15000, 0x19000, rw)]
        m.reconcile(maps: split, selection: Selection([.stack]), stackAnchors: [RemoteAddress(0x18ff0)])
        #expect(m.regions.map(\.range) == [AddressRange(0x11000, 0x19000)])
        #expect(m.dirtyPages().ranges == [AddressRange(0x15000, 0x19000)])
    }

    // MARK: - reconcile's run-at-a-time decisions against the page-at-a-time rule

    /// A region as pages and runs, to compare models.
    struct RegionState: Equatable, CustomStringConvertible {
        var range: AddressRange
        var protection: Protection
        var armed: [Range<Int>]
        var dirty: [Range<Int>]
        var description: String { "\(range) \(protection) armed \(armed) dirty \(dirty)" }
    }

    func states(_ regions: [TrackedRegion]) -> [RegionState] {
        regions.map {
            RegionState(range: $0.range, protection: $0.protection, armed: $0.armed.runs(), dirty: $0.dirty.runs())
        }
    }

    /// `reconcile` as it was written first, one page at a time: the rule the
    /// bulk version must keep exactly.
    func referenceReconcile(_ regions: [TrackedRegion], maps: [Mapping], selection: Selection) -> [RegionState] {
        var pages: [(page: RemoteAddress, protection: Protection, armed: Bool, dirty: Bool)] = []
        func oldRegion(_ page: RemoteAddress) -> TrackedRegion? { regions.first { $0.range.contains(page) } }
        for group in MappingGroup.group(maps) {
            for entry in group.entries {
                var probe = group.mapping
                probe.range = entry.range
                for part in selection.selectedPart(of: probe, protection: [.read, .write], isThreadStack: false) {
                    var page = part.start
                    while page < part.end {
                        var intended = entry.protection, armed = false, dirty = true
                        let r = oldRegion(page)
                        if let r {
                            let i = r.index(of: page)
                            if (r.armed[i] ? r.protection.armed : r.protection) == entry.protection {
                                intended = r.protection; armed = r.armed[i]; dirty = r.dirty[i]
                            }
                        }
                        if intended.contains(.write) || (r != nil && intended == r!.protection) {
                            pages.append((page, intended, armed, dirty))
                        }
                        page = page + Page.size
                    }
                }
            }
        }
        var out: [TrackedRegion] = []
        for p in pages {
            if let last = out.last, last.range.end == p.page, last.protection == p.protection {
                out[out.count - 1].append(count: 1, armed: p.armed, dirty: p.dirty)
            } else {
                var r = TrackedRegion(range: AddressRange(start: p.page, end: p.page), protection: p.protection)
                r.append(count: 1, armed: p.armed, dirty: p.dirty)
                out.append(r)
            }
        }
        return states(out)
    }

    /// A small deterministic generator (SplitMix64), so a failure can be replayed.
    struct Seeded: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    /// Maps over a 150-page window: entries of random lengths (splitting
    /// regions anywhere, word boundaries included), each with either what
    /// PageWatch expects of its first page or another protection.
    func randomMaps(_ m: TrackedMemory, _ rng: inout Seeded) -> [Mapping] {
        let base: UInt64 = 0x100000,
            protections: [Protection] = [[.read], [.read, .write], [.read, .write, .execute], []]
        var maps: [Mapping] = []
        var page = 0
        while page < 150 {
            let n = Int.random(in: 1...(Bool.random(using: &rng) ? 3 : 70), using: &rng)
            let range = AddressRange(base + UInt64(page) * p, base + UInt64(min(150, page + n)) * p)
            page += n
            if Int.random(in: 0..<6, using: &rng) == 0 { continue }  // a hole: unmapped
            var prot = protections.randomElement(using: &rng)!
            if Bool.random(using: &rng) {
                switch m.state(of: range.start) {
                case .armed(let q): prot = q.armed
                case .writable(let q): prot = q
                case .untracked: break
                }
            }
            maps.append(anon(range.start.value, range.end.value, prot))
        }
        return maps
    }

    @Test(arguments: 0..<200 as Range<UInt64>)
    func bulkReconcileMatchesThePageRule(seed: UInt64) {
        var rng = Seeded(state: seed)
        var m = TrackedMemory()
        // History: a few reconciles and the edits the engine makes between them.
        for _ in 0..<4 {
            let maps = randomMaps(m, &rng)
            let selection =
                Bool.random(using: &rng) ? Selection([]) : Selection([.range(AddressRange(0x108000, 0x170000))])
            let before = m.regions
            m.reconcile(maps: maps, selection: selection, stackAnchors: [])
            #expect(
                states(m.regions) == referenceReconcile(before, maps: maps, selection: selection),
                "seed \(seed): \(maps.map { "\($0.range) \($0.protection)" })")
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                let a = 0x100000 + UInt64.random(in: 0..<150, using: &rng) * p
                let range = AddressRange(a, a + UInt64.random(in: 1...80, using: &rng) * p)
                switch Int.random(in: 0..<7, using: &rng) {
                case 0: for c in m.rearmPlan() { m.markArmed(c.range) }
                case 1: m.markArmed(range)
                case 2: m.markWritten(range.start)
                case 3: _ = m.pin(AddressRange(a, a + p))
                case 4:
                    m.setProtection(range, Bool.random(using: &rng) ? [.read] : rw, armAll: Bool.random(using: &rng))
                case 5: m.markDirty(range)
                default: m.markArmedKeepingDirty(range)
                }
            }
        }
    }

    @Test func reconcileTakesWholeRegionsAndSplitsThem() {
        var m = armedModel()
        // Unchanged maps: the region is kept as it was (shared, not rebuilt).
        m.reconcile(maps: [anon(0x10000, 0x18000, [.read])], selection: Selection([]), stackAnchors: [])
        #expect(m.regions.count == 1 && m.dirtyPages().isEmpty && m.regions[0].armed.setCount == 8)
        // The program unmapped the middle: two regions, states kept.
        m.markWritten(RemoteAddress(0x11000))
        m.reconcile(
            maps: [anon(0x10000, 0x11000, [.read]), anon(0x11000, 0x12000, rw), anon(0x16000, 0x18000, [.read])],
            selection: Selection([]), stackAnchors: [])
        #expect(m.regions.map(\.range) == [AddressRange(0x10000, 0x12000), AddressRange(0x16000, 0x18000)])
        #expect(m.dirtyPages().ranges == [AddressRange(0x11000, 0x12000)])
        // It grew again: the new pages are dirty, the old keep their state.
        m.reconcile(
            maps: [anon(0x10000, 0x11000, [.read]), anon(0x11000, 0x16000, rw), anon(0x16000, 0x18000, [.read])],
            selection: Selection([]), stackAnchors: [])
        #expect(m.regions.map(\.range) == [AddressRange(0x10000, 0x18000)])
        #expect(m.dirtyPages().ranges == [AddressRange(0x11000, 0x16000)])
        #expect(m.state(of: RemoteAddress(0x17000)) == .armed(rw))
    }

    @Test func reconcileSeesProtectionChangedByTheProgram() {
        var m = armedModel()
        m.markWritten(RemoteAddress(0x12000))
        // rw- over armed pages: the program made them writable (all unarmed, dirty);
        // --- over the written page and r-x over armed ones: changed, no longer tracked.
        let maps = [
            anon(0x10000, 0x12000, rw), anon(0x12000, 0x13000, []), anon(0x13000, 0x14000, [.read, .execute]),
            anon(0x14000, 0x18000, [.read]),
        ]
        m.reconcile(maps: maps, selection: Selection([]), stackAnchors: [])
        #expect(m.regions.map(\.range) == [AddressRange(0x10000, 0x12000), AddressRange(0x14000, 0x18000)])
        #expect(m.dirtyPages().ranges == [AddressRange(0x10000, 0x12000)])
        #expect(m.state(of: RemoteAddress(0x11000)) == .writable(rw))
        #expect(m.state(of: RemoteAddress(0x14000)) == .armed(rw))
    }

    @Test func reconcileKeepsPinnedAndMixedPages() {
        var m = armedModel()
        _ = m.pin(AddressRange(0x13000, 0x14000))
        m.markWritten(RemoteAddress(0x15000))
        // One r-- entry over armed and unarmed (pinned, written) pages: the
        // unarmed ones were changed (r-- is not what PageWatch expects of them).
        m.reconcile(maps: [anon(0x10000, 0x18000, [.read])], selection: Selection([]), stackAnchors: [])
        #expect(
            m.regions.map(\.range) == [
                AddressRange(0x10000, 0x13000), AddressRange(0x14000, 0x15000),
                AddressRange(0x16000, 0x18000),
            ])
        // Maps as PageWatch left it: everything kept; the pinned page is reported.
        var n = armedModel()
        _ = n.pin(AddressRange(0x13000, 0x14000))
        n.reconcile(
            maps: [anon(0x10000, 0x13000, [.read]), anon(0x13000, 0x14000, rw), anon(0x14000, 0x18000, [.read])],
            selection: Selection([]), stackAnchors: [])
        #expect(n.regions.map(\.range) == [AddressRange(0x10000, 0x18000)])
        #expect(n.dirtyPages().ranges == [AddressRange(0x13000, 0x14000)])
        #expect(n.rearmPlan().isEmpty)  // the pinned page is never re-armed
    }

    /// One page per new private maps line, before its first arming; none
    /// again for a settled one, nor for a line whose pages are all armed.
    @Test func onePageToPopulatePerNewMapping() {
        var m = TrackedMemory()
        let file = Mapping(
            range: AddressRange(0x30000, 0x32000), protection: rw, isPrivate: true, inode: 7, path: "/lib/x.so")
        let maps = [
            anon(0x10000, 0x18000, rw), anon(0x18000, 0x1a000, [.read]), file,
            Mapping(range: AddressRange(0x40000, 0x42000), protection: rw, isPrivate: true, path: "[stack]"),
        ]
        m.reconcile(maps: maps, selection: Selection([]), stackAnchors: [])
        // The first page of a userfaultfd range is left alone.
        #expect(
            m.pagesToPopulate(maps: maps, excluded: PageSet([AddressRange(0x30000, 0x31000)]))
                == [RemoteAddress(0x10000)])
        #expect(m.pagesToPopulate(maps: maps, excluded: PageSet()).isEmpty)
        for c in m.rearmPlan() { m.markArmed(c.range) }
        // A new mapping made at an mmap's exit: its first page, once.
        m.insert(AddressRange(0x50000, 0x52000), protection: rw, armed: false, dirty: true)
        #expect(m.pageToPopulate(in: AddressRange(0x50000, 0x52000), excluded: PageSet()) == RemoteAddress(0x50000))
        #expect(m.pageToPopulate(in: AddressRange(0x50000, 0x52000), excluded: PageSet()) == nil)
        // Unmapped, then mapped again: new again, but armed already: nothing to populate.
        m.forget(AddressRange(0x50000, 0x52000))
        m.insert(AddressRange(0x50000, 0x52000), protection: rw, armed: true, dirty: true)
        #expect(m.pagesToPopulate(maps: [anon(0x50000, 0x52000, [.read])], excluded: PageSet()).isEmpty)
        #expect(m.anonVmaSettled.contains(RemoteAddress(0x51000)))
    }
}
