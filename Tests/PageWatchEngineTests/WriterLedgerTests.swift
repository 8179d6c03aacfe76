import Testing
import PageWatchAddressSpace
import PageWatchLog
@testable import PageWatchEngine

/// The ledger's chunked page → writer map against a dictionary a page.
@Suite struct WriterLedgerTests {
    let p = Page.size

    func symbolize(_ stack: [UInt64]) -> [Frame] { stack.map { Frame(ip: $0) } }

    /// The sites as the first ledger computed them: page by page.
    func referenceSites(
        _ writes: [(page: UInt64, writer: Int)], writers: [Writer], dirty: PageSet,
        pinned: PageSet, presumed: PageSet
    ) -> [WriteSite] {
        var first: [UInt64: Int] = [:]
        var faults = [Int](repeating: 0, count: writers.count)
        for w in writes {
            faults[w.writer] += 1
            if first[w.page] == nil { first[w.page] = w.writer }
        }
        var pages = [PageSet](repeating: PageSet(), count: writers.count)
        var unseen = PageSet(), pinnedPages = PageSet(), presumedPages = PageSet()
        for range in dirty.ranges {
            var page = range.start
            while page < range.end {
                if let i = first[page.value / p] {
                    pages[i].insert(page: page)
                } else if pinned.contains(page) {
                    pinnedPages.insert(page: page)
                } else if presumed.contains(page) {
                    presumedPages.insert(page: page)
                } else {
                    unseen.insert(page: page)
                }
                page = page + p
            }
        }
        func site(_ s: PageSet, _ f: Int, _ frames: [Frame]) -> WriteSite {
            WriteSite(pages: s.pageCount, faults: f, ranges: s.ranges, frames: frames)
        }
        var sites: [WriteSite] = []
        for (i, w) in writers.enumerated() where !pages[i].isEmpty || faults[i] > 0 {
            sites.append(site(pages[i], faults[i], symbolize(w.stack)))
        }
        if !unseen.isEmpty { sites.append(site(unseen, 0, [Frame(ip: 0, function: "[unseen]")])) }
        if !pinnedPages.isEmpty { sites.append(site(pinnedPages, 0, [Frame(ip: 0, function: "[pinned]")])) }
        if !presumedPages.isEmpty {
            sites.append(site(presumedPages, 0, [Frame(ip: 0, function: "[presumed]")]))
        }
        return sites.sorted { ($0.pages, $0.faults) > ($1.pages, $1.faults) }
    }

    @Test(arguments: 0..<100 as Range<UInt64>)
    func sitesMatchThePageByPageLedger(seed: UInt64) {
        var rng = TrackedMemoryTests.Seeded(state: seed)
        let writers = (1...4 as ClosedRange<UInt64>).map { Writer(kernel: nil, stack: [$0 * 0x1000]) }
        var ledger = WriterLedger()
        var writes: [(page: UInt64, writer: Int)] = []
        // Runs by one writer (a loop's stores), single pages by others, around 64-page chunks.
        for _ in 0..<Int.random(in: 1...30, using: &rng) {
            let start = UInt64.random(in: 0x100..<0x300, using: &rng),
                n = UInt64.random(in: 1...(Bool.random(using: &rng) ? 2 : 90), using: &rng)
            let w = Int.random(in: 0..<writers.count, using: &rng)
            for page in start..<(start + n) {
                let first = ledger.record(RemoteAddress(page * p + 8), by: writers[w], fault: true)
                #expect(first == !writes.contains { $0.page == page })
                writes.append((page, w))
            }
        }
        let dirty = PageSet([AddressRange(0xf0 * p, 0x1f0 * p), AddressRange(0x200 * p, 0x380 * p)])
        let pinned = PageSet([AddressRange(0x120 * p, 0x124 * p), AddressRange(0x37f * p, 0x390 * p)])
        // Presumed pages with no write seen are named apart (0xf8-0xff: never
        // written here); written ones keep their writer.
        let presumed = PageSet([
            AddressRange(0xf8 * p, 0x108 * p), AddressRange(0x1e0 * p, 0x210 * p), AddressRange(0x2f0 * p, 0x2f8 * p),
        ])
        let sites = ledger.sites(of: dirty, pinned: pinned, presumed: presumed, symbolizing: symbolize)
        let want = referenceSites(writes, writers: writers, dirty: dirty, pinned: pinned, presumed: presumed)
        #expect(sites.contains { $0.frames.first?.function == "[presumed]" })
        // Equal page counts may sort either way: compare as sets of sites.
        #expect(sites.count == want.count && want.allSatisfy { w in sites.contains(w) }, "seed \(seed)")
    }

    /// The frames the unwinder reached by frame pointer are marked so in the
    /// sites, whatever the symbolizer gave; a kernel pseudo-frame does not shift them.
    @Test func framesFoundByFramePointerAreMarked() {
        var ledger = WriterLedger()
        let store = Writer(kernel: nil, stack: [0x1000, 0x2000, 0x3000], framePointerFrames: [2])
        let read = Writer(kernel: "read", stack: [0x4000, 0x5000], framePointerFrames: [1])
        ledger.record(RemoteAddress(0x100 * p), by: store, fault: true)
        ledger.record(RemoteAddress(0x101 * p), by: read, fault: false)
        let sites = ledger.sites(of: PageSet([AddressRange(0x100 * p, 0x102 * p)]), pinned: PageSet()) {
            $0.map { Frame(ip: $0, function: "f\($0)") }
        }
        let marked = Dictionary(
            uniqueKeysWithValues: sites.map { ($0.frames.last!.ip, $0.frames.map(\.foundByFramePointer)) })
        #expect(marked[0x3000] == [false, false, true])
        #expect(marked[0x5000] == [false, false, true])
    }
}
