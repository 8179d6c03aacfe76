import PageWatchLog

/// `pagewatch report --format pprof`: the writers as a gzipped
/// `profile.proto` (github.com/google/pprof, proto/profile.proto), which
/// `go tool pprof`, speedscope and continuous-profiling back ends read. One
/// sample per call stack, its values the pages it dirtied and its write
/// faults; locations innermost first, as pprof wants them.
public enum PprofReport {
    public static func render(_ report: ProcessReport) -> [UInt8] {
        var profile = ProfileBuilder()
        let pages = profile.string("pages"), faults = profile.string("faults"), count = profile.string("count")
        var message = ProtoWriter()
        message.message(1, valueType(pages, count))
        message.message(1, valueType(faults, count))
        var samples: [ProtoWriter] = []
        for w in report.writers {
            let ids =
                w.frames.isEmpty
                ? [profile.location(Frame(ip: 0, function: "[no frames]"))] : w.frames.map { profile.location($0) }
            var sample = ProtoWriter()
            sample.packed(1, ids)
            sample.packed(2, [w.pages, UInt64(w.faults)])
            samples.append(sample)
        }
        for s in samples { message.message(2, s) }
        for (id, key) in profile.mappings.enumerated() {
            var m = ProtoWriter()
            m.varint(1, UInt64(id + 1))
            m.varint(5, UInt64(profile.string(key)))
            m.varint(7, 1)  // has_functions: names come with the locations
            message.message(3, m)
        }
        for l in profile.locations { message.message(4, l) }
        for f in profile.functions { message.message(5, f) }
        // period_type and period: one page per unit.
        let pageType = valueType(profile.string("space"), profile.string("pages"))
        for s in profile.strings { message.bytes(6, Array(s.utf8)) }
        message.message(11, pageType)
        message.varint(12, 1)
        message.varint(14, UInt64(pages))  // default_sample_type: pages
        return Gzip.stored(message.bytes)
    }

    static func valueType(_ type: Int, _ unit: Int) -> ProtoWriter {
        var v = ProtoWriter()
        v.varint(1, UInt64(type))
        v.varint(2, UInt64(unit))
        return v
    }
}

/// The tables a profile refers into: strings, functions, locations, mappings.
struct ProfileBuilder {
    /// string_table[0] is "" by the format's rule.
    var strings: [String] = [""]
    var stringIndex: [String: Int] = ["": 0]
    var functions: [ProtoWriter] = []
    var functionIndex: [String: UInt64] = [:]
    var locations: [ProtoWriter] = []
    var locationIndex: [FrameKey: UInt64] = [:]
    var mappings: [String] = []
    var mappingIndex: [String: UInt64] = [:]

    mutating func string(_ s: String) -> Int {
        if let i = stringIndex[s] { return i }
        strings.append(s)
        stringIndex[s] = strings.count - 1
        return strings.count - 1
    }

    mutating func function(_ name: String, file: String?) -> UInt64 {
        let key = name + "\u{0}" + (file ?? "")
        if let id = functionIndex[key] { return id }
        let id = UInt64(functions.count + 1)
        var f = ProtoWriter()
        f.varint(1, id)
        f.varint(2, UInt64(string(name)))
        f.varint(3, UInt64(string(name)))
        if let file { f.varint(4, UInt64(string(file))) }
        functions.append(f)
        functionIndex[key] = id
        return id
    }

    mutating func location(_ frame: Frame) -> UInt64 {
        let key = FrameKey(frame)
        if let id = locationIndex[key] { return id }
        let id = UInt64(locations.count + 1)
        var l = ProtoWriter()
        l.varint(1, id)
        if let module = frame.module {
            if mappingIndex[module] == nil {
                mappings.append(module)
                mappingIndex[module] = UInt64(mappings.count)
            }
            l.varint(2, mappingIndex[module]!)
        }
        if frame.ip != 0 { l.varint(3, frame.ip) }
        var line = ProtoWriter()
        line.varint(1, function(FrameNaming.name(frame), file: frame.file))
        if let n = frame.line { line.varint(2, UInt64(n)) }
        l.message(4, line)
        locations.append(l)
        locationIndex[key] = id
        return id
    }
}

/// Protocol buffers' wire format, the few kinds a profile uses.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func rawVarint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func varint(_ field: Int, _ v: UInt64) {
        rawVarint(UInt64(field) << 3)
        rawVarint(v)
    }

    mutating func bytes(_ field: Int, _ data: [UInt8]) {
        rawVarint(UInt64(field) << 3 | 2)
        rawVarint(UInt64(data.count))
        bytes += data
    }

    mutating func message(_ field: Int, _ m: ProtoWriter) { bytes(field, m.bytes) }

    mutating func packed(_ field: Int, _ values: [UInt64]) {
        var inner = ProtoWriter()
        for v in values { inner.rawVarint(v) }
        bytes(field, inner.bytes)
    }
}

/// gzip (RFC 1952) of deflate's stored blocks: no compression, readable by
/// every gzip reader, and no zlib to link.
enum Gzip {
    static func stored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
        var offset = 0
        repeat {
            let n = min(65535, data.count - offset)
            let last = offset + n == data.count
            out.append(last ? 1 : 0)
            out += [UInt8(n & 0xff), UInt8(n >> 8), UInt8(~n & 0xff), UInt8((~n >> 8) & 0xff)]
            out += data[offset..<offset + n]
            offset += n
        } while offset < data.count
        out += littleEndian(crc32(data)) + littleEndian(UInt32(truncatingIfNeeded: data.count))
        return out
    }

    static func littleEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }

    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func crc32(_ data: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xffff_ffff
        for b in data { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xffff_ffff
    }
}
