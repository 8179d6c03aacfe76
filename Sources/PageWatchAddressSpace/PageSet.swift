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
        // Ascending inserts (a bitmap's runs, a sweep's pages) extend or
        // append at the end: no search, no one-element array to splice in.
        if let last = ranges.last, r.start >= last.end {
            if r.start == last.end {
                ranges[ranges.count - 1] = AddressRange(start: last.start, end: r.end)
            } else {
                ranges.append(r)
            }
            return
        }
        if ranges.isEmpty { ranges.append(r); return }
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

    /// One merge of the two sorted lists: inserting a large set's ranges one
    /// by one into another costs a splice each, quadratic for interleaved sets.
    public mutating func formUnion(_ other: PageSet) {
        if other.ranges.count <= 4 {
            for r in other.ranges { insert(r) }
            return
        }
        var merged: [AddressRange] = []
        merged.reserveCapacity(ranges.count + other.ranges.count)
        var i = 0, j = 0
        while i < ranges.count || j < other.ranges.count {
            let next: AddressRange
            if j == other.ranges.count || (i < ranges.count && ranges[i].start <= other.ranges[j].start) {
                next = ranges[i]
                i += 1
            } else {
                next = other.ranges[j]
                j += 1
            }
            if let last = merged.last, next.start <= last.end {
                merged[merged.count - 1] = AddressRange(start: last.start, end: max(last.end, next.end))
            } else {
                merged.append(next)
            }
        }
        ranges = merged
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

    /// The pages of this set that are not in `other`, in one pass over both.
    public func subtracting(_ other: PageSet) -> PageSet {
        var out = PageSet()
        var j = 0
        for r in ranges {
            var start = r.start
            while j < other.ranges.count && other.ranges[j].end <= start { j += 1 }
            var k = j
            while k < other.ranges.count && other.ranges[k].start < r.end {
                if other.ranges[k].start > start {
                    out.ranges.append(AddressRange(start: start, end: other.ranges[k].start))
                }
                start = max(start, other.ranges[k].end)
                k += 1
            }
            if start < r.end { out.ranges.append(AddressRange(start: start, end: r.end)) }
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

/// One bit per page of a range: the O(1 bit per page) state of a tracked
/// region. Whole-range operations work a word (64 pages) at a time, so a
/// sweep costs the tracked pages over 64, not the tracked pages.
public struct PageBitmap: Equatable, Sendable {
    /// Bits past `pageCount` are always 0 (equality and `setCount` rely on it).
    public private(set) var words: [UInt64]
    public private(set) var pageCount: Int
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

    public mutating func setAll() { set(0..<pageCount, to: true) }

    public mutating func clearAll() {
        for w in words.indices { words[w] = 0 }
        setCount = 0
    }

    public mutating func set(_ range: Range<Int>, to value: Bool) {
        var i = range.lowerBound
        while i < range.upperBound {
            let w = i >> 6, lo = i & 63, n = min(64 - lo, range.upperBound - i)
            let mask = Self.lowBits(n) << UInt64(lo)
            let before = words[w]
            words[w] = value ? before | mask : before & ~mask
            setCount += words[w].nonzeroBitCount - before.nonzeroBitCount
            i += n
        }
    }

    /// The bits of pages `i..<i+64`, page `i` in bit 0 (0 past `pageCount`).
    public func word(from i: Int) -> UInt64 {
        let w = i >> 6, shift = UInt64(i & 63)
        guard w < words.count else { return 0 }
        var x = words[w] >> shift
        if shift != 0 && w + 1 < words.count { x |= words[w + 1] << (64 - shift) }
        return x
    }

    /// Grows by `count` pages whose bits `bits(k)` gives 64 at a time (the
    /// bits of appended pages `k..<k+64`, as `word(from:)` does).
    public mutating func append(count: Int, _ bits: (Int) -> UInt64) {
        var k = 0
        while k < count {
            let n = min(64, count - k)
            let x = bits(k) & Self.lowBits(n)
            let used = pageCount & 63
            if used == 0 {
                words.append(x)
            } else {
                words[words.count - 1] |= x << UInt64(used)
                if used + n > 64 { words.append(x >> UInt64(64 - used)) }
            }
            pageCount += n
            setCount += x.nonzeroBitCount
            k += n
        }
    }

    public mutating func append(repeating value: Bool, count: Int) {
        append(count: count) { _ in value ? ~0 : 0 }
    }

    /// Appends the bits of `pages` of `other`.
    public mutating func append(_ other: PageBitmap, pages: Range<Int>) {
        append(count: pages.count) { other.word(from: pages.lowerBound + $0) }
    }

    /// The first set bit in `range`, if any.
    public func firstSet(in range: Range<Int>) -> Int? { next(true, in: range) }

    /// The first clear bit in `range`, if any.
    public func firstClear(in range: Range<Int>) -> Int? { next(false, in: range) }

    /// The last set bit in `range`, if any.
    public func lastSet(in range: Range<Int>) -> Int? { previous(true, in: range) }

    /// The last clear bit in `range`, if any.
    public func lastClear(in range: Range<Int>) -> Int? { previous(false, in: range) }

    /// The last bit equal to `value` in `range`, if any.
    private func previous(_ value: Bool, in range: Range<Int>) -> Int? {
        var i = range.upperBound
        while i > range.lowerBound {
            let w = (i - 1) >> 6, lo = max(range.lowerBound, w << 6)
            let x = (value ? words[w] : ~words[w]) & (Self.lowBits(i - (w << 6)) & ~Self.lowBits(lo - (w << 6)))
            if x != 0 { return (w << 6) + 63 - x.leadingZeroBitCount }
            i = lo
        }
        return nil
    }

    /// The first bit equal to `value` in `range`, if any.
    private func next(_ value: Bool, in range: Range<Int>) -> Int? {
        var i = range.lowerBound
        while i < range.upperBound {
            let w = i >> 6, lo = i & 63
            var x = value ? words[w] : ~words[w]
            x &= ~Self.lowBits(lo)
            if x != 0 {
                let found = (w << 6) + x.trailingZeroBitCount
                return found < range.upperBound ? found : nil
            }
            i = (w + 1) << 6
        }
        return nil
    }

    /// Maximal runs of set bits within `range`, as page-index ranges, in ascending order.
    public func runs(in range: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = range.lowerBound
        while let start = next(true, in: i..<range.upperBound) {
            let end = next(false, in: start..<range.upperBound) ?? range.upperBound
            out.append(start..<end)
            i = end
        }
        return out
    }

    /// Maximal runs of set bits, as page-index ranges, in ascending order.
    public func runs() -> [Range<Int>] { runs(in: 0..<pageCount) }

    /// A word with its `n` low bits set (n in 0...64).
    static func lowBits(_ n: Int) -> UInt64 { n >= 64 ? ~0 : (1 << UInt64(n)) - 1 }
}
