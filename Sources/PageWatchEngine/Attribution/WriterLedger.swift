import PageWatchAddressSpace
import PageWatchLog

/// Who wrote a page: a store by the program, stopped at its fault,
/// or the kernel on the program's behalf (a syscall's output, a signal frame,
/// a thread's exit words), at the call site.
struct Writer: Hashable {
    /// `read`, `signal frame SIGUSR1`, ...: the kernel wrote for this; nil
    /// for the program's own store.
    var kernel: String?
    /// Instruction pointers, innermost first: the faulting instruction, or
    /// where the thread entered the kernel; then return addresses.
    var stack: [UInt64]
    /// Indices of `stack` reached by frame pointer (`Unwinder.CallStack`).
    var framePointerFrames: [Int] = []

    /// `frames`, symbolized from `stack`, with those found by frame pointer marked.
    func marking(_ frames: [Frame]) -> [Frame] {
        guard !framePointerFrames.isEmpty else { return frames }
        var frames = frames
        for i in framePointerFrames where i < frames.count { frames[i].foundByFramePointer = true }
        return frames
    }
}

struct FrameKey: Hashable {
    var ip: UInt64
    var isReturnAddress: Bool
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
    private var pageWriter = PageWriters()

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
        if fault { faults[i] += 1 }
        return pageWriter.insert(Page.floor(page).value / Page.size, writer: i)
    }

    /// A fault at a page another thread had just made writable:
    /// counted to that page's writer.
    mutating func countFault(at page: RemoteAddress) {
        if let i = pageWriter.writer(of: Page.floor(page).value / Page.size) { faults[i] += 1 }
    }

    /// The sweep's `dirty` pages grouped by writer, most pages first, and a
    /// fresh ledger for the next interval. Pages with no recorded write are
    /// `[pinned]` (written by the kernel at any time, never armed),
    /// `[presumed]` (presumed written: left writable, their writes unseen) or
    /// `[unseen]` (new to PageWatch: the first sweep, a new mapping, contents
    /// changed without a store, or counted conservatively).
    /// `keepingWriters`: the pages stay dirty and are reported again (a
    /// sweep that could not re-arm), so their writers are kept; only the
    /// fault counts start again.
    mutating func sites(
        of dirty: PageSet, pinned: PageSet, presumed: PageSet = PageSet(), keepingWriters: Bool = false,
        symbolizing: ([UInt64]) -> [Frame]
    ) -> [WriteSite] {
        var pages = [PageSet](repeating: PageSet(), count: writers.count)
        var unseen = PageSet(), pinnedPages = PageSet(), presumedPages = PageSet()
        for range in dirty.ranges {
            pageWriter.forEachRun(in: range.start.value / Page.size..<range.end.value / Page.size) { run, writer in
                let r = AddressRange(
                    start: RemoteAddress(run.lowerBound * Page.size), end: RemoteAddress(run.upperBound * Page.size))
                if let i = writer {
                    pages[i].insert(r)
                    return
                }
                var rest = PageSet([r])
                for p in pinned.intersection(r).ranges {
                    pinnedPages.insert(p)
                    rest.remove(p)
                }
                for p in presumed.intersection(r).ranges where !rest.intersection(p).isEmpty {
                    let part = rest.intersection(p)
                    presumedPages.formUnion(part)
                    rest = rest.subtracting(part)
                }
                unseen.formUnion(rest)
            }
        }
        func site(_ set: PageSet, _ faults: Int, _ frames: [Frame]) -> WriteSite {
            WriteSite(
                pages: set.ranges.reduce(0) { $0 + $1.pageCount }, faults: faults, ranges: set.ranges, frames: frames)
        }
        var sites: [WriteSite] = []
        for (i, w) in writers.enumerated() where !pages[i].isEmpty || faults[i] > 0 {
            let top = w.kernel.map { [Frame(ip: 0, function: "[kernel] " + $0)] } ?? []
            sites.append(site(pages[i], faults[i], top + w.marking(symbolizing(w.stack))))
        }
        if !unseen.isEmpty { sites.append(site(unseen, 0, [Frame(ip: 0, function: "[unseen]")])) }
        if !presumedPages.isEmpty {
            sites.append(site(presumedPages, 0, [Frame(ip: 0, function: "[presumed]")]))
        }
        if !pinnedPages.isEmpty { sites.append(site(pinnedPages, 0, [Frame(ip: 0, function: "[pinned]")])) }
        if keepingWriters { faults = faults.map { _ in 0 } } else { self = WriterLedger() }
        return sites.sorted { ($0.pages, $0.faults) > ($1.pages, $1.faults) }
    }
}

/// Page number → writer index for the pages written in an interval, in
/// chunks of 64 pages: a chunk whose written pages all have one writer (a
/// loop's stores, a `read` buffer) costs one dictionary entry, not one a
/// page (1 Mi pages at about 48 bytes each were most of the tracker's
/// memory). Pages whose writer is not their chunk's are kept apart.
struct PageWriters {
    private struct Chunk {
        var written: UInt64 = 0
        var writer: Int32 = 0
        /// Some written page has another writer (in `others`).
        var mixed = false
    }
    private var chunks: [UInt64: Chunk] = [:]
    private var others: [UInt64: Int32] = [:]

    func writer(of page: UInt64) -> Int? {
        guard let c = chunks[page >> 6], c.written & (1 << (page & 63)) != 0 else { return nil }
        return Int(c.mixed ? others[page] ?? c.writer : c.writer)
    }

    /// Gives `page` the writer `writer` unless it has one; true if it had none.
    mutating func insert(_ page: UInt64, writer: Int) -> Bool {
        let bit: UInt64 = 1 << (page & 63)
        var c = chunks[page >> 6] ?? Chunk(writer: Int32(writer))
        guard c.written & bit == 0 else { return false }
        c.written |= bit
        if c.writer != Int32(writer) {
            c.mixed = true
            others[page] = Int32(writer)
        }
        chunks[page >> 6] = c
        return true
    }

    /// Calls `body` with runs of `pages`, in order, each with its pages'
    /// writer or nil (no recorded write); adjacent runs may share a writer.
    func forEachRun(in pages: Range<UInt64>, _ body: (Range<UInt64>, Int?) -> Void) {
        guard !chunks.isEmpty else { return pages.isEmpty ? () : body(pages, nil) }
        var page = pages.lowerBound
        while page < pages.upperBound {
            let chunkEnd = min(pages.upperBound, (page | 63) + 1)
            guard let c = chunks[page >> 6] else {
                body(page..<chunkEnd, nil)
                page = chunkEnd
                continue
            }
            while page < chunkEnd {
                let written = c.written & (1 << (page & 63)) != 0
                var end = page + 1
                if c.mixed {
                    // One page at a time: its writer may be its own.
                    body(page..<end, written ? writer(of: page) : nil)
                    page = end
                    continue
                }
                while end < chunkEnd && (c.written & (1 << (end & 63)) != 0) == written { end += 1 }
                body(page..<end, written ? Int(c.writer) : nil)
                page = end
            }
        }
    }
}
