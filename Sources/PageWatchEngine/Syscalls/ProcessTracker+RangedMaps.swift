import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Maps by range: after a memory call whose effect is confined to one range
/// (mmap, mprotect, brk), only that range of `/proc/PID/maps` is asked for
/// (PROCMAP_QUERY) rather than the whole text, whose cost grows with the
/// process's mappings (a JIT runtime has over a thousand, and makes
/// thousands of such calls).
extension ProcessTracker {
    /// PAGEWATCH_MAPS=read: the whole text at every call, as before (for the benchmark's comparison).
    static let mapsByQuery = getenv("PAGEWATCH_MAPS").map { String(cString: $0) != "read" } ?? true

    /// brk: maps changed only between the heap's old end (maps as last
    /// read) and the new break: nothing when they are in one page (brk(0),
    /// a failed call).
    func brkExit(result: Int64) throws {
        // brk answers with the break, unchanged when it fails; an errno comes
        // only from a seccomp filter of the program's, and nothing changed.
        if result < 0 && result > -4096 && Self.mapsByQuery { return }
        let newEnd = Page.ceil(RemoteAddress(UInt64(bitPattern: result)))
        guard Self.mapsByQuery, let oldEnd = heapEnd(in: attribution.lastMaps) else { return try refreshMaps() }
        try refreshMaps(in: AddressRange(start: min(oldEnd, newEnd), end: max(oldEnd, newEnd)))
    }

    /// The maps entries overlapping `target`, by query where the kernel can.
    func entries(overlapping target: AddressRange, tid: Int32) throws -> [Mapping] {
        if Self.mapsByQuery, let entries = try ProcFS.mappings(of: tid, in: target) { return entries }
        return try ProcFS.maps(of: tid)
    }

    /// `refreshMaps()` after a call that changed the address space only
    /// inside `range`: the model rebuilt there alone from the entries that
    /// overlap it, and the attribution's copy of maps updated there. The
    /// whole read where that would not be the same (`entries(confinedTo:)`).
    func refreshMaps(in range: AddressRange) throws {
        let window = range.pageAligned
        guard !window.isEmpty else { return }
        // As in refreshMaps, pages a thread was sent to un-arm through its
        // slot are reconciled as armed, then un-armed again; looked at
        // before the query (a slot's mprotect may run in between).
        let inFlight = pagesInFlight(in: window)
        guard let entries = entries(confinedTo: window) else { return try refreshMaps() }
        trace("  maps of \(window): \(entries.count) entries")
        reconcile(entries, keepingInFlight: inFlight) { memory, programs in
            memory.reconcile(maps: programs, within: window, selection: trackingSelection, stackAnchors: stackAnchors)
        }
        spliceAttributionMaps(entries, window)
    }

    /// The maps entries overlapping `window`, or nil where the whole text
    /// must be read: the kernel has no PROCMAP_QUERY, the query failed (the
    /// thread read through is gone), no whole read was made yet in this
    /// image (the attribution's copy of maps is what the range is spliced
    /// into), or what is decided per mapping rather than per entry may
    /// change outside the window: with `--track stack` (a thread stack is
    /// one by the whole mapping), or next to the main stack.
    func entries(confinedTo window: AddressRange) -> [Mapping]? {
        guard Self.mapsByQuery, !config.selection.specs.contains(.stack), !attribution.lastMaps.isEmpty,
            let entries = try? ProcFS.mappings(of: liveThread(), in: window)
        else { return nil }
        if let stack = Self.mainStackExtent(attribution.lastMaps) {
            let start = min(window.start, entries.first?.range.start ?? window.start)
            let end = max(window.end, entries.last?.range.end ?? window.end)
            // Touching counts: the stack grows down into the VMA below it.
            if start <= stack.end && stack.start <= end { return nil }
        }
        return entries
    }

    /// The end of `[heap]` (its pieces are all labelled), page-aligned: the
    /// break when `maps` was read. Nil without a heap.
    func heapEnd(in maps: [Mapping]) -> RemoteAddress? {
        // From the front: the heap follows the executable's few mappings.
        guard var i = maps.firstIndex(where: \.isHeap) else { return nil }
        while i + 1 < maps.count && maps[i + 1].isHeap { i += 1 }
        return maps[i].range.end
    }

    /// Where the main stack's pieces lie in `maps`: the `[stack]` entry and
    /// the private anonymous entries joined to it (arming splits the stack,
    /// and the kernel labels only the piece holding the initial stack pointer).
    static func mainStackExtent(_ maps: [Mapping]) -> AddressRange? {
        guard let i = maps.lastIndex(where: \.isMainStack) else { return nil }
        func joined(_ a: Mapping, _ b: Mapping) -> Bool {
            a.range.end == b.range.start && a.isPrivate && b.isPrivate && a.inode == 0 && b.inode == 0
        }
        var low = i, high = i
        while low > 0 && joined(maps[low - 1], maps[low]) { low -= 1 }
        while high + 1 < maps.count && joined(maps[high], maps[high + 1]) { high += 1 }
        return AddressRange(start: maps[low].range.start, end: maps[high].range.end)
    }

    /// The attribution's copy of maps (`lastMaps`) with what lies around
    /// `window` replaced by `entries`: the old entries there give way, the
    /// parts of them outside the new entries' span kept (a file mapping's
    /// offset moving with its start). The unwinder and the frame names are
    /// told only when code mappings (file-backed, not writable) came or went.
    func spliceAttributionMaps(_ entries: [Mapping], _ window: AddressRange) {
        let (replaced, pieces) = Self.splice(entries, window, into: attribution.lastMaps)
        if WriterAttribution.code(of: Array(attribution.lastMaps[replaced])) != WriterAttribution.code(of: pieces) {
            var spliced = attribution.lastMaps
            spliced.replaceSubrange(replaced, with: pieces)
            attribution.mapsRead(spliced)
        } else {
            // In place: no copy of a thousand entries at every call.
            attribution.lastMaps.replaceSubrange(replaced, with: pieces)
        }
    }

    /// The indices of `maps` that `entries` of `window` replace, and what
    /// replaces them.
    static func splice(_ entries: [Mapping], _ window: AddressRange, into maps: [Mapping]) -> (Range<Int>, [Mapping]) {
        let start = min(window.start, entries.first?.range.start ?? window.start)
        let end = max(window.end, entries.last?.range.end ?? window.end)
        // The first entry ending above `start` (maps is sorted).
        var first = 0, high = maps.count
        while first < high {
            let mid = (first + high) / 2
            if maps[mid].range.end <= start { first = mid + 1 } else { high = mid }
        }
        var last = first
        while last < maps.count && maps[last].range.start < end { last += 1 }
        var pieces: [Mapping] = []
        if first < last, maps[first].range.start < start {
            var head = maps[first]
            head.range = AddressRange(start: head.range.start, end: start)
            pieces.append(head)
        }
        pieces += entries
        if first < last, maps[last - 1].range.end > end {
            var tail = maps[last - 1]
            if tail.inode != 0 { tail.offset += end - tail.range.start }
            tail.range = AddressRange(start: end, end: tail.range.end)
            pieces.append(tail)
        }
        return (first..<last, pieces)
    }
}
