import Foundation
import PageWatchAddressSpace

/// The memory image `--dump DIR` writes (docs/image-format.md): `DIR/image.json`,
/// and per process `DIR/PID/sweep-N.json` (the index) with `DIR/PID/sweep-N.pages`
/// (the raw pages). Sweep 1 is a full image of the tracked memory; every later
/// sweep an increment.
public enum ImageSchema {
    public static let name = "pagewatch-image/1"
}

/// `DIR/image.json`: what the image is of.
public struct ImageManifest: Codable, Equatable, Sendable {
    public var schema: String
    /// The program's pid (followed children have directories of their own).
    public var pid: Int32
    public var pageSize: UInt64
    public var command: [String]
    public var pagewatchVersion: String

    public init(pid: Int32, pageSize: UInt64, command: [String], pagewatchVersion: String) {
        schema = ImageSchema.name
        self.pid = pid
        self.pageSize = pageSize
        self.command = command
        self.pagewatchVersion = pagewatchVersion
    }

    enum CodingKeys: String, CodingKey {
        case schema, pid, command
        case pageSize = "page_size"
        case pagewatchVersion = "pagewatch_version"
    }
}

/// A range as the log writes one: `["0x7f00", "0x7f0000"]`, half-open.
public struct ImageRange: Codable, Equatable, Sendable {
    public var range: AddressRange

    public init(_ range: AddressRange) { self.range = range }

    public init(from decoder: Decoder) throws {
        var c = try decoder.unkeyedContainer()
        let start = try c.decode(String.self), end = try c.decode(String.self)
        guard let s = Self.hex(start), let e = Self.hex(end), s <= e, s % Page.size == 0, e % Page.size == 0 else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a page range: \(start)-\(end)")
        }
        range = AddressRange(s, e)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(range.start.hex)
        try c.encode(range.end.hex)
    }

    static func hex(_ s: String) -> UInt64? { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : nil }
}

/// One range of a sweep's increment.
public struct IndexedRange: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable {
        /// Its bytes are in the pages file, at `offset`.
        case data
        /// A private file mapping's pages that still hold the file's
        /// contents; their bytes are in the pages file as well.
        case file
        /// Pages that read as zeros: no bytes stored.
        case zero
        /// Pages that left the address space while the sweep read them (a
        /// thread unmapped them): not part of the image from this sweep on.
        case gone
    }

    public var range: ImageRange
    public var kind: Kind
    /// Where its bytes start in the pages file (`data`, `file`).
    public var offset: UInt64?
    /// XXH64 of its bytes (`data`, `file`), as 16 hex digits.
    public var xxh64: String?
    /// The mapping it belongs to: its path, `[heap]`, `[stack]`, or `[anon]`.
    public var mapping: String

    public init(range: AddressRange, kind: Kind, offset: UInt64? = nil, xxh64: UInt64? = nil, mapping: String) {
        self.range = ImageRange(range)
        self.kind = kind
        self.offset = offset
        self.xxh64 = xxh64.map { Self.hex16($0) }
        self.mapping = mapping
    }

    static func hex16(_ v: UInt64) -> String {
        let digits = String(v, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    public var storesBytes: Bool { kind == .data || kind == .file }
}

/// `DIR/PID/sweep-N.json`: one sweep of one process. Written after its pages
/// file is complete, under a temporary name renamed into place: an index
/// that exists is whole, and its pages file too.
public struct SweepIndex: Codable, Equatable, Sendable {
    public var schema: String
    public var seq: Int
    public var pid: Int32
    public var reason: String
    public var timeNs: UInt64
    /// The pages tracked at this sweep: the image at this sweep is exactly these.
    public var tracked: [ImageRange]
    /// This sweep's increment, sorted by address, disjoint.
    public var ranges: [IndexedRange]
    /// Pages tracked at the sweep before and no longer: unmapped, or no
    /// longer tracked.
    public var gone: [ImageRange]
    /// The pages file, beside the index, and its size.
    public var pagesFile: String
    public var pagesBytes: UInt64

    public init(
        seq: Int, pid: Int32, reason: String, timeNs: UInt64, tracked: [AddressRange], ranges: [IndexedRange],
        gone: [AddressRange], pagesFile: String, pagesBytes: UInt64
    ) {
        schema = ImageSchema.name
        self.seq = seq
        self.pid = pid
        self.reason = reason
        self.timeNs = timeNs
        self.tracked = tracked.map(ImageRange.init)
        self.ranges = ranges
        self.gone = gone.map(ImageRange.init)
        self.pagesFile = pagesFile
        self.pagesBytes = pagesBytes
    }

    enum CodingKeys: String, CodingKey {
        case schema, seq, pid, reason, tracked, ranges, gone
        case timeNs = "time_ns"
        case pagesFile = "pages_file"
        case pagesBytes = "pages_bytes"
    }

    public static func fileName(seq: Int) -> String { "sweep-\(seq).json" }
    public static func pagesFileName(seq: Int) -> String { "sweep-\(seq).pages" }
}

/// What went wrong with an image, with the file and the reason.
public enum ImageError: Error, Equatable, CustomStringConvertible {
    /// A file or directory could not be created or written (disk full, permissions).
    case write(path: String, errno: Int32)
    /// A file could not be read.
    case read(path: String, errno: Int32)
    /// A file is not what the format says.
    case malformed(path: String, reason: String)
    /// `--dump DIR` names a directory that already holds an image.
    case exists(path: String)
    /// The image has no such process or sweep.
    case noSuch(what: String, path: String)
    /// The image does not hold this page at that sweep.
    case notHeld(page: UInt64, seq: Int, pid: Int32)
    /// A pages file does not match its index (`verify`'s first finding).
    case damaged(problem: String)

    public var description: String {
        switch self {
        case let .write(path, e): return "cannot write \(path): \(String(cString: strerror(e)))"
        case let .read(path, e): return "cannot read \(path): \(String(cString: strerror(e)))"
        case let .malformed(path, reason): return "\(path): \(reason)"
        case let .exists(path):
            return "\(path) already holds a memory image (image.json); remove it or name another directory"
        case let .noSuch(what, path): return "\(path) has no \(what)"
        case let .damaged(problem): return "\(problem) (pagewatch image verify lists every problem)"
        case let .notHeld(page, seq, pid):
            return "the image does not hold page 0x\(String(page, radix: 16)) of pid \(pid) at sweep \(seq)"
        }
    }
}
