import Testing
@testable import PageWatchAddressSpace

@Suite struct PageSetTests {
    let p = Page.size

    @Test func coalescesAdjacentAndOverlapping() {
        var s = PageSet()
        s.insert(AddressRange(0x10000, 0x12000))
        s.insert(AddressRange(0x14000, 0x15000))
        s.insert(AddressRange(0x12000, 0x13000))  // touches the first
        #expect(s.ranges == [AddressRange(0x10000, 0x13000), AddressRange(0x14000, 0x15000)])
        s.insert(AddressRange(0x11000, 0x14800))  // bridges both, unaligned end widens
        #expect(s.ranges == [AddressRange(0x10000, 0x15000)])
        #expect(s.pageCount == 5)
    }

    @Test func insertsBeforeAndAtZero() {
        var s = PageSet([AddressRange(0x5000, 0x6000)])
        s.insert(AddressRange(0, 0x1000))
        s.insert(page: RemoteAddress(0x4fff))
        #expect(s.ranges == [AddressRange(0, 0x1000), AddressRange(0x4000, 0x6000)])
        #expect(s.contains(RemoteAddress(0x4000)))
        #expect(!s.contains(RemoteAddress(0x6000)))
        #expect(!s.contains(RemoteAddress(0x1000)))
    }

    @Test func removesSplittingRanges() {
        var s = PageSet([AddressRange(0x10000, 0x20000)])
        s.remove(AddressRange(0x12000, 0x14000))
        #expect(s.ranges == [AddressRange(0x10000, 0x12000), AddressRange(0x14000, 0x20000)])
        s.remove(AddressRange(0x0, 0x11000))
        s.remove(AddressRange(0x1f000, 0x30000))
        #expect(s.ranges == [AddressRange(0x11000, 0x12000), AddressRange(0x14000, 0x1f000)])
    }

    @Test func intersects() {
        let s = PageSet([AddressRange(0x10000, 0x13000), AddressRange(0x20000, 0x22000)])
        #expect(
            s.intersection(AddressRange(0x12000, 0x21000)).ranges
                == [AddressRange(0x12000, 0x13000), AddressRange(0x20000, 0x21000)])
        let t = PageSet([AddressRange(0x11000, 0x21000)])
        #expect(s.intersection(t).pageCount == 3)
    }

    @Test func subtractsAnotherSetInOnePass() {
        let s = PageSet([AddressRange(0x10000, 0x18000), AddressRange(0x20000, 0x22000)])
        let t = PageSet([
            AddressRange(0x8000, 0x11000), AddressRange(0x13000, 0x14000), AddressRange(0x17000, 0x21000),
        ])
        #expect(
            s.subtracting(t).ranges
                == [AddressRange(0x11000, 0x13000), AddressRange(0x14000, 0x17000), AddressRange(0x21000, 0x22000)])
        #expect(s.subtracting(PageSet()) == s)
        #expect(PageSet().subtracting(s).isEmpty)
        // Against the page-by-page definition.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var a = PageSet(), b = PageSet()
            for _ in 0..<8 {
                let x = UInt64.random(in: 0..<64, using: &rng), n = UInt64.random(in: 1...6, using: &rng)
                if Bool.random(using: &rng) {
                    a.insert(AddressRange(x * p, (x + n) * p))
                } else {
                    b.insert(AddressRange(x * p, (x + n) * p))
                }
            }
            var model = a
            for r in b.ranges { model.remove(r) }
            #expect(a.subtracting(b) == model)
        }
    }

    @Test func unitesLargeSetsByMerging() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var a = PageSet(), b = PageSet()
            for _ in 0..<12 {
                let x = UInt64.random(in: 0..<96, using: &rng), n = UInt64.random(in: 1...5, using: &rng)
                if Bool.random(using: &rng) {
                    a.insert(AddressRange(x * p, (x + n) * p))
                } else {
                    b.insert(AddressRange(x * p, (x + n) * p))
                }
            }
            var model = a
            for r in b.ranges { model.insert(r) }
            var merged = a
            merged.formUnion(b)
            #expect(merged == model)
        }
    }

    @Test func matchesAReferenceModel() {
        // Random inserts and removes against a Set of page indexes.
        var rng = SystemRandomNumberGenerator()
        var s = PageSet()
        var model = Set<UInt64>()
        for _ in 0..<2000 {
            let a = UInt64.random(in: 0..<200, using: &rng), n = UInt64.random(in: 1...8, using: &rng)
            let r = AddressRange(a * p, (a + n) * p)
            if Bool.random(using: &rng) {
                s.insert(r); model.formUnion(a..<(a + n))
            } else {
                s.remove(r); model.subtract(a..<(a + n))
            }
        }
        #expect(s.pageCount == UInt64(model.count))
        for i in 0..<210 as Range<UInt64> { #expect(s.contains(RemoteAddress(i * p)) == model.contains(i)) }
        for (x, y) in zip(s.ranges, s.ranges.dropFirst()) { #expect(x.end < y.start) }
    }

    @Test func bitmapRunsAndCounts() {
        var b = PageBitmap(pageCount: 200)
        b.set(3..<7, to: true)
        b[64] = true; b[65] = true
        b.set(128..<200, to: true)
        #expect(b.runs() == [3..<7, 64..<66, 128..<200])
        #expect(b.setCount == 4 + 2 + 72)
        b[5] = false
        #expect(b.runs().first == 3..<5)
        b.setAll()
        #expect(b.runs() == [0..<200] && b.setCount == 200)
        b.clearAll()
        #expect(b.runs().isEmpty && b.setCount == 0)
    }

    /// The word-wide operations against a `[Bool]` model, at every offset
    /// around word boundaries.
    @Test func bitmapWordOperationsMatchABoolModel() {
        // A pattern with runs of several lengths, crossing words.
        let source = (0..<300).map { i in (i / 3) % 4 != 1 && i % 7 != 0 }
        var b = PageBitmap(pageCount: 0)
        b.append(count: source.count) { k in
            (0..<64).reduce(UInt64(0)) { w, j in k + j < source.count && source[k + j] ? w | 1 << UInt64(j) : w }
        }
        #expect((0..<300).allSatisfy { b[$0] == source[$0] } && b.setCount == source.filter { $0 }.count)
        for lo in [0, 1, 63, 64, 65, 127, 130] {
            for n in [0, 1, 2, 63, 64, 65, 100, 170] where lo + n <= 300 {
                let range = lo..<(lo + n)
                // Appending a slice after a prefix of every length mod 64.
                for prefix in [0, 5, 64, 70] {
                    var c = PageBitmap(pageCount: 0)
                    c.append(repeating: true, count: prefix)
                    c.append(b, pages: range)
                    let want = Array(repeating: true, count: prefix) + source[range]
                    #expect(c.pageCount == want.count && (0..<want.count).allSatisfy { c[$0] == want[$0] })
                    #expect(c.setCount == want.filter { $0 }.count)
                    #expect(
                        c
                            == {
                                var d = PageBitmap(pageCount: want.count); for (i, v) in want.enumerated() { d[i] = v };
                                return d
                            }())
                }
                #expect(b.firstSet(in: range) == range.first { source[$0] })
                #expect(b.firstClear(in: range) == range.first { !source[$0] })
                #expect(b.lastSet(in: range) == range.last { source[$0] })
                #expect(b.lastClear(in: range) == range.last { !source[$0] })
                var runs: [Range<Int>] = []
                for i in range where source[i] {
                    if let last = runs.last, last.upperBound == i {
                        runs[runs.count - 1] = last.lowerBound..<(i + 1)
                    } else {
                        runs.append(i..<(i + 1))
                    }
                }
                #expect(b.runs(in: range) == runs)
                for value in [false, true] {
                    var c = b
                    c.set(range, to: value)
                    var want = source
                    for i in range { want[i] = value }
                    #expect((0..<300).allSatisfy { c[$0] == want[$0] } && c.setCount == want.filter { $0 }.count)
                }
            }
        }
    }

    @Test func pageArithmetic() {
        #expect(Page.floor(RemoteAddress(0x1fff)) == RemoteAddress(0x1000))
        #expect(Page.ceil(RemoteAddress(0x1001)) == RemoteAddress(0x2000))
        #expect(Page.ceil(RemoteAddress(0x2000)) == RemoteAddress(0x2000))
        #expect(Page.ceil(RemoteAddress(UInt64.max)) == RemoteAddress(~(Page.size - 1)))
        #expect(AddressRange(0x1800, 0x2001).pageAligned == AddressRange(0x1000, 0x3000))
        #expect(RemoteAddress(0xabc).hex == "0xabc")
    }
}
