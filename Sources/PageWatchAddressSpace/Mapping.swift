/// One line of `/proc/PID/maps`.
public struct Mapping: Hashable, Sendable {
    public var range: AddressRange
    public var protection: Protection
    /// `p` (private, copy-on-write) rather than `s` (shared).
    public var isPrivate: Bool
    public var offset: UInt64
    public var device: String
    public var inode: UInt64
    /// The path column as the kernel prints it, without a trailing ` (deleted)`;
    /// empty for anonymous memory. Pseudo-paths such as `[heap]` are kept as they are.
    public var path: String
    /// The backing file was unlinked (` (deleted)` suffix).
    public var isDeleted: Bool

    public init(
        range: AddressRange, protection: Protection, isPrivate: Bool, offset: UInt64 = 0,
        device: String = "00:00", inode: UInt64 = 0, path: String = "", isDeleted: Bool = false
    ) {
        self.range = range
        self.protection = protection
        self.isPrivate = isPrivate
        self.offset = offset
        self.device = device
        self.inode = inode
        self.path = path
        self.isDeleted = isDeleted
    }

    /// Anonymous memory: no file behind it (`[heap]`, `[stack]` and `[anon:NAME]` included).
    public var isAnonymous: Bool { inode == 0 && !isSpecialKernelMapping }
    public var isHeap: Bool { path == "[heap]" }
    public var isMainStack: Bool { path == "[stack]" }
    /// `[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, `[uprobes]`: never tracked.
    public var isSpecialKernelMapping: Bool {
        path.hasPrefix("[v") || path == "[uprobes]"
    }
    /// A real file (not anonymous, not a `[pseudo]` name).
    public var isFileBacked: Bool { inode != 0 && !path.hasPrefix("[") }
}

public enum MapsParseError: Error, Equatable, CustomStringConvertible {
    case malformedLine(number: Int, line: String)
    public var description: String {
        switch self {
        case .malformedLine(let n, let line): return "malformed maps line \(n): \(line)"
        }
    }
}

/// Parser for the text of `/proc/PID/maps`. It works on the bytes: a busy
/// runtime's memory calls each have their maps read (a thousand lines), and
/// splitting Swift strings took two thirds of PageWatch's time under node.
public enum MapsParser {
    public static func parse(_ text: String) throws -> [Mapping] {
        var text = text
        return try text.withUTF8 { try parse(bytes: $0) }
    }

    public static func parse(bytes: UnsafeBufferPointer<UInt8>) throws -> [Mapping] {
        var result: [Mapping] = []
        result.reserveCapacity(bytes.count / 64)
        var number = 0
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            if end > start {
                number += 1
                let line = UnsafeBufferPointer(rebasing: bytes[start..<end])
                guard let m = parseLine(bytes: line) else {
                    throw MapsParseError.malformedLine(number: number, line: String(decoding: line, as: UTF8.self))
                }
                result.append(m)
            }
            start = end + 1
        }
        return result
    }

    /// `start-end perms offset dev inode   path`; the path may hold spaces and
    /// is separated from the inode by padding, so it is everything after the
    /// fifth field with the leading blanks removed.
    public static func parseLine<S: StringProtocol>(_ line: S) -> Mapping? {
        var text = String(line)
        return text.withUTF8 { parseLine(bytes: $0) }
    }

    public static func parseLine(bytes b: UnsafeBufferPointer<UInt8>) -> Mapping? {
        let space = UInt8(ascii: " ")
        var i = 0
        func skipBlanks() { while i < b.count && b[i] == space { i += 1 } }
        /// Digits in `radix` up to `stop` (or a blank, or the end); nil when none or too many.
        func number(radix: UInt64, stop: UInt8 = UInt8(ascii: " ")) -> UInt64? {
            var value: UInt64 = 0
            let first = i
            while i < b.count && b[i] != stop && b[i] != space {
                let c = b[i]
                let digit: UInt64
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt64(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f") where radix == 16: digit = UInt64(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F") where radix == 16: digit = UInt64(c - UInt8(ascii: "A") + 10)
                default: return nil
                }
                let (shifted, overflow) = value.multipliedReportingOverflow(by: radix)
                guard !overflow else { return nil }
                let (sum, carry) = shifted.addingReportingOverflow(digit)
                guard !carry else { return nil }
                value = sum
                i += 1
            }
            return i > first ? value : nil
        }
        skipBlanks()
        guard let start = number(radix: 16, stop: UInt8(ascii: "-")), i < b.count, b[i] == UInt8(ascii: "-") else {
            return nil
        }
        i += 1
        guard let end = number(radix: 16), start <= end, i < b.count, b[i] == space else { return nil }
        skipBlanks()
        guard i + 4 <= b.count, i + 4 == b.count || b[i + 4] == space else { return nil }
        var prot: Protection = []
        if b[i] == UInt8(ascii: "r") { prot.insert(.read) }
        if b[i + 1] == UInt8(ascii: "w") { prot.insert(.write) }
        if b[i + 2] == UInt8(ascii: "x") { prot.insert(.execute) }
        let sharing = b[i + 3]
        guard sharing == UInt8(ascii: "p") || sharing == UInt8(ascii: "s") else { return nil }
        i += 4
        skipBlanks()
        guard let offset = number(radix: 16) else { return nil }
        skipBlanks()
        let deviceStart = i
        while i < b.count && b[i] != space { i += 1 }
        guard i > deviceStart else { return nil }
        let device = String(decoding: UnsafeBufferPointer(rebasing: b[deviceStart..<i]), as: UTF8.self)
        skipBlanks()
        guard let inode = number(radix: 10) else { return nil }
        skipBlanks()
        var pathEnd = b.count
        var deleted = false
        let suffix = " (deleted)".utf8
        if pathEnd - i >= suffix.count, b[(pathEnd - suffix.count)..<pathEnd].elementsEqual(suffix) {
            deleted = true
            pathEnd -= suffix.count
        }
        let path = i < pathEnd ? String(decoding: UnsafeBufferPointer(rebasing: b[i..<pathEnd]), as: UTF8.self) : ""
        return Mapping(
            range: AddressRange(start, end), protection: prot, isPrivate: sharing == UInt8(ascii: "p"),
            offset: offset, device: device, inode: inode, path: path, isDeleted: deleted)
    }
}

extension Array where Element == Mapping {
    /// The mapping holding `address`, by halving: `/proc/PID/maps` lists
    /// them sorted and apart, and a JVM has hundreds. Looked at one by one
    /// when that finds none, for a list in another order.
    public func mapping(containing address: UInt64) -> Mapping? {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if self[mid].range.end.value <= address { lo = mid + 1 } else { hi = mid }
        }
        if lo < count, self[lo].range.contains(RemoteAddress(address)) { return self[lo] }
        return first { $0.range.contains(RemoteAddress(address)) }
    }
}
