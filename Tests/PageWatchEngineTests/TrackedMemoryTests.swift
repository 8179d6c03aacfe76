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
        #expect(m.dirtyPages().ranges == [AddressRange(0x10000, 0x11000), AddressRange(0x12000, 0x14000),
                                          AddressRange(0x17000, 0x18000)])
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
        m.reconcile(maps: [anon(0x10000, 0x12000, rw), anon(0x12000, 0x13000, rwx)],
                    selection: Selection([]), stackAnchors: [])
        #expect(m.regions.map(\.range) == [AddressRange(0x10000, 0x12000), AddressRange(0x12000, 0x13000)])
        // Arming keeps PROT_EXEC (hazard 13).
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
}
