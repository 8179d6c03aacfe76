/// A set of pages kept as sorted, disjoint, coalesced, page-aligned ranges.
public struct PageSet: Equatable, Sendable {
    public private(set) var ranges: [AddressRange] = []

    public init() {}
    public init<S: Sequence>(_ ranges: S) where S.Element == AddressRange {
        for r in ranges { insert(r) }
    }

    public var isEmpty: Bool { ranges.isEmpty }
    public var pageCount: UInt64 { ranges.reduce(0) { $0 + $1.pageCount } }

    /// Index of the first range whose end is above `a`.
    private func firstEnding(above a: RemoteAddress) -> Int {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].end <= a { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    public func contains(_ a: RemoteAddress) -> Bool {
        let i = firstEnding(above: a)
        return i < ranges.count && ranges[i].contains(a)
    }

    /// Adds the pages covering `range` (widened to page boundaries).
    public mutating func insert(_ range: AddressRange) {
        let r = range.pageAligned
        guard !r.isEmpty else { return }
        // Ranges that touch or overlap r merge with it.
        var i = firstEnding(above: RemoteAddress(r.start.value &- 1))
        if r.start.value == 0 { i = 0 }
        var start = r.start, end = r.end
        var j = i
        while j < ranges.count && ranges[j].start <= end {
            start = min(start, ranges[j].start)
            end = max(end, ranges[j].end)
            j += 1
        }
        ranges.replaceSubrange(i..<j, with: [AddressRange(start: start, end: end)])
    }

    public mutating func insert(page a: RemoteAddress) {
        insert(AddressRange(start: Page.floor(a), end: Page.floor(a) + Page.size))
    }

    /// Removes the pages inside `range` (narrowed to page boundaries it fully covers
    /// only when already aligned; callers pass aligned ranges).
    public mutating func remove(_ range: AddressRange) {
        let r = range.pageAligned
        guard !r.isEmpty else { return }
        let i = firstEnding(above: r.start)
        var j = i
        var kept: [AddressRange] = []
        while j < ranges.count && ranges[j].start < r.end {
            let cur = ranges[j]
            if cur.start < r.start { kept.append(AddressRange(start: cur.start, end: r.start)) }
            if cur.end > r.end { kept.append(AddressRange(start: r.end, end: cur.end)) }
            j += 1
        }
        ranges.replaceSubrange(i..<j, with: kept)
    }

    public mutating func formUnion(_ other: PageSet) {
        for r in other.ranges { insert(r) }
    }

    public func intersection(_ range: AddressRange) -> PageSet {
        var out = PageSet()
        var i = firstEnding(above: range.start)
        while i < ranges.count && ranges[i].start < range.end {
            if let x = ranges[i].intersection(range) { out.ranges.append(x) }
            i += 1
        }
        return out
    }

    public func intersection(_ other: PageSet) -> PageSet {
        var out = PageSet()
        for r in other.ranges { out.ranges.append(contentsOf: intersection(r).ranges) }
        // Pieces from different ranges of `other` never touch unless `other` was not coalesced.
        return PageSet(out.ranges)
    }
}

/// One bit per page of a fixed range: the O(1 bit per page) state of a tracked region.
public struct PageBitmap: Equatable, Sendable {
    public private(set) var words: [UInt64]
    public let pageCount: Int
    public private(set) var setCount: Int = 0

    public init(pageCount: Int, allSet: Bool = false) {
        self.pageCount = pageCount
        words = Array(repeating: 0, count: (pageCount + 63) / 64)
        if allSet { setAll() }
    }

    public subscript(i: Int) -> Bool {
        get { words[i >> 6] & (1 << UInt64(i & 63)) != 0 }
        set {
            let mask: UInt64 = 1 << UInt64(i & 63)
            let old = words[i >> 6] & mask != 0
            guard old != newValue else { return }
            if newValue { words[i >> 6] |= mask; setCount += 1 } else { words[i >> 6] &= ~mask; setCount -= 1 }
        }
    }

    public mutating func setAll() {
        for w in words.indices { words[w] = ~0 }
        let extra = words.count * 64 - pageCount
        if extra > 0 { words[words.count - 1] >>= UInt64(extra) }
        setCount = pageCount
    }

    public mutating func clearAll() {
        for w in words.indices { words[w] = 0 }
        setCount = 0
    }

    public mutating func set(_ range: Range<Int>, to value: Bool) {
        for i in range { self[i] = value }
    }

    /// Maximal runs of set bits, as page-index ranges, in ascending order.
    public func runs() -> [Range<Int>] {
        var out: [Range<Int>] = []
        var runStart: Int? = nil
        var i = 0
        while i < pageCount {
            let w = words[i >> 6]
            // Skip whole words quickly when no run is open and the word is empty,
            // or a run is open and the word is full.
            if i & 63 == 0 && i + 64 <= pageCount {
                if runStart == nil && w == 0 { i += 64; continue }
                if runStart != nil && w == ~0 { i += 64; continue }
            }
            let bit = w & (1 << UInt64(i & 63)) != 0
            if bit, runStart == nil { runStart = i }
            if !bit, let s = runStart { out.append(s..<i); runStart = nil }
            i += 1
        }
        if let s = runStart { out.append(s..<pageCount) }
        return out
    }
}
