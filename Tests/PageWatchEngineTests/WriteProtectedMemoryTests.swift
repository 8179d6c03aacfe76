import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

/// The userfaultfd backend's model on synthetic maps: what it covers, what
/// it leaves to the ptrace path, what a sweep reports of it.
@Suite struct WriteProtectedMemoryTests {
    let rw: Protection = [.read, .write]

    func anon(_ a: UInt64, _ b: UInt64, _ prot: Protection, path: String = "") -> Mapping {
        Mapping(range: AddressRange(a, b), protection: prot, isPrivate: true, path: path)
    }

    @Test func coversPrivateAnonymousWritableMemoryOnly() {
        let maps = [
            anon(0x10000, 0x18000, rw, path: "[heap]"),
            anon(0x18000, 0x1a000, [.read]),
            Mapping(
                range: AddressRange(0x20000, 0x22000), protection: rw, isPrivate: true, inode: 7, path: "/lib/x.so"),
            Mapping(range: AddressRange(0x30000, 0x32000), protection: rw, isPrivate: false, path: "/dev/zero"),
            anon(0x40000, 0x48000, rw, path: "[stack]"),
            anon(0x50000, 0x51000, rw, path: "[vvar]"),
        ]
        let w = WriteProtectedMemory()
        let all = w.candidates(
            maps: maps, window: nil, selection: Selection([]), stackAnchors: [], excluded: PageSet(), armed: PageSet())
        #expect(all == [AddressRange(0x10000, 0x18000), AddressRange(0x40000, 0x48000)])
        // The selection, exclusions (the program's userfaultfd ranges, scratch)
        // and pages the ptrace path armed are left where they are.
        let heap = w.candidates(
            maps: maps, window: nil, selection: Selection([.heap]), stackAnchors: [],
            excluded: PageSet([AddressRange(0x10000, 0x11000)]), armed: PageSet([AddressRange(0x17000, 0x18000)]))
        #expect(heap == [AddressRange(0x11000, 0x17000)])
        // A window: the pieces in it.
        let windowed = w.candidates(
            maps: maps, window: AddressRange(0x44000, 0x60000), selection: Selection([]), stackAnchors: [],
            excluded: PageSet(), armed: PageSet())
        #expect(windowed == [AddressRange(0x44000, 0x48000)])
    }

    @Test func aHugeSparseReservationStaysOnPtrace() {
        let big = anon(0x1000_0000_0000, 0x1000_0000_0000 + WriteProtectedMemory.largestRange + 0x1000, rw)
        let w = WriteProtectedMemory()
        #expect(
            w.candidates(
                maps: [big], window: nil, selection: Selection([]), stackAnchors: [], excluded: PageSet(),
                armed: PageSet()
            ).isEmpty)
    }

    @Test func coveredAndDeclinedRangesAreNotCandidatesUntilUnmapped() {
        let maps = [anon(0x10000, 0x20000, rw)]
        var w = WriteProtectedMemory()
        w.cover(AddressRange(0x10000, 0x14000))
        w.decline(AddressRange(0x18000, 0x1c000))
        func candidates() -> [AddressRange] {
            w.candidates(
                maps: maps, window: nil, selection: Selection([]), stackAnchors: [], excluded: PageSet(),
                armed: PageSet())
        }
        #expect(candidates() == [AddressRange(0x14000, 0x18000), AddressRange(0x1c000, 0x20000)])
        w.forget(AddressRange(0x10000, 0x20000))  // unmapped, or mapped again
        #expect(w.covered.isEmpty)
        #expect(candidates() == [AddressRange(0x10000, 0x20000)])
    }

    /// New pages are reported (unseen): those that held nothing when
    /// covered as zeros unless written since; a written page that maps the
    /// zero page as zeros; a discard by MADV_DONTNEED as zeros, MADV_FREE's as data.
    @Test func whatASweepReports() {
        var w = WriteProtectedMemory()
        w.cover(AddressRange(0x10000, 0x18000))
        w.noteZero(PageSet([AddressRange(0x12000, 0x18000)]))
        w.written.written.insert(AddressRange(0x13000, 0x14000))
        w.written.written.insert(AddressRange(0x20000, 0x21000))
        w.written.zeroPages.insert(AddressRange(0x20000, 0x21000))
        #expect(w.dirty.ranges == [AddressRange(0x10000, 0x18000), AddressRange(0x20000, 0x21000)])
        #expect(
            w.zeroNow.ranges == [
                AddressRange(0x12000, 0x13000), AddressRange(0x14000, 0x18000), AddressRange(0x20000, 0x21000),
            ])
        w.reported()
        #expect(w.dirty.isEmpty && w.zeroNow.isEmpty)
        w.markDiscarded(AddressRange(0x10000, 0x12000), zeroed: true)
        w.markDiscarded(AddressRange(0x16000, 0x30000), zeroed: false)  // beyond the covered range: not ours
        #expect(w.dirty.ranges == [AddressRange(0x10000, 0x12000), AddressRange(0x16000, 0x18000)])
        #expect(w.zeroNow.ranges == [AddressRange(0x10000, 0x12000)])
        // Buffers of calls in flight: counted written again by the next sweep.
        w.reported()
        w.countWrittenAgain(PageSet([AddressRange(0x11000, 0x12000), AddressRange(0x40000, 0x41000)]))
        #expect(w.dirty.ranges == [AddressRange(0x11000, 0x12000)])
    }

    @Test func theSelectionLeavesCoveredPagesToIt() {
        var selection = Selection([])
        selection.excluded = PageSet([AddressRange(0x12000, 0x14000)])
        let parts = selection.selectedPart(of: anon(0x10000, 0x18000, rw), protection: rw, isThreadStack: false)
        #expect(parts == [AddressRange(0x10000, 0x12000), AddressRange(0x14000, 0x18000)])
    }
}
