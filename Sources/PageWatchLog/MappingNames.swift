import PageWatchAddressSpace

/// A tracked mapping as the log names it (docs/format.md, `mappings`): its
/// tracked pages and what `/proc/PID/maps` calls them.
public struct NamedMapping: Sendable, Equatable {
    public var range: AddressRange
    /// The path as maps shows it (with ` (deleted)` for an unlinked file),
    /// a pseudo-name such as `[heap]` or `[stack]`, or `[anon]` for
    /// anonymous memory maps leaves unnamed.
    public var name: String

    public init(range: AddressRange, name: String) {
        self.range = range
        self.name = name
    }

    /// The name the log gives a maps entry.
    public static func name(of m: Mapping) -> String {
        if m.path.isEmpty { return "[anon]" }
        return m.isDeleted ? m.path + " (deleted)" : m.path
    }

    /// The tracked pages (`tracked`, sorted, not overlapping) named by the
    /// maps entries they lie in (`maps`, sorted as maps lists them),
    /// touching pieces of one name coalesced. Pages in no entry are left
    /// out, or named `unnamed` when it is given.
    public static func named(tracked: [AddressRange], maps: [Mapping], unnamed: String? = nil) -> [NamedMapping] {
        var out: [NamedMapping] = []
        var m = maps.startIndex
        for t in tracked {
            // Entries wholly below this range are below every later one too.
            while m < maps.endIndex && maps[m].range.end <= t.start { m += 1 }
            var at = t.start
            var i = m
            while i < maps.endIndex && maps[i].range.start < t.end {
                if let piece = maps[i].range.intersection(t) {
                    if let unnamed, piece.start > at {
                        append(NamedMapping(range: AddressRange(start: at, end: piece.start), name: unnamed), to: &out)
                    }
                    append(NamedMapping(range: piece, name: name(of: maps[i])), to: &out)
                    at = piece.end
                }
                i += 1
            }
            if let unnamed, at < t.end {
                append(NamedMapping(range: AddressRange(start: at, end: t.end), name: unnamed), to: &out)
            }
        }
        return out
    }

    /// Appends, merging into the last element when it touches it with the same name.
    static func append(_ piece: NamedMapping, to out: inout [NamedMapping]) {
        if let last = out.last, last.name == piece.name, last.range.end == piece.range.start {
            out[out.count - 1].range.end = piece.range.end
        } else {
            out.append(piece)
        }
    }
}

/// Which name each address has, as a reader of the log knows it: `start`
/// and `exec` give the whole set, a sweep's `mappings` the pieces new or
/// renamed since; a later piece names its addresses over an earlier one.
/// The engine keeps one too, to write only what a reader does not know yet.
public struct MappingNames: Sendable, Equatable {
    /// Sorted, not overlapping.
    public private(set) var pieces: [NamedMapping] = []

    public init(_ pieces: [NamedMapping] = []) {
        self.pieces = []
        overlay(pieces)
    }

    public var isEmpty: Bool { pieces.isEmpty }

    /// The name of `a`, or nil when no record named it.
    public func name(of a: RemoteAddress) -> String? {
        var lo = 0, hi = pieces.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if pieces[mid].range.end <= a { lo = mid + 1 } else { hi = mid }
        }
        return lo < pieces.count && pieces[lo].range.contains(a) ? pieces[lo].name : nil
    }

    /// Names `new`'s ranges (not overlapping each other) by `new`'s names,
    /// over whatever named them before. One pass over both lists: a report
    /// applies every sweep's `mappings` to a map of thousands of pieces.
    public mutating func overlay(_ new: [NamedMapping]) {
        guard !new.isEmpty else { return }
        let added = new.filter { !$0.range.isEmpty }.sorted { $0.range < $1.range }
        // The old pieces less what `added` covers, cut where it begins and ends.
        var kept: [NamedMapping] = []
        kept.reserveCapacity(pieces.count + 2)
        var j = 0
        for old in pieces {
            var start = old.range.start
            while j < added.count && added[j].range.end <= start { j += 1 }
            var k = j
            while k < added.count && added[k].range.start < old.range.end {
                if added[k].range.start > start {
                    kept.append(
                        NamedMapping(range: AddressRange(start: start, end: added[k].range.start), name: old.name))
                }
                start = max(start, added[k].range.end)
                k += 1
            }
            if start < old.range.end {
                kept.append(NamedMapping(range: AddressRange(start: start, end: old.range.end), name: old.name))
            }
        }
        var out: [NamedMapping] = []
        out.reserveCapacity(kept.count + added.count)
        var i = 0, a = 0
        while i < kept.count || a < added.count {
            if a == added.count || (i < kept.count && kept[i].range.start < added[a].range.start) {
                NamedMapping.append(kept[i], to: &out)
                i += 1
            } else {
                NamedMapping.append(added[a], to: &out)
                a += 1
            }
        }
        pieces = out
    }

    /// The parts of `current` (sorted, as `NamedMapping.named` gives them)
    /// this map does not name alike: what a record must say so that a
    /// reader names every page of `current` right. Then this map is
    /// `current`: what is no longer tracked is forgotten (said again if it
    /// comes back; a reader naming it meanwhile names no reported page).
    public mutating func update(to current: [NamedMapping]) -> [NamedMapping] {
        var news: [NamedMapping] = []
        var o = pieces.startIndex
        for c in current {
            while o < pieces.endIndex && pieces[o].range.end <= c.range.start { o += 1 }
            var cursor = c.range.start
            var i = o
            while i < pieces.endIndex && pieces[i].range.start < c.range.end {
                let known = pieces[i]
                if known.name == c.name, let same = known.range.intersection(c.range) {
                    if same.start > cursor {
                        NamedMapping.append(
                            NamedMapping(range: AddressRange(start: cursor, end: same.start), name: c.name), to: &news)
                    }
                    cursor = max(cursor, same.end)
                }
                i += 1
            }
            if cursor < c.range.end {
                NamedMapping.append(
                    NamedMapping(range: AddressRange(start: cursor, end: c.range.end), name: c.name), to: &news)
            }
        }
        pieces = current
        return news
    }

    /// Pages of `ranges` per name (nil: pages no record named).
    public func pages(in ranges: [AddressRange]) -> [String?: UInt64] {
        var out: [String?: UInt64] = [:]
        for r in ranges where !r.isEmpty {
            var cursor = r.start
            var lo = 0, hi = pieces.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if pieces[mid].range.end <= r.start { lo = mid + 1 } else { hi = mid }
            }
            var i = lo
            while i < pieces.count && pieces[i].range.start < r.end {
                if let x = pieces[i].range.intersection(r) {
                    if x.start > cursor { out[nil, default: 0] += (x.start - cursor) / Page.size }
                    out[pieces[i].name, default: 0] += x.pageCount
                    cursor = x.end
                }
                i += 1
            }
            if cursor < r.end { out[nil, default: 0] += (r.end - cursor) / Page.size }
        }
        return out
    }
}
