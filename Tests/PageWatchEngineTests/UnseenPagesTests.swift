import PageWatchAddressSpace
import PageWatchPtrace
import Testing

@testable import PageWatchEngine

/// What unseen pages hold, from synthetic pagemap runs.
@Suite struct UnseenPagesTests {
    let p = Page.size
    func range(_ a: UInt64, _ b: UInt64) -> AddressRange { AddressRange(a * p, b * p) }
    func pages(_ a: UInt64, _ b: UInt64) -> PageSet { PageSet([range(a, b)]) }

    /// Pages 0-15 private anonymous, 16-23 a private file mapping, 24-31 shared.
    var maps: [Mapping] {
        [
            Mapping(range: range(0, 16), protection: [.read, .write], isPrivate: true),
            Mapping(range: range(16, 24), protection: [.read, .write], isPrivate: true, inode: 7, path: "/lib/x.so"),
            Mapping(range: range(24, 32), protection: [.read, .write], isPrivate: false, inode: 0, path: "/dev/zero"),
        ]
    }

    /// Anonymous 0-3 present, 4 swapped, 5 the zero page, 6-15 absent; file
    /// 16-17 copied (present, not a file page), 18 swapped, 19-20 file pages,
    /// 21-23 absent; shared 24-31 present.
    var pageTable: [PageMapRun] {
        [
            PageMapRun(range: range(0, 4), isPresent: true, isSwapped: false, isFilePage: false, isZeroPage: false),
            PageMapRun(range: range(4, 5), isPresent: false, isSwapped: true, isFilePage: false, isZeroPage: false),
            PageMapRun(range: range(5, 6), isPresent: true, isSwapped: false, isFilePage: false, isZeroPage: true),
            PageMapRun(range: range(16, 18), isPresent: true, isSwapped: false, isFilePage: false, isZeroPage: false),
            PageMapRun(range: range(18, 19), isPresent: false, isSwapped: true, isFilePage: false, isZeroPage: false),
            PageMapRun(range: range(19, 21), isPresent: true, isSwapped: false, isFilePage: true, isZeroPage: false),
            PageMapRun(range: range(24, 32), isPresent: true, isSwapped: false, isFilePage: true, isZeroPage: false),
        ]
    }

    func sort(
        dirty: PageSet, candidates: PageSet, failing: AddressRange? = nil, populated: PageSet = PageSet(),
        zeroFilled: Set<UInt64> = []
    ) -> UnseenPages {
        UnseenPages.sort(
            dirty: dirty, candidates: candidates, maps: maps, populated: populated,
            runs: { r in
                if let failing, r.overlaps(failing) { throw TraceError.call("PAGEMAP_SCAN", Errno(5), tid: 1) }
                return pageTable.filter { $0.range.overlaps(r) }
            },
            zeroFilled: { zeroFilled.contains($0.value / Page.size) })
    }

    @Test func sortsByWhatPagemapSays() {
        let all = pages(0, 32)
        let held = sort(dirty: all, candidates: all)
        #expect(held.zero == pages(5, 16))
        #expect(held.file == PageSet([range(19, 24)]))
        // Present and swapped pages hold data; a shared mapping's pages are never looked at.
        #expect(held.data == PageSet([range(0, 5), range(16, 19), range(24, 32)]))
    }

    @Test func onlyCandidatesLeaveTheData() {
        // Pages 8-11 were seen written: reported as they are, whatever pagemap says.
        let held = sort(dirty: pages(0, 24), candidates: PageSet([range(0, 8), range(12, 24)]))
        #expect(held.zero == PageSet([range(5, 8), range(12, 16)]))
        #expect(held.data == PageSet([range(0, 5), range(8, 12), range(16, 19)]))
    }

    @Test func anUnreadableMappingStaysData() {
        let all = pages(0, 24)
        let held = sort(dirty: all, candidates: all, failing: range(9, 10))
        #expect(held.zero.isEmpty)
        #expect(held.file == PageSet([range(19, 24)]))
        #expect(held.data == PageSet([range(0, 19)]))
    }

    @Test func aPopulatedPageThatReadsAsZerosIsZero() {
        let all = pages(0, 16)
        // Pages 1 and 2 were populated by PageWatch; only 2 still holds zeros.
        let held = sort(dirty: all, candidates: all, populated: pages(1, 3), zeroFilled: [2])
        #expect(held.zero == PageSet([range(2, 3), range(5, 16)]))
        #expect(held.data == PageSet([range(0, 2), range(3, 5)]))
    }
}
