import PageWatchAddressSpace

/// Encodes log records as JSON Lines, schema `pagewatch/2` or `pagewatch/1`
/// (docs/format.md; the `start` record names it). Written by hand so the
/// field order is stable and the encoding cheap.
public enum JSONLines {
    /// The schemas `pagewatch report` reads, newest first.
    public static let schemasRead = LogSchema.allCases.reversed().map(\.name)
    // `start` also carries `PageWatchVersion.current`: like the schema, a
    // property of the writer, not of what the engine saw.

    /// The record's line, newline included: what a log holds.
    public static func line(_ record: LogRecord) -> String {
        if case let .sweep(s) = record { return sweep(s, newline: true) }
        return encode(record) + "\n"
    }

    public static func encode(_ record: LogRecord) -> String {
        switch record {
        case let .start(pid, pageSize, command, tracked, timeNs, selectedPages, schema, mappings, backends):
            return "{\"type\":\"start\",\"schema\":\"\(schema.name)\",\"pid\":\(pid),\"page_size\":\(pageSize),"
                + "\"command\":\(array(command)),\"tracked\":\(array(tracked)),\"time_ns\":\(timeNs),"
                + "\"selected_pages\":\(selectedPages),\"pagewatch_version\":\(string(PageWatchVersion.current))"
                + (mappings.map { ",\"mappings\":" + self.mappings($0) } ?? "")
                + (backends.map { ",\"backends\":" + self.backends($0) } ?? "") + "}"
        case let .exec(pid, path, command, timeNs, mappings, backends):
            return "{\"type\":\"exec\",\"pid\":\(pid),\"path\":\(string(path)),\"time_ns\":\(timeNs)"
                + (command.isEmpty ? "" : ",\"command\":\(array(command))")
                + (mappings.map { ",\"mappings\":" + self.mappings($0) } ?? "")
                + (backends.map { ",\"backends\":" + self.backends($0) } ?? "") + "}"
        case let .sweep(s):
            return sweep(s, newline: false)
        case let .fork(pid, parent, timeNs):
            return "{\"type\":\"fork\",\"pid\":\(pid),\"parent\":\(parent),\"time_ns\":\(timeNs)}"
        case let .attach(pid, threads, timeNs):
            return "{\"type\":\"attach\",\"pid\":\(pid),\"threads\":\(threads),\"time_ns\":\(timeNs)}"
        case let .detach(pid, sweeps, faults, timeNs):
            return
                "{\"type\":\"detach\",\"pid\":\(pid),\"sweeps\":\(sweeps),\"faults\":\(faults),\"time_ns\":\(timeNs)}"
        case let .missed(pid, seq, pages, ranges, timeNs):
            var out = Array("{\"type\":\"missed\",\"pid\":\(pid),\"seq\":\(seq),\"pages\":\(pages),\"ranges\":".utf8)
            appendRanges(ranges, to: &out)
            out += ",\"time_ns\":\(timeNs)}".utf8
            return String(decoding: out, as: UTF8.self)
        case let .warning(pid, message, timeNs):
            return "{\"type\":\"warning\",\"pid\":\(pid),\"message\":\(string(message)),\"time_ns\":\(timeNs)}"
        case let .untracked(pid, reason, timeNs):
            return "{\"type\":\"untracked\",\"pid\":\(pid),\"reason\":\(string(reason)),\"time_ns\":\(timeNs)}"
        case let .exit(pid, end, sweeps, faults, timeNs):
            return ending("exit", pid, end, sweeps, faults, timeNs)
        case let .end(pid, end, sweeps, faults, timeNs):
            return ending("end", pid, end, sweeps, faults, timeNs)
        }
    }

    /// `end` (the program) and `exit` (a followed process) share their fields.
    static func ending(_ type: String, _ pid: Int32, _ end: ProgramEnd, _ sweeps: Int, _ faults: Int, _ timeNs: UInt64)
        -> String
    {
        var signal = ""
        if case .killed(let s) = end { signal = ",\"signal\":\(s)" }
        return "{\"type\":\"\(type)\",\"pid\":\(pid),\"exit_status\":\(end.shellStatus)\(signal),"
            + "\"sweeps\":\(sweeps),\"faults\":\(faults),\"time_ns\":\(timeNs)}"
    }

    /// A sweep lists every dirty range, and each site's: megabytes for
    /// scattered pages, so it is built as bytes in one buffer (interpolating
    /// two hex Strings a range cost about a microsecond).
    static func sweep(_ s: SweepRecord, newline: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(160 + 40 * s.ranges.count)
        out += "{\"type\":\"sweep\",\"seq\":\(s.seq),\"pid\":\(s.pid),\"reason\":\"\(s.reason.rawValue)\",".utf8
        out += "\"time_ns\":\(s.timeNs),\"dirty_pages\":\(s.dirtyPages),\"faults\":\(s.faults),\"ranges\":".utf8
        appendRanges(s.ranges, to: &out)
        if let sites = s.sites {
            out += ",\"sites\":[".utf8
            for (i, site) in sites.enumerated() {
                // `{"pages":N,"faults":F,"frames":[...],"ranges":[...]}`, frames innermost first.
                out += "\(i == 0 ? "" : ","){\"pages\":\(site.pages),\"faults\":\(site.faults),\"frames\":[".utf8
                out += site.frames.map(frame).joined(separator: ",").utf8
                out += "],\"ranges\":".utf8
                appendRanges(site.ranges, to: &out)
                out.append(UInt8(ascii: "}"))
            }
            out.append(UInt8(ascii: "]"))
        }
        // Added fields (format rule 9), each only when it says something.
        if !s.rearmed { out += ",\"rearmed\":false".utf8 }
        if s.leftWritable > 0 { out += ",\"left_writable\":\(s.leftWritable)".utf8 }
        appendCounted("reported_again_pages", "reported_again", s.reportedAgain, to: &out)
        appendCounted("presumed_pages", "presumed", s.presumed, to: &out)
        // pagewatch/2 (format rule 12), each only when it says something.
        appendCounted("zero_pages", "zero_ranges", s.zeroRanges, to: &out)
        appendCounted("file_pages", "file_ranges", s.fileRanges, to: &out)
        // Added within pagewatch/2: only when the sweep found tracked memory not named before.
        if !s.mappings.isEmpty { out += ",\"mappings\":\(mappings(s.mappings))".utf8 }
        out.append(UInt8(ascii: "}"))
        if newline { out.append(UInt8(ascii: "\n")) }
        return String(decoding: out, as: UTF8.self)
    }

    /// A frame's known fields only; a pseudo-frame (`[kernel] read`) has no `ip`.
    static func frame(_ f: Frame) -> String {
        var fields: [String] = []
        if f.ip != 0 { fields.append("\"ip\":\"0x\(String(f.ip, radix: 16))\"") }
        if let v = f.function { fields.append("\"function\":" + string(v)) }
        if let v = f.module { fields.append("\"module\":" + string(v)) }
        if let v = f.offset { fields.append("\"offset\":\"0x\(String(v, radix: 16))\"") }
        if let v = f.file { fields.append("\"file\":" + string(v)) }
        if let v = f.line { fields.append("\"line\":\(v)") }
        // Added within pagewatch/2 (format rule 14), each only when true.
        if f.jit { fields.append("\"jit\":true") }
        if f.foundByFramePointer { fields.append("\"found_by\":\"fp\"") }
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// `,"COUNT":N,"FIELD":[...]` for a field absent when empty.
    static func appendCounted(_ count: String, _ field: String, _ rs: [AddressRange], to out: inout [UInt8]) {
        guard !rs.isEmpty else { return }
        let pages = rs.reduce(UInt64(0)) { $0 + $1.pageCount }
        out += ",\"\(count)\":\(pages),\"\(field)\":".utf8
        appendRanges(rs, to: &out)
    }

    /// `[["0x1000","0x3000"],...]`, as `RemoteAddress.hex` writes addresses.
    static func appendRanges(_ rs: [AddressRange], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "["))
        for (i, r) in rs.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += #"[""#.utf8
            appendHex(r.start.value, to: &out)
            out += #"",""#.utf8
            appendHex(r.end.value, to: &out)
            out += #""]"#.utf8
        }
        out.append(UInt8(ascii: "]"))
    }

    /// `0x` and the lowercase hex digits, no leading zeros.
    static func appendHex(_ v: UInt64, to out: inout [UInt8]) {
        out += "0x".utf8
        let digits = max(1, (64 - v.leadingZeroBitCount + 3) / 4)
        for d in stride(from: digits - 1, through: 0, by: -1) {
            let nibble = UInt8((v >> UInt64(4 * d)) & 0xf)
            out.append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10)
        }
    }

    /// `[{"range":["0x1000","0x3000"],"name":"[heap]"},...]`.
    static func mappings(_ ms: [NamedMapping]) -> String {
        var out: [UInt8] = [UInt8(ascii: "[")]
        for (i, m) in ms.enumerated() {
            out += (i == 0 ? "{\"range\":[\"" : ",{\"range\":[\"").utf8
            appendHex(m.range.start.value, to: &out)
            out += #"",""#.utf8
            appendHex(m.range.end.value, to: &out)
            out += "\"],\"name\":\(string(m.name))}".utf8
        }
        out.append(UInt8(ascii: "]"))
        return String(decoding: out, as: UTF8.self)
    }

    /// `start`'s and `exec`'s `backends` (rule 15): an object, keys sorted.
    static func backends(_ names: [String: String]) -> String {
        "{" + names.keys.sorted().map { string($0) + ":" + string(names[$0]!) }.joined(separator: ",") + "}"
    }

    static func array(_ items: [String]) -> String { "[" + items.map(string).joined(separator: ",") + "]" }

    /// A JSON string literal (RFC 8259 escaping; other bytes pass through as UTF-8).
    public static func string(_ s: String) -> String {
        // Most strings (paths, function names) need no escaping: copy them whole.
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            return "\"" + s + "\""
        }
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let h = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
