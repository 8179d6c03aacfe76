import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchEngine

/// Encodes log records as JSON Lines, schema `pagewatch/1` (docs/format.md).
/// Written by hand so the field order is stable and the encoding cheap.
public enum JSONLines {
    public static let schema = "pagewatch/1"

    public static func encode(_ record: LogRecord) -> String {
        switch record {
        case let .start(pid, pageSize, command, tracked, timeNs):
            return "{\"type\":\"start\",\"schema\":\"\(schema)\",\"pid\":\(pid),\"page_size\":\(pageSize),"
                + "\"command\":\(array(command)),\"tracked\":\(array(tracked)),\"time_ns\":\(timeNs)}"
        case let .exec(pid, path, timeNs):
            return "{\"type\":\"exec\",\"pid\":\(pid),\"path\":\(string(path)),\"time_ns\":\(timeNs)}"
        case let .sweep(s):
            let sites = s.sites.map { ",\"sites\":[" + $0.map(site).joined(separator: ",") + "]" } ?? ""
            return "{\"type\":\"sweep\",\"seq\":\(s.seq),\"pid\":\(s.pid),\"reason\":\"\(s.reason.rawValue)\","
                + "\"time_ns\":\(s.timeNs),\"dirty_pages\":\(s.dirtyPages),\"faults\":\(s.faults),\"ranges\":\(ranges(s.ranges))\(sites)}"
        case let .fork(pid, parent, timeNs):
            return "{\"type\":\"fork\",\"pid\":\(pid),\"parent\":\(parent),\"time_ns\":\(timeNs)}"
        case let .attach(pid, threads, timeNs):
            return "{\"type\":\"attach\",\"pid\":\(pid),\"threads\":\(threads),\"time_ns\":\(timeNs)}"
        case let .detach(pid, sweeps, faults, timeNs):
            return "{\"type\":\"detach\",\"pid\":\(pid),\"sweeps\":\(sweeps),\"faults\":\(faults),\"time_ns\":\(timeNs)}"
        case let .untracked(pid, reason, timeNs):
            return "{\"type\":\"untracked\",\"pid\":\(pid),\"reason\":\(string(reason)),\"time_ns\":\(timeNs)}"
        case let .exit(pid, end, sweeps, faults, timeNs):
            return ending("exit", pid, end, sweeps, faults, timeNs)
        case let .end(pid, end, sweeps, faults, timeNs):
            return ending("end", pid, end, sweeps, faults, timeNs)
        }
    }

    /// `end` (the program) and `exit` (a followed process) share their fields.
    static func ending(_ type: String, _ pid: Int32, _ end: ProgramEnd, _ sweeps: Int, _ faults: Int, _ timeNs: UInt64) -> String {
        var signal = ""
        if case .killed(let s) = end { signal = ",\"signal\":\(s)" }
        return "{\"type\":\"\(type)\",\"pid\":\(pid),\"exit_status\":\(end.shellStatus)\(signal),"
            + "\"sweeps\":\(sweeps),\"faults\":\(faults),\"time_ns\":\(timeNs)}"
    }

    /// `{"pages":N,"faults":F,"frames":[...]}`, frames innermost first.
    static func site(_ s: WriteSite) -> String {
        "{\"pages\":\(s.pages),\"faults\":\(s.faults),\"frames\":[" + s.frames.map(frame).joined(separator: ",") + "],"
            + "\"ranges\":\(ranges(s.ranges))}"
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
        return "{" + fields.joined(separator: ",") + "}"
    }

    static func ranges(_ rs: [AddressRange]) -> String {
        "[" + rs.map { "[\"\($0.start.hex)\",\"\($0.end.hex)\"]" }.joined(separator: ",") + "]"
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
