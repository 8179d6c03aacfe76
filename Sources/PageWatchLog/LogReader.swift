import Foundation
import Glibc
import PageWatchAddressSpace

/// A `pagewatch/2` or `pagewatch/1` log read back into typed values (docs/format.md): the
/// program's `start`, then every tracked process with its own sweeps.
public struct ParsedLog: Sendable {
    /// Where the log came from (a path, or `-` for stdin), for messages.
    public var source: String
    public var pid: Int32
    public var pageSize: UInt64
    public var command: [String]
    public var tracked: [String]
    /// The `start` record's `schema`.
    public var schema: LogSchema
    /// The `start` record's `selected_pages`; nil in logs written before it existed.
    public var selectedPages: UInt64?
    /// The `start` record's `pagewatch_version`: the PageWatch that wrote
    /// the log; nil in logs written before it existed.
    public var pagewatchVersion: String?
    /// Whether the log names its tracked mappings (the `start` record's
    /// `mappings`, written since `pagewatch/2` logs have it); false for older logs.
    public var namesMappings = false
    public var startNs: UInt64
    /// The program first, then each followed process in the order its `fork` record came.
    public var processes: [LoggedProcess]
    /// The program's `end`; nil when the log is incomplete (PageWatch failed mid-run).
    public var end: LoggedEnding?
    /// The number of the last line when it was cut mid-record (no final
    /// newline, not JSON: the disk filled up, PageWatch was killed): it is
    /// left out, the log read up to the line before.
    public var cutLine: Int?

    /// The program's own process.
    public var program: LoggedProcess { processes[0] }

    public func process(_ pid: Int32) -> LoggedProcess? { processes.first { $0.pid == pid } }
}

/// One process of the log: the program, or one `--follow-forks` followed.
public struct LoggedProcess: Sendable {
    public var pid: Int32
    /// The process that forked it; nil for the program.
    public var parent: Int32?
    /// When tracking of it began: the `start` record for the program, its `fork` record otherwise.
    public var beginNs: UInt64
    public var sweeps: [LoggedSweep] = []
    /// Paths of the `exec` records, in order.
    public var execs: [String] = []
    /// The command line of its last `exec` record that has one; nil
    /// before any (the program's is the `start` record's).
    public var command: [String]?
    /// Reasons of `untracked` records: tracking stopped for these.
    public var untracked: [String] = []
    /// The `mappings` of its `start` (the program) and `exec` records: the
    /// whole named set from the sweep at `beforeSweep` (an index of
    /// `sweeps`) on, replacing what was named before; each sweep's own
    /// `mappings` then add to it (`forEachSweepNamed`).
    public var namedSets: [(beforeSweep: Int, mappings: [NamedMapping])] = []
    /// The `backends` of its `start` (the program) and `exec` records
    /// (rule 15): what tracked each class of its memory from the sweep at
    /// `beforeSweep` (an index of `sweeps`) on. Empty in older logs, and for
    /// a followed child before its first exec (tracked on `ptrace`).
    public var backends: [(beforeSweep: Int, backends: [String: String])] = []
    /// `missed` records (`--verify-contents`): the sweep and how many pages
    /// changed with no write seen before it.
    public var missed: [(seq: Int, pages: Int)] = []
    /// Messages of `warning` records, in order.
    public var warnings: [String] = []
    /// Its `end` (the program) or `exit` (a followed process); nil if the log stops before.
    public var ending: LoggedEnding?

    public init(pid: Int32, parent: Int32?, beginNs: UInt64) {
        self.pid = pid
        self.parent = parent
        self.beginNs = beginNs
    }

    /// Every name a record of it gave, a later one over an earlier (an
    /// exec's over the old image's where they overlap): for naming
    /// addresses over the whole log, as a page map does.
    public func allMappingNames() -> MappingNames {
        var names = MappingNames()
        var next = namedSets.startIndex
        for (i, sweep) in sweeps.enumerated() {
            while next < namedSets.endIndex && namedSets[next].beforeSweep <= i {
                names.overlay(namedSets[next].mappings)
                next += 1
            }
            names.overlay(sweep.mappings)
        }
        for set in namedSets[next...] { names.overlay(set.mappings) }
        return names
    }

    /// Each sweep (its index) with the names its pages had, as the records
    /// up to it and its own `mappings` say.
    public func forEachSweepNamed(_ body: (Int, MappingNames) -> Void) {
        var names = MappingNames()
        var next = namedSets.startIndex
        for (i, sweep) in sweeps.enumerated() {
            while next < namedSets.endIndex && namedSets[next].beforeSweep <= i {
                names = MappingNames(namedSets[next].mappings)
                next += 1
            }
            names.overlay(sweep.mappings)
            body(i, names)
        }
    }
}

/// A `sweep` record. `reason` stays a string: readers must accept reasons
/// added later within the schema.
public struct LoggedSweep: Sendable, Equatable {
    public var seq: Int
    public var pid: Int32
    public var reason: String
    public var timeNs: UInt64
    public var dirtyPages: UInt64
    public var faults: Int
    public var ranges: [AddressRange]
    /// nil when the log was written with `--stack-depth 0`.
    public var sites: [WriteSite]?
    /// Added fields (docs/format.md rule 9), their defaults when absent:
    /// false for a sweep that re-armed nothing; its pages left writable;
    /// its pages the previous sweep had reported and left writable.
    public var rearmed = true
    public var leftWritable: UInt64 = 0
    public var reportedAgainPages: UInt64 = 0
    /// Of those, the pages reported because presumption left them writable
    /// (`presumed_pages`); 0 when absent.
    public var presumedPages: UInt64 = 0
    /// `pagewatch/2`: pages new to PageWatch or changed without a store
    /// that read as zeros (`zero_ranges`) or hold their file's contents
    /// (`file_ranges`); empty when absent and in `pagewatch/1` logs, whose
    /// `ranges` hold them.
    public var zeroRanges: [AddressRange] = []
    public var fileRanges: [AddressRange] = []
    /// Tracked mappings new or renamed since the previous record that named
    /// them; empty when absent.
    public var mappings: [NamedMapping] = []
    public var zeroPages: UInt64 { zeroRanges.reduce(0) { $0 + $1.pageCount } }
    public var filePages: UInt64 { fileRanges.reduce(0) { $0 + $1.pageCount } }
    /// The pages written in its interval as far as PageWatch knows: those
    /// reported again are not known to be (the dirty rate counts these).
    public var newPages: UInt64 { dirtyPages - min(dirtyPages, reportedAgainPages) }

    public init(
        seq: Int, pid: Int32, reason: String, timeNs: UInt64, dirtyPages: UInt64, faults: Int,
        ranges: [AddressRange], sites: [WriteSite]?
    ) {
        self.seq = seq
        self.pid = pid
        self.reason = reason
        self.timeNs = timeNs
        self.dirtyPages = dirtyPages
        self.faults = faults
        self.ranges = ranges
        self.sites = sites
    }
}

/// An `end` or `exit` record.
public struct LoggedEnding: Sendable, Equatable {
    public var exitStatus: Int32
    /// The signal that killed it, when one did.
    public var signal: Int32?
    public var sweeps: Int
    public var faults: Int
    public var timeNs: UInt64
}

/// Why a log could not be read: always names the source, and the line when
/// the problem is in one, so that the one-line message points at it.
public struct LogReadError: Error, CustomStringConvertible, Equatable {
    public enum Problem: Equatable, Sendable {
        case unreadable(reason: String)
        case empty
        case notJSON(detail: String)
        case notAnObject
        case notStartFirst(type: String)
        case unsupportedSchema(String)
        case missingField(record: String, field: String)
        case wrongType(record: String, field: String, expected: String)
        case badRange(record: String, value: String)
        case secondStart
    }

    public var source: String
    /// 1-based; nil when the problem is with the file as a whole.
    public var line: Int?
    public var problem: Problem

    public var description: String {
        let place = line.map { "\(source):\($0)" } ?? source
        switch problem {
        case .unreadable(let reason): return "cannot read \(source): \(reason)"
        case .empty: return "\(place): the log is empty (pagewatch writes nothing when the program cannot be started)"
        case .notJSON(let detail): return "\(place): not a JSON object: \(detail)"
        case .notAnObject: return "\(place): a JSON value that is not an object"
        case .notStartFirst(let type):
            return
                "\(place): the first record is '\(type)', not 'start': not a pagewatch log, or its beginning is missing"
        case .unsupportedSchema(let schema):
            return
                "\(place): schema '\(schema)' is not supported: this pagewatch reads \(JSONLines.schemasRead.joined(separator: " and ")) only"
        case let .missingField(record, field): return "\(place): '\(record)' record without '\(field)'"
        case let .wrongType(record, field, expected):
            return "\(place): '\(record)' record: '\(field)' is not \(expected)"
        case let .badRange(record, value): return "\(place): '\(record)' record: bad range \(value)"
        case .secondStart: return "\(place): a second 'start' record (two logs concatenated?)"
        }
    }
}

/// Reads a `pagewatch/2` or `pagewatch/1` log with Foundation's JSONSerialization, one line
/// at a time, into a `ParsedLog`. Follows the versioning rules of
/// docs/format.md: the schema is checked first, unknown record types and
/// fields are skipped, unknown sweep reasons kept as they are.
public enum LogReader {
    /// `path` `-` reads standard input.
    public static func read(path: String) throws(LogReadError) -> ParsedLog {
        let data: Data
        if path == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            data = try readFile(path)
        }
        return try parse(data, source: path == "-" ? "<stdin>" : path)
    }

    /// open(2) and read(2) rather than FileManager or FileHandle: their
    /// errors wrap the errno in NSError text, and the message should be
    /// strerror's one line (`No such file or directory`, `Is a directory`).
    static func readFile(_ path: String) throws(LogReadError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw LogReadError(source: path, line: nil, problem: .unreadable(reason: String(cString: strerror(errno))))
        }
        defer { close(fd) }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw LogReadError(
                    source: path, line: nil, problem: .unreadable(reason: String(cString: strerror(errno))))
            }
            if n == 0 { return data }
            data.append(contentsOf: buffer[0..<n])
        }
    }

    public static func parse(_ data: Data, source: String) throws(LogReadError) -> ParsedLog {
        var log: ParsedLog?
        var lineNumber = 0
        var cutLine: Int?
        let all = lines(data)
        let unterminated = data.last.map { $0 != UInt8(ascii: "\n") } ?? false
        for line in all {
            lineNumber += 1
            let record: Record
            do {
                record = try Record(parsing: line, source: source, line: lineNumber)
            } catch let error where unterminated && lineNumber == all.count && log != nil {
                guard case .notJSON = error.problem else { throw error }
                cutLine = lineNumber
                break
            }
            if var current = log {
                try record.apply(to: &current)
                log = current
            } else {
                log = try record.startLog()
            }
        }
        guard var log else { throw LogReadError(source: source, line: nil, problem: .empty) }
        log.cutLine = cutLine
        return log
    }
}

extension LogReader {
    /// The lines of `data` without their `\n`; no empty last line after a
    /// final `\n`. memchr rather than Data.firstIndex: logs run to tens of
    /// megabytes, and the generic search goes byte by byte through Data's
    /// indexing in an unoptimized build.
    static func lines(_ data: Data) -> [Data] {
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) -> [Data] in
            guard let base = bytes.baseAddress else { return [] }
            var out: [Data] = []
            var start = 0
            while start < bytes.count {
                let end =
                    memchr(base + start, Int32(UInt8(ascii: "\n")), bytes.count - start)
                    .map { $0 - UnsafeMutableRawPointer(mutating: base) } ?? bytes.count
                out.append(Data(bytes: base + start, count: end - start))
                start = end + 1
            }
            return out
        }
    }
}

/// One line's object, with typed accessors that fail with the line's context.
struct Record {
    let fields: [String: Any]
    let type: String
    let source: String
    let line: Int

    init(parsing bytes: Data, source: String, line: Int) throws(LogReadError) {
        self.source = source
        self.line = line
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: bytes)
        } catch {
            let text = String(decoding: bytes.prefix(60), as: UTF8.self)
            throw LogReadError(
                source: source, line: line,
                problem: .notJSON(detail: bytes.isEmpty ? "empty line" : "'\(text)\(bytes.count > 60 ? "…" : "")'"))
        }
        guard let fields = object as? [String: Any] else {
            throw LogReadError(source: source, line: line, problem: .notAnObject)
        }
        self.fields = fields
        guard let type = fields["type"] as? String else {
            throw LogReadError(source: source, line: line, problem: .missingField(record: "?", field: "type"))
        }
        self.type = type
    }

    func fail(_ problem: LogReadError.Problem) -> LogReadError {
        LogReadError(source: source, line: line, problem: problem)
    }

    /// A JSON integer, exactly: time_ns is about 1.7e18, beyond what a
    /// Double holds, so it must never pass through one. JSONSerialization
    /// keeps integers as NSNumbers of an integer type (`i`, `q`, `Q` above
    /// Int64.max); a JSON `true` is an NSNumber too, of type `c`, and is
    /// refused (on Linux `is Bool` is also true for the integers 0 and 1).
    func integer<T: FixedWidthInteger>(_ name: String, as: T.Type = T.self) throws(LogReadError) -> T {
        guard let value = fields[name] else { throw fail(.missingField(record: type, field: name)) }
        guard let number = value as? NSNumber, !Self.isBoolean(number) else {
            throw fail(.wrongType(record: type, field: name, expected: "an integer"))
        }
        let kind = String(cString: number.objCType)
        let exact: T?
        switch kind {
        case "Q", "L", "I", "S", "C": exact = T(exactly: number.uint64Value)
        case "q", "l", "i", "s": exact = T(exactly: number.int64Value)
        default:
            // An integral double (1e3) is accepted below 2^53, where it is exact.
            let d = number.doubleValue
            exact = d.rounded() == d && abs(d) < 9_007_199_254_740_992 ? T(exactly: d) : nil
        }
        guard let exact else { throw fail(.wrongType(record: type, field: name, expected: "an integer in range")) }
        return exact
    }

    static func isBoolean(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

    func optionalInteger<T: FixedWidthInteger>(_ name: String, as: T.Type = T.self) throws(LogReadError) -> T? {
        fields[name] == nil ? nil : try integer(name, as: T.self)
    }

    func string(_ name: String) throws(LogReadError) -> String {
        guard let value = fields[name] else { throw fail(.missingField(record: type, field: name)) }
        guard let s = value as? String else { throw fail(.wrongType(record: type, field: name, expected: "a string")) }
        return s
    }

    func optionalString(_ name: String) throws(LogReadError) -> String? {
        fields[name] == nil ? nil : try string(name)
    }

    func strings(_ name: String) throws(LogReadError) -> [String] {
        guard let value = fields[name] else { throw fail(.missingField(record: type, field: name)) }
        guard let items = value as? [Any], let s = items as? [String] else {
            throw fail(.wrongType(record: type, field: name, expected: "an array of strings"))
        }
        return s
    }

    /// `[["0xSTART","0xEND"], ...]`, half-open.
    func ranges(_ value: Any?, field: String) throws(LogReadError) -> [AddressRange] {
        guard let value else { throw fail(.missingField(record: type, field: field)) }
        guard let pairs = value as? [Any] else {
            throw fail(.wrongType(record: type, field: field, expected: "an array of ranges"))
        }
        var out: [AddressRange] = []
        out.reserveCapacity(pairs.count)
        for pair in pairs {
            guard let ends = pair as? [String], ends.count == 2,
                let start = Self.hex(ends[0]), let end = Self.hex(ends[1]), start <= end
            else {
                throw fail(.badRange(record: type, value: "\(pair)"))
            }
            out.append(AddressRange(start, end))
        }
        return out
    }

    /// A `backends` object (rule 15): class of memory to backend, both strings.
    func backends(_ value: Any) throws(LogReadError) -> [String: String] {
        guard let object = value as? [String: Any] else {
            throw fail(.wrongType(record: type, field: "backends", expected: "an object"))
        }
        var names: [String: String] = [:]
        for (key, name) in object {
            guard let name = name as? String else {
                throw fail(.wrongType(record: type, field: "backends", expected: "an object of strings"))
            }
            names[key] = name
        }
        return names
    }

    /// `[{"range":["0xSTART","0xEND"],"name":"..."}, ...]`.
    func mappings(_ value: Any) throws(LogReadError) -> [NamedMapping] {
        guard let items = value as? [Any] else {
            throw fail(.wrongType(record: type, field: "mappings", expected: "an array of objects"))
        }
        var out: [NamedMapping] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard let m = item as? [String: Any] else {
                throw fail(.wrongType(record: type, field: "mappings", expected: "an array of objects"))
            }
            let entry = Record(fields: m, type: "\(type) mapping", source: source, line: line)
            guard let pair = m["range"] else { throw entry.fail(.missingField(record: entry.type, field: "range")) }
            guard let range = try entry.ranges([pair], field: "range").first else { continue }
            out.append(NamedMapping(range: range, name: try entry.string("name")))
        }
        return out
    }

    static func hex(_ s: String) -> UInt64? {
        guard s.hasPrefix("0x") else { return nil }
        return UInt64(s.dropFirst(2), radix: 16)
    }

    func frame(_ value: Any) throws(LogReadError) -> Frame {
        guard let f = value as? [String: Any] else {
            throw fail(.wrongType(record: type, field: "frames", expected: "an array of objects"))
        }
        // Pseudo-frames (`[kernel] read`, `[unseen]`) have no ip: 0, as in the engine's Frame.
        let ip = (f["ip"] as? String).flatMap(Self.hex) ?? 0
        let offset = (f["offset"] as? String).flatMap(Self.hex)
        let line = (f["line"] as? NSNumber).flatMap { Self.isBoolean($0) ? nil : Int(exactly: $0.int64Value) }
        return Frame(
            ip: ip, module: f["module"] as? String, offset: offset, function: f["function"] as? String,
            file: f["file"] as? String, line: line,
            jit: (f["jit"] as? NSNumber).map { Self.isBoolean($0) && $0.boolValue } ?? false,
            foundByFramePointer: f["found_by"] as? String == "fp")
    }

    func site(_ value: Any) throws(LogReadError) -> WriteSite {
        guard let s = value as? [String: Any] else {
            throw fail(.wrongType(record: type, field: "sites", expected: "an array of objects"))
        }
        let site = Record(fields: s, type: "sweep site", source: source, line: line)
        var frames: [Frame] = []
        for f in s["frames"] as? [Any] ?? [] { frames.append(try frame(f)) }
        return WriteSite(
            pages: try site.integer("pages"), faults: try site.integer("faults"),
            ranges: try site.ranges(s["ranges"], field: "ranges"), frames: frames)
    }

    private init(fields: [String: Any], type: String, source: String, line: Int) {
        self.fields = fields
        self.type = type
        self.source = source
        self.line = line
    }

    func ending() throws(LogReadError) -> LoggedEnding {
        LoggedEnding(
            exitStatus: try integer("exit_status"), signal: try optionalInteger("signal"),
            sweeps: try integer("sweeps"), faults: try integer("faults"), timeNs: try integer("time_ns"))
    }

    /// The first line: must be `start`, and of a schema this reader knows.
    func startLog() throws(LogReadError) -> ParsedLog {
        guard type == "start" else { throw fail(.notStartFirst(type: type)) }
        // The schema before anything else: another schema may have other fields.
        let name = try string("schema")
        guard let schema = LogSchema(name: name), name == schema.name else { throw fail(.unsupportedSchema(name)) }
        let pid: Int32 = try integer("pid")
        let startNs: UInt64 = try integer("time_ns")
        var program = LoggedProcess(pid: pid, parent: nil, beginNs: startNs)
        if let named = fields["mappings"] { program.namedSets.append((0, try mappings(named))) }
        if let names = fields["backends"] { program.backends.append((0, try backends(names))) }
        return ParsedLog(
            source: source, pid: pid, pageSize: try integer("page_size"), command: try strings("command"),
            tracked: try strings("tracked"), schema: schema, selectedPages: try optionalInteger("selected_pages"),
            pagewatchVersion: try optionalString("pagewatch_version"), namesMappings: fields["mappings"] != nil,
            startNs: startNs, processes: [program], end: nil)
    }

    /// Any later line. Records of a pid never announced (no `fork` seen)
    /// still get a process of their own rather than being dropped.
    func apply(to log: inout ParsedLog) throws(LogReadError) {
        func index(_ pid: Int32, _ beginNs: UInt64) -> Int {
            if let i = log.processes.firstIndex(where: { $0.pid == pid }) { return i }
            log.processes.append(LoggedProcess(pid: pid, parent: nil, beginNs: beginNs))
            return log.processes.count - 1
        }
        switch type {
        case "start":
            throw fail(.secondStart)
        case "sweep":
            var sites: [WriteSite]?
            if let value = fields["sites"] {
                guard let items = value as? [Any] else {
                    throw fail(.wrongType(record: type, field: "sites", expected: "an array"))
                }
                var parsed: [WriteSite] = []
                parsed.reserveCapacity(items.count)
                for item in items { parsed.append(try site(item)) }
                sites = parsed
            }
            var sweep = LoggedSweep(
                seq: try integer("seq"), pid: try integer("pid"), reason: try string("reason"),
                timeNs: try integer("time_ns"), dirtyPages: try integer("dirty_pages"),
                faults: try integer("faults"), ranges: try ranges(fields["ranges"], field: "ranges"),
                sites: sites)
            if let rearmed = fields["rearmed"] {
                guard let flag = rearmed as? Bool else {
                    throw fail(.wrongType(record: type, field: "rearmed", expected: "a boolean"))
                }
                sweep.rearmed = flag
            }
            sweep.leftWritable = try optionalInteger("left_writable") ?? 0
            sweep.reportedAgainPages = try optionalInteger("reported_again_pages") ?? 0
            sweep.presumedPages = try optionalInteger("presumed_pages") ?? 0
            if let zero = fields["zero_ranges"] { sweep.zeroRanges = try ranges(zero, field: "zero_ranges") }
            if let file = fields["file_ranges"] { sweep.fileRanges = try ranges(file, field: "file_ranges") }
            if let named = fields["mappings"] { sweep.mappings = try mappings(named) }
            log.processes[index(sweep.pid, log.startNs)].sweeps.append(sweep)
        case "exec":
            let i = index(try integer("pid"), log.startNs)
            log.processes[i].execs.append(try string("path"))
            if let named = fields["mappings"] {
                log.processes[i].namedSets.append((log.processes[i].sweeps.count, try mappings(named)))
            }
            if let names = fields["backends"] {
                log.processes[i].backends.append((log.processes[i].sweeps.count, try backends(names)))
            }
            if let words = fields["command"] as? [Any] {
                let command = words.compactMap { $0 as? String }
                if !command.isEmpty { log.processes[i].command = command }
            }
        case "fork":
            let pid: Int32 = try integer("pid")
            let i = index(pid, try integer("time_ns"))
            log.processes[i].parent = try integer("parent")
            log.processes[i].beginNs = try integer("time_ns")
        case "untracked":
            let i = index(try integer("pid"), log.startNs)
            log.processes[i].untracked.append(try string("reason"))
        case "warning":
            let i = index(try integer("pid"), log.startNs)
            log.processes[i].warnings.append(try string("message"))
        case "missed":
            let i = index(try integer("pid"), log.startNs)
            log.processes[i].missed.append((try integer("seq"), try integer("pages")))
        case "exit":
            let i = index(try integer("pid"), log.startNs)
            log.processes[i].ending = try ending()
        case "end":
            let e = try ending()
            log.end = e
            log.processes[0].ending = e
        default:
            break  // A record type added later within the schema: skipped, as docs/format.md requires.
        }
    }
}
