import Glibc

/// The symbol map a JIT writes for perf, `/tmp/perf-PID.map`: one line per
/// piece of generated code, `START SIZE NAME`, both numbers hex with or
/// without `0x` (node, Python and `jcmd Compiler.perfmap` write them
/// without, OpenJDK's `-XX:+DumpPerfMapAtExit` with). Read as perf reads it:
/// a later line for the same code wins (a JIT reuses freed code space).
///
/// JITs append to the file while they run: `refresh` parses only what was
/// appended since the last read (whole lines; a line being written is left
/// for the next read), and reads the file again from its start when it was
/// replaced or shrank. Used by the engine (names at the sweep) and by
/// `pagewatch report` (names the JVM writes only at its exit), so here,
/// below both; not thread-safe.
public final class PerfMap {
    public struct Entry: Sendable, Equatable {
        public var start: UInt64
        public var size: UInt64
        public var name: String

        public init(start: UInt64, size: UInt64, name: String) {
            self.start = start
            self.size = size
            self.name = name
        }
    }

    public let path: String
    /// In file order: a later entry overrides an earlier one it overlaps.
    public private(set) var entries: [Entry] = []
    /// Indices of `entries` sorted by start; rebuilt after a read added some.
    private var byStart: [Int] = []
    private var sorted = true
    /// The largest size among the entries: how far back a lookup looks.
    private var largest: UInt64 = 0
    /// Bytes of the file parsed: up to the end of its last whole line.
    public private(set) var parsedBytes: UInt64 = 0
    /// The file as last read: a change of any tells `refresh` to read it.
    private var identity: (device: UInt64, inode: UInt64, size: Int, mtime: timespec)?
    /// Reads of the file that found something new, for tests.
    public private(set) var reads = 0
    /// When `refreshIfDue` last looked at the file (CLOCK_MONOTONIC_COARSE, ns).
    private var lastLookNs: UInt64?

    /// `/tmp/perf-PID.map`, where perf looks for the map of process `pid`.
    public static func path(pid: Int32) -> String { "/tmp/perf-\(pid).map" }

    /// Nothing is read until `refresh`.
    public init(path: String) { self.path = path }

    /// The file's modification time, nil when it does not exist.
    public static func modificationTimeNs(of path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt64(st.st_mtim.tv_sec) * 1_000_000_000 + UInt64(st.st_mtim.tv_nsec)
    }

    /// Reads what the file gained since the last call; true when entries
    /// were added (or the file was read anew). A missing file keeps what was read.
    @discardableResult
    public func refresh() -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        let device = UInt64(st.st_dev), inode = UInt64(st.st_ino)
        if let known = identity, known.device == device, known.inode == inode, known.size == st.st_size,
            known.mtime.tv_sec == st.st_mtim.tv_sec, known.mtime.tv_nsec == st.st_mtim.tv_nsec
        {
            return false
        }
        // Grown: only the tail. Replaced (another inode), cut short, or
        // rewritten in place at the same size: all of it again.
        let grew = identity.map { $0.device == device && $0.inode == inode && st.st_size > $0.size } ?? false
        if !grew { reset() }
        identity = (device, inode, st.st_size, st.st_mtim)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var tail: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var at = off_t(parsedBytes)
        while true {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, at) }
            guard n > 0 else { break }
            tail += buffer[0..<n]
            at += off_t(n)
        }
        guard let lastNewline = tail.lastIndex(of: UInt8(ascii: "\n")) else { return false }
        let before = entries.count
        parse(tail[..<lastNewline])
        parsedBytes += UInt64(lastNewline + 1)
        reads += 1
        return entries.count > before
    }

    /// `refresh`, unless the last call was less than `intervalNs` ago: a
    /// sweep names thousands of frames a JIT never named (the JVM's before
    /// its exit), and one `stat` a millisecond is enough to see a growing map.
    @discardableResult
    public func refreshIfDue(intervalNs: UInt64 = 1_000_000) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        let ns = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        if let last = lastLookNs, ns &- last < intervalNs { return false }
        lastLookNs = ns
        return refresh()
    }

    /// The name of the code holding `ip`: the last entry covering it.
    public func name(at ip: UInt64) -> String? {
        if !sorted {
            byStart = entries.indices.sorted { entries[$0].start < entries[$1].start }
            sorted = true
        }
        // The last entry starting at or below ip, then back while an entry could still reach it.
        var lo = 0, hi = byStart.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[byStart[mid]].start <= ip { lo = mid + 1 } else { hi = mid }
        }
        var best: Int?
        var i = lo - 1
        while i >= 0 {
            let e = entries[byStart[i]]
            if ip - e.start >= largest { break }
            if ip - e.start < e.size, byStart[i] > (best ?? -1) { best = byStart[i] }
            i -= 1
        }
        return best.map { entries[$0].name }
    }

    private func reset() {
        entries = []
        byStart = []
        sorted = true
        largest = 0
        parsedBytes = 0
    }

    /// Lines `START SIZE NAME`; a line that does not parse is skipped, as perf skips it.
    private func parse(_ bytes: ArraySlice<UInt8>) {
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            guard let entry = Self.entry(line) else { continue }
            entries.append(entry)
            largest = max(largest, entry.size)
            sorted = false
        }
    }

    static func entry(_ line: ArraySlice<UInt8>) -> Entry? {
        var rest = line[...]
        func number() -> UInt64? {
            while rest.first == UInt8(ascii: " ") || rest.first == UInt8(ascii: "\t") { rest = rest.dropFirst() }
            if rest.starts(with: "0x".utf8) || rest.starts(with: "0X".utf8) { rest = rest.dropFirst(2) }
            var value: UInt64 = 0, digits = 0
            while let c = rest.first, let d = hexDigit(c) {
                guard digits < 16 else { return nil }
                value = value << 4 | UInt64(d)
                digits += 1
                rest = rest.dropFirst()
            }
            return digits > 0 ? value : nil
        }
        guard let start = number(), let size = number(), size > 0,
            rest.first == UInt8(ascii: " ") || rest.first == UInt8(ascii: "\t")
        else { return nil }
        var name = rest.dropFirst()
        while name.last == UInt8(ascii: "\r") { name = name.dropLast() }
        guard !name.isEmpty else { return nil }
        return Entry(start: start, size: size, name: String(decoding: name, as: UTF8.self))
    }

    private static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
