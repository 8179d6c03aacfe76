import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

@Suite struct SelectionTests {
    @Test func parsesEverySpec() throws {
        #expect(try TrackSpec.parse("writable") == .writable)
        #expect(try TrackSpec.parse("anon") == .anon)
        #expect(try TrackSpec.parse("heap") == .heap)
        #expect(try TrackSpec.parse("stack") == .stack)
        #expect(try TrackSpec.parse("file:/usr/lib/x y.so") == .file("/usr/lib/x y.so"))
        #expect(try TrackSpec.parse("0x1000-0x3000") == .range(AddressRange(0x1000, 0x3000)))
        // Unaligned bounds widen to whole pages.
        #expect(try TrackSpec.parse("0x1800-0x2001") == .range(AddressRange(0x1000, 0x3000)))
        #expect(try TrackSpec.parse("0x10000-0x20000").description == "0x10000-0x20000")
    }

    @Test(arguments: [
        "", "all", "file:", "0x-0x10", "0x10-0x10", "0x20-0x10", "0x10", "0x10-0x20-0x30", "0xg-0x10", "1000-2000",
    ])
    func rejectsBadSpecs(_ text: String) {
        #expect(throws: TrackSpec.ParseError.self) { try TrackSpec.parse(text) }
    }

    @Test func parsesIntervals() {
        #expect(IntervalParser.parse("0") == 0)
        #expect(IntervalParser.parse("250ms") == 250_000_000)
        #expect(IntervalParser.parse("2s") == 2_000_000_000)
        #expect(IntervalParser.parse("1.5s") == 1_500_000_000)
        #expect(IntervalParser.parse("100us") == 100_000)
        #expect(IntervalParser.parse("1m") == 60_000_000_000)
        #expect(IntervalParser.parse("10ns") == 10)
        for bad in ["", "s", "fast", "-1s", "1 s", "1x", "ms", "1e3s", "999999999999h"] {
            #expect(IntervalParser.parse(bad) == nil, "\(bad)")
        }
    }

    func mapping(
        _ a: UInt64, _ b: UInt64, _ prot: Protection = [.read, .write], shared: Bool = false,
        path: String = "", inode: UInt64 = 0
    ) -> Mapping {
        Mapping(range: AddressRange(a, b), protection: prot, isPrivate: !shared, inode: inode, path: path)
    }

    @Test func selectsByKind() {
        let heap = mapping(0x1000, 0x3000, path: "[heap]")
        let stack = mapping(0x7000, 0x9000, path: "[stack]")
        let anon = mapping(0x10000, 0x12000)
        let data = mapping(0x20000, 0x21000, path: "/usr/bin/x", inode: 5)
        let shared = mapping(0x30000, 0x31000, shared: true)
        let vdso = mapping(0x40000, 0x41000, [.read, .execute], path: "[vdso]")
        let rw: Protection = [.read, .write]
        func picks(_ s: Selection, _ m: Mapping, thread: Bool = false) -> Bool {
            !s.selectedPart(of: m, protection: m.protection, isThreadStack: thread).isEmpty
        }
        let writable = Selection([])
        #expect(writable.specs == [.writable])
        #expect([heap, stack, anon, data].allSatisfy { picks(writable, $0) })
        #expect(!picks(writable, shared) && !picks(writable, vdso))
        #expect(writable.selectedPart(of: vdso, protection: rw, isThreadStack: false).isEmpty)
        #expect(!picks(writable, mapping(0x50000, 0x51000, [.read])))

        #expect(picks(Selection([.heap]), heap) && !picks(Selection([.heap]), anon))
        #expect(picks(Selection([.stack]), stack) && picks(Selection([.stack]), anon, thread: true))
        #expect(!picks(Selection([.stack]), anon))
        #expect(picks(Selection([.anon]), anon) && picks(Selection([.anon]), heap) && !picks(Selection([.anon]), data))
        #expect(picks(Selection([.file("/usr/bin/x")]), data) && !picks(Selection([.file("/usr/bin/y")]), data))
        let range = Selection([.range(AddressRange(0x11000, 0x20800))])
        #expect(range.selectedPart(of: anon, protection: rw, isThreadStack: false) == [AddressRange(0x11000, 0x12000)])
        // Pieces are whole pages, sorted and disjoint.
        #expect(range.selectedPart(of: data, protection: rw, isThreadStack: false) == [AddressRange(0x20000, 0x21000)])
        let overlapping = Selection([.range(AddressRange(0x11000, 0x12000)), .range(AddressRange(0x10000, 0x11800))])
        #expect(
            overlapping.selectedPart(of: anon, protection: rw, isThreadStack: false) == [AddressRange(0x10000, 0x12000)]
        )
    }
}
