import Testing
import PageWatchAddressSpace
import PageWatchPtrace
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

    /// A sparse range is protected in the 2 MiB pieces that hold data, the
    /// rest left as holes.
    @Test func pageTablePiecesRoundDataOutTo2MiBWithinTheRange() {
        let mib: UInt64 = 1 << 20
        let range = AddressRange(0x4000_0000 + mib, 0x4000_0000 + 64 * mib)
        let data = PageSet([
            AddressRange(0x4000_0000 + mib, 0x4000_0000 + mib + 0x1000),  // in the first, partial piece
            AddressRange(0x4000_0000 + 9 * mib, 0x4000_0000 + 9 * mib + 0x3000),
            AddressRange(0x4000_0000 + 10 * mib - 0x1000, 0x4000_0000 + 10 * mib + 0x1000),
        ])
        let pieces = WriteProtectedMemory.pageTablePieces(of: range, holding: data)
        #expect(
            pieces.ranges == [
                AddressRange(0x4000_0000 + mib, 0x4000_0000 + 2 * mib),
                AddressRange(0x4000_0000 + 8 * mib, 0x4000_0000 + 12 * mib),
            ])
    }

    /// `THPeligible` of the mapping holding an address, from smaps.
    @Test func hugePageEligibilityComesFromSmaps() {
        let smaps = """
            7f0000000000-7f0004000000 rw-p 00000000 00:00 0
            Size:              65536 kB
            THPeligible:    0
            VmFlags: rd wr mr mw me ac
            7f0004000000-7f0008000000 rw-p 00000000 00:00 0
            Size:              65536 kB
            THPeligible:    1
            VmFlags: rd wr mr mw me ac hg
            """
        #expect(WriteProtectedMemory.hugePagesEligible(inSmaps: smaps, at: RemoteAddress(0x7f00_0000_1000)) == false)
        #expect(WriteProtectedMemory.hugePagesEligible(inSmaps: smaps, at: RemoteAddress(0x7f00_0400_0000)) == true)
        #expect(WriteProtectedMemory.hugePagesEligible(inSmaps: smaps, at: RemoteAddress(0x7f00_0800_0000)) == nil)
    }

    /// A scan of a sparse range: a hole found mapping the zero page was
    /// only read (not reported); every page found is a hole no more.
    @Test func holesFoundMappingTheZeroPageWereOnlyRead() {
        var w = WriteProtectedMemory()
        let range = AddressRange(0x100000, 0x200000)
        w.cover(range, unprotected: PageSet([AddressRange(0x140000, 0x200000)]))
        var found = WrittenPages()
        found.written = PageSet([AddressRange(0x100000, 0x101000), AddressRange(0x140000, 0x143000)])
        found.zeroPages = PageSet([AddressRange(0x100000, 0x101000), AddressRange(0x142000, 0x143000)])
        let kept = w.takeFound(found, reprotect: true)
        // A zero page outside the holes (populated after a discard) is reported, as before.
        #expect(kept.written == PageSet([AddressRange(0x100000, 0x101000), AddressRange(0x140000, 0x142000)]))
        #expect(kept.zeroPages == PageSet([AddressRange(0x100000, 0x101000)]))
        #expect(w.holes == PageSet([AddressRange(0x143000, 0x200000)]))
        // Discarded to zeros: holes again; unmapped: forgotten.
        w.markDiscarded(AddressRange(0x100000, 0x102000), zeroed: true)
        #expect(w.holes.contains(RemoteAddress(0x101000)))
        w.forget(range)
        #expect(w.holes.isEmpty && w.sparse.isEmpty)
    }
}
