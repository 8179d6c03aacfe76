import PageWatchAddressSpace
import PageWatchAttribution

/// Who wrote a page (issue 5): a store by the program, stopped at its fault,
/// or the kernel on the program's behalf (hazards 1, 2, 4), at the call site.
struct Writer: Hashable {
    /// `read`, `signal frame SIGUSR1`, ...: the kernel wrote for this; nil
    /// for the program's own store.
    var kernel: String?
    /// Instruction pointers, innermost first: the faulting instruction, or
    /// where the thread entered the kernel; then return addresses.
    var stack: [UInt64]
}

struct FrameKey: Hashable {
    var ip: UInt64
    var isReturnAddress: Bool
}

/// One writer's share of a sweep: the `sites` of the log.
public struct WriteSite: Sendable, Equatable {
    public var pages: UInt64
    public var faults: Int
    /// Which pages: sorted, coalesced, like a sweep's.
    public var ranges: [AddressRange]
    /// Innermost first. A pseudo-frame (`[kernel] read`, `[unseen]`,
    /// `[pinned]`) has only a function name and `ip` 0.
    public var frames: [Frame]

    public init(pages: UInt64, faults: Int, ranges: [AddressRange], frames: [Frame]) {
        self.pages = pages
        self.faults = faults
        self.ranges = ranges
        self.frames = frames
    }
}

/// The writer of every page dirtied since the last sweep, recorded on the
/// fault path as raw instruction pointers; symbolized only when a sweep
/// reports them (`sites`), once per distinct address.
struct WriterLedger {
    private var writers: [Writer] = []
    private var index: [Writer: Int] = [:]
    private var faults: [Int] = []
    /// Page number → writer. A page has one writer per interval: its first
    /// write un-arms it, and later stores do not fault.
    private var pageWriter: [UInt64: Int] = [:]

    /// `page` written by `writer`; `fault`: it took a write fault. True when
    /// this is the page's first write of the interval (it has no writer yet).
    @discardableResult
    mutating func record(_ page: RemoteAddress, by writer: Writer, fault: Bool) -> Bool {
        let i: Int
        if let known = index[writer] {
            i = known
        } else {
            i = writers.count
            writers.append(writer)
            index[writer] = i
            faults.append(0)
        }
        let number = Page.floor(page).value / Page.size
        if fault { faults[i] += 1 }
        guard pageWriter[number] == nil else { return false }
        pageWriter[number] = i
        return true
    }

    /// A fault at a page another thread had just made writable (hazard 11):
    /// counted to that page's writer.
    mutating func countFault(at page: RemoteAddress) {
        if let i = pageWriter[Page.floor(page).value / Page.size] { faults[i] += 1 }
    }

    /// The sweep's `dirty` pages grouped by writer, most pages first, and a
    /// fresh ledger for the next interval. Pages with no recorded write are
    /// `[pinned]` (written by the kernel at any time, never armed) or
    /// `[unseen]` (new to PageWatch: the first sweep, a new mapping, contents
    /// changed without a store, or counted conservatively).
    /// `keepingWriters`: the pages stay dirty and are reported again (a
    /// sweep that could not re-arm), so their writers are kept; only the
    /// fault counts start again.
    mutating func sites(of dirty: PageSet, pinned: PageSet, keepingWriters: Bool = false,
                        symbolizing: ([UInt64]) -> [Frame]) -> [WriteSite] {
        var pages = [PageSet](repeating: PageSet(), count: writers.count)
        var unseen = PageSet(), pinnedPages = PageSet()
        for range in dirty.ranges {
            var page = range.start
            while page < range.end {
                if let i = pageWriter[page.value / Page.size] {
                    pages[i].insert(page: page)
                } else if pinned.contains(page) {
                    pinnedPages.insert(page: page)
                } else {
                    unseen.insert(page: page)
                }
                page = page + Page.size
            }
        }
        func site(_ set: PageSet, _ faults: Int, _ frames: [Frame]) -> WriteSite {
            WriteSite(pages: set.ranges.reduce(0) { $0 + $1.pageCount }, faults: faults, ranges: set.ranges, frames: frames)
        }
        var sites: [WriteSite] = []
        for (i, w) in writers.enumerated() where !pages[i].isEmpty || faults[i] > 0 {
            let top = w.kernel.map { [Frame(ip: 0, function: "[kernel] " + $0)] } ?? []
            sites.append(site(pages[i], faults[i], top + symbolizing(w.stack)))
        }
        if !unseen.isEmpty { sites.append(site(unseen, 0, [Frame(ip: 0, function: "[unseen]")])) }
        if !pinnedPages.isEmpty { sites.append(site(pinnedPages, 0, [Frame(ip: 0, function: "[pinned]")])) }
        if keepingWriters { faults = faults.map { _ in 0 } } else { self = WriterLedger() }
        return sites.sorted { ($0.pages, $0.faults) > ($1.pages, $1.faults) }
    }
}
