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

/// Parser for the text of `/proc/PID/maps`.
public enum MapsParser {
    public static func parse(_ text: String) throws -> [Mapping] {
        var result: [Mapping] = []
        var number = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            number += 1
            guard let m = parseLine(line) else {
                throw MapsParseError.malformedLine(number: number, line: String(line))
            }
            result.append(m)
        }
        return result
    }

    /// `start-end perms offset dev inode   path`; the path may hold spaces and
    /// is separated from the inode by padding, so it is everything after the
    /// fifth field with the leading blanks removed.
    public static func parseLine<S: StringProtocol>(_ line: S) -> Mapping? {
        var rest = Substring(line)
        func field() -> Substring? {
            rest = rest.drop(while: { $0 == " " })
            guard !rest.isEmpty else { return nil }
            let f = rest.prefix(while: { $0 != " " })
            rest = rest.dropFirst(f.count)
            return f
        }
        guard let rangeField = field(), let perms = field(), let offsetField = field(),
            let device = field(), let inodeField = field()
        else { return nil }
        let bounds = rangeField.split(separator: "-")
        guard bounds.count == 2,
            let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16), start <= end,
            perms.count == 4, let offset = UInt64(offsetField, radix: 16), let inode = UInt64(inodeField)
        else { return nil }
        let p = Array(perms)
        var prot: Protection = []
        if p[0] == "r" { prot.insert(.read) }
        if p[1] == "w" { prot.insert(.write) }
        if p[2] == "x" { prot.insert(.execute) }
        guard p[3] == "p" || p[3] == "s" else { return nil }
        let (path, deleted) = pathColumn(rest)
        return Mapping(
            range: AddressRange(start, end), protection: prot, isPrivate: p[3] == "p",
            offset: offset, device: String(device), inode: inode, path: path, isDeleted: deleted)
    }

    /// A line's path column (what follows the inode): the path without its
    /// leading blanks and without a ` (deleted)` suffix, and whether it had one.
    public static func pathColumn<S: StringProtocol>(_ column: S) -> (path: String, isDeleted: Bool) {
        var path = String(column.drop(while: { $0 == " " }))
        guard path.hasSuffix(" (deleted)") else { return (path, false) }
        path.removeLast(" (deleted)".count)
        return (path, true)
    }
}
