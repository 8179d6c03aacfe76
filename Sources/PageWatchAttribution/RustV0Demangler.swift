/// Rust's v0 mangling (`_R...`, RFC 2603; std is built with it since Rust
/// 1.88's toolchains, programs with `-C symbol-mangling-version=v0`),
/// displayed as rustc-demangle's alternate form (`{:#}`), as backtraces and
/// perf show it: no crate hashes, generic arguments as Rust spells them
/// (`<std::io::error::Error>::new::<&str>`, `{closure#0}`), constants
/// without their type suffix. Punycode identifiers and structural constants
/// (strings, arrays, structs as const generics) are not decoded: such a
/// symbol is left as it is.
struct RustV0Demangler {
    private struct Invalid: Error {}

    /// The symbol after `_R`: backreferences are offsets into it.
    private let bytes: [UInt8]
    private var next = 0
    private var out = ""
    /// Off while the path of an `impl` or the instantiating crate is skipped.
    private var printing = true
    private var depth = 0
    private var boundLifetimes = 0

    private init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The readable name, or nil when `name` is not a v0 symbol this decodes.
    static func demangle(_ name: String) -> String? {
        guard name.hasPrefix("_R") else { return nil }
        // What LLVM appends to a symbol it made local (`.llvm.1234`) is dropped,
        // as rustc-demangle drops it; another suffix (`.0`) is shown.
        var symbol = Substring(Demangler.withoutLLVMSuffix(name)).dropFirst(2)
        var suffix = ""
        if let dot = symbol.firstIndex(of: ".") {
            suffix = String(symbol[dot...])
            symbol = symbol[..<dot]
        }
        var d = RustV0Demangler(Array(symbol.utf8))
        do {
            // A leading decimal is an encoding version; only the first exists.
            if let c = d.peek, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { return nil }
            try d.path(inValue: true)
            // The instantiating crate, not shown.
            if let c = d.peek, c >= UInt8(ascii: "A"), c <= UInt8(ascii: "Z") {
                d.printing = false
                try d.path(inValue: false)
            }
            guard d.next == d.bytes.count else { return nil }
        } catch {
            return nil
        }
        return d.out + suffix
    }

    private var peek: UInt8? { next < bytes.count ? bytes[next] : nil }

    private mutating func eat(_ c: Character) -> Bool {
        guard peek == c.asciiValue else { return false }
        next += 1
        return true
    }

    private mutating func byte() throws -> UInt8 {
        guard let c = peek else { throw Invalid() }
        next += 1
        return c
    }

    private mutating func emit(_ s: String) { if printing { out += s } }

    /// `_` is 0; digits, lowercase then uppercase letters in base 62, then `_`, is that plus one.
    private mutating func base62() throws -> UInt64 {
        if eat("_") { return 0 }
        var x: UInt64 = 0
        while !eat("_") {
            let c = try byte()
            let d: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): d = UInt64(c - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): d = UInt64(c - UInt8(ascii: "A")) + 36
            default: throw Invalid()
            }
            let (m, o1) = x.multipliedReportingOverflow(by: 62)
            let (s, o2) = m.addingReportingOverflow(d)
            guard !o1, !o2 else { throw Invalid() }
            x = s
        }
        guard x < UInt64.max else { throw Invalid() }
        return x + 1
    }

    /// `TAG <base-62>` as that plus one; 0 without the tag.
    private mutating func optionalBase62(_ tag: Character) throws -> UInt64 {
        eat(tag) ? try base62() + 1 : 0
    }

    private mutating func disambiguator() throws -> UInt64 { try optionalBase62("s") }

    /// `[u] <decimal> [_] <bytes>`: an identifier without its disambiguator.
    private mutating func identifier() throws -> String {
        let isPunycode = eat("u")
        var length = 0
        guard let first = peek, first >= UInt8(ascii: "0"), first <= UInt8(ascii: "9") else { throw Invalid() }
        if first == UInt8(ascii: "0") {
            next += 1
        } else {
            while let c = peek, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
                length = length * 10 + Int(c - UInt8(ascii: "0"))
                guard length <= bytes.count else { throw Invalid() }
                next += 1
            }
        }
        _ = eat("_")
        guard next + length <= bytes.count else { throw Invalid() }
        defer { next += length }
        let raw = bytes[next..<next + length]
        guard isPunycode else { return String(decoding: raw, as: UTF8.self) }
        guard let decoded = Self.punycode(raw) else { throw Invalid() }
        return decoded
    }

    /// RFC 3492's decoding, with `_` where it has `-` (non-ASCII identifiers).
    static func punycode(_ s: ArraySlice<UInt8>) -> String? {
        var output: [Unicode.Scalar] = []
        var deltas = s
        if let split = s.lastIndex(of: UInt8(ascii: "_")) {
            output = s[..<split].map { Unicode.Scalar($0) }
            deltas = s[(split + 1)...]
        }
        guard !deltas.isEmpty else { return nil }
        var n: UInt32 = 128, i: UInt32 = 0, bias: UInt32 = 72
        var at = deltas.startIndex
        while at < deltas.endIndex {
            let start = i
            var weight: UInt32 = 1, k: UInt32 = 36
            while true {
                guard at < deltas.endIndex else { return nil }
                let c = deltas[at]
                at += 1
                let digit: UInt32
                switch c {
                case UInt8(ascii: "a")...UInt8(ascii: "z"): digit = UInt32(c - UInt8(ascii: "a"))
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0")) + 26
                default: return nil
                }
                let (product, o1) = digit.multipliedReportingOverflow(by: weight)
                let (sum, o2) = i.addingReportingOverflow(product)
                guard !o1, !o2 else { return nil }
                i = sum
                let t = k <= bias ? 1 : min(k - bias, 26)
                if digit < t { break }
                let (w, o3) = weight.multipliedReportingOverflow(by: 36 - t)
                guard !o3 else { return nil }
                weight = w
                k += 36
            }
            let count = UInt32(output.count + 1)
            var delta = start == 0 ? (i - start) / 700 : (i - start) / 2
            delta += delta / count
            var kk: UInt32 = 0
            while delta > 35 * 26 / 2 {
                delta /= 35
                kk += 36
            }
            bias = kk + 36 * delta / (delta + 38)
            n += i / count
            i %= count
            guard let scalar = Unicode.Scalar(n), output.count < 1000 else { return nil }
            output.insert(scalar, at: Int(i))
            i += 1
        }
        var text = ""
        text.unicodeScalars.append(contentsOf: output)
        return text
    }

    /// Runs `body` at the position a backreference `B <base-62>` names (only an earlier one).
    private mutating func backref(_ body: (inout RustV0Demangler) throws -> Void) throws {
        let at = next - 1
        let target = try base62()
        guard target < UInt64(at) else { throw Invalid() }
        guard printing else { return }
        let resume = next
        next = Int(target)
        try nested { try body(&$0) }
        next = resume
    }

    private mutating func nested(_ body: (inout RustV0Demangler) throws -> Void) throws {
        depth += 1
        guard depth < 300 else { throw Invalid() }
        try body(&self)
        depth -= 1
    }

    private mutating func path(inValue: Bool) throws {
        try nested { d in try d.pathBody(inValue: inValue) }
    }

    private mutating func pathBody(inValue: Bool) throws {
        switch try byte() {
        case UInt8(ascii: "C"):
            _ = try disambiguator()
            emit(try identifier())
        case UInt8(ascii: "N"):
            let namespace = try byte()
            try path(inValue: inValue)
            let dis = try disambiguator()
            let name = try identifier()
            if namespace >= UInt8(ascii: "A") && namespace <= UInt8(ascii: "Z") {
                let kind =
                    namespace == UInt8(ascii: "C")
                    ? "closure" : namespace == UInt8(ascii: "S") ? "shim" : String(UnicodeScalar(namespace))
                emit("::{\(kind)\(name.isEmpty ? "" : ":" + name)#\(dis)}")
            } else if !name.isEmpty {
                emit("::" + name)
            }
        case let tag where tag == UInt8(ascii: "M") || tag == UInt8(ascii: "X") || tag == UInt8(ascii: "Y"):
            if tag != UInt8(ascii: "Y") {
                // The impl's own path is not shown.
                _ = try disambiguator()
                let was = printing
                printing = false
                try path(inValue: false)
                printing = was
            }
            emit("<")
            try type()
            if tag != UInt8(ascii: "M") {
                emit(" as ")
                try path(inValue: false)
            }
            emit(">")
        case UInt8(ascii: "I"):
            try path(inValue: inValue)
            emit(inValue ? "::<" : "<")
            try list(", ") { try $0.genericArgument() }
            emit(">")
        case UInt8(ascii: "B"):
            try backref { try $0.path(inValue: inValue) }
        default:
            throw Invalid()
        }
    }

    /// Items up to `E`, separated; their count.
    @discardableResult
    private mutating func list(_ separator: String, _ item: (inout RustV0Demangler) throws -> Void) throws -> Int {
        var count = 0
        while !eat("E") {
            if count > 0 { emit(separator) }
            try item(&self)
            count += 1
        }
        return count
    }

    private mutating func genericArgument() throws {
        if eat("L") {
            lifetime(try base62())
        } else if eat("K") {
            try constant()
        } else {
            try type()
        }
    }

    private mutating func lifetime(_ index: UInt64) {
        guard index > 0, UInt64(boundLifetimes) >= index else { return emit("'_") }
        let depth = UInt64(boundLifetimes) - index
        emit(depth < 26 ? "'" + String(UnicodeScalar(UInt8(ascii: "a") + UInt8(depth))) : "'_\(depth)")
    }

    /// `G <base-62>` binds that many lifetimes plus one: `for<'a, 'b> `.
    private mutating func binder(_ body: (inout RustV0Demangler) throws -> Void) throws {
        let count = try optionalBase62("G")
        guard count < 1000 else { throw Invalid() }
        if count > 0 {
            emit("for<")
            for i in 0..<Int(count) {
                if i > 0 { emit(", ") }
                boundLifetimes += 1
                lifetime(1)
            }
            emit("> ")
        }
        try body(&self)
        boundLifetimes -= Int(count)
    }

    private static let basicTypes: [UInt8: String] = [
        UInt8(ascii: "a"): "i8", UInt8(ascii: "b"): "bool", UInt8(ascii: "c"): "char", UInt8(ascii: "d"): "f64",
        UInt8(ascii: "e"): "str", UInt8(ascii: "f"): "f32", UInt8(ascii: "h"): "u8", UInt8(ascii: "i"): "isize",
        UInt8(ascii: "j"): "usize", UInt8(ascii: "l"): "i32", UInt8(ascii: "m"): "u32", UInt8(ascii: "n"): "i128",
        UInt8(ascii: "o"): "u128", UInt8(ascii: "s"): "i16", UInt8(ascii: "t"): "u16", UInt8(ascii: "u"): "()",
        UInt8(ascii: "v"): "...", UInt8(ascii: "x"): "i64", UInt8(ascii: "y"): "u64", UInt8(ascii: "z"): "!",
        UInt8(ascii: "p"): "_",
    ]

    private mutating func type() throws {
        try nested { d in try d.typeBody() }
    }

    private mutating func typeBody() throws {
        let tag = try byte()
        if let basic = Self.basicTypes[tag] { return emit(basic) }
        switch tag {
        case UInt8(ascii: "R"), UInt8(ascii: "Q"):
            emit("&")
            if eat("L") {
                let index = try base62()
                if index != 0 {
                    lifetime(index)
                    emit(" ")
                }
            }
            if tag == UInt8(ascii: "Q") { emit("mut ") }
            try type()
        case UInt8(ascii: "P"), UInt8(ascii: "O"):
            emit(tag == UInt8(ascii: "P") ? "*const " : "*mut ")
            try type()
        case UInt8(ascii: "A"), UInt8(ascii: "S"):
            emit("[")
            try type()
            if tag == UInt8(ascii: "A") {
                emit("; ")
                try constant()
            }
            emit("]")
        case UInt8(ascii: "T"):
            emit("(")
            if try list(", ", { try $0.type() }) == 1 { emit(",") }
            emit(")")
        case UInt8(ascii: "F"):
            try binder { d in
                let isUnsafe = d.eat("U")
                var abi: String?
                if d.eat("K") {
                    // `extern "C"`, or another ABI with its dashes as underscores.
                    if d.eat("C") {
                        abi = "C"
                    } else {
                        abi = try d.identifier().replacing("_", with: "-")
                    }
                }
                if isUnsafe { d.emit("unsafe ") }
                if let abi { d.emit("extern \"\(abi)\" ") }
                d.emit("fn(")
                try d.list(", ") { try $0.type() }
                d.emit(")")
                if !d.eat("u") {
                    d.emit(" -> ")
                    try d.type()
                }
            }
        case UInt8(ascii: "D"):
            emit("dyn ")
            try binder { d in try d.list(" + ") { try $0.dynTrait() } }
            guard eat("L") else { throw Invalid() }
            let index = try base62()
            if index != 0 {
                emit(" + ")
                lifetime(index)
            }
        case UInt8(ascii: "B"):
            try backref { try $0.type() }
        default:
            next -= 1
            try path(inValue: false)
        }
    }

    /// A trait of a `dyn`, with its associated types: `Fn<(u8,), Output = ()>`.
    private mutating func dynTrait() throws {
        var open = try pathWithOpenGenerics()
        while eat("p") {
            emit(open ? ", " : "<")
            open = true
            emit(try identifier() + " = ")
            try type()
        }
        if open { emit(">") }
    }

    /// A path whose generic arguments, if last, are left open for associated types.
    private mutating func pathWithOpenGenerics() throws -> Bool {
        if eat("B") {
            var open = false
            try backref { open = try $0.pathWithOpenGenerics() }
            return open
        }
        guard eat("I") else {
            try path(inValue: false)
            return false
        }
        try path(inValue: false)
        emit("<")
        try list(", ") { try $0.genericArgument() }
        return true
    }

    /// Integers, `bool`, `char` and the placeholder `_`.
    private mutating func constant() throws {
        let tag = try byte()
        switch tag {
        case UInt8(ascii: "p"):
            emit("_")
        case UInt8(ascii: "B"):
            try backref { try $0.constant() }
        case UInt8(ascii: "a"), UInt8(ascii: "s"), UInt8(ascii: "l"), UInt8(ascii: "x"), UInt8(ascii: "n"),
            UInt8(ascii: "i"), UInt8(ascii: "h"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "y"),
            UInt8(ascii: "o"), UInt8(ascii: "j"):
            let negative = eat("n")
            let hex = try constantHex()
            if negative { emit("-") }
            if hex.count > 16 {
                emit("0x" + hex)
            } else {
                emit(String(UInt64(hex.isEmpty ? "0" : hex, radix: 16) ?? 0))
            }
        case UInt8(ascii: "b"):
            switch try constantHex() {
            case "0": emit("false")
            case "1": emit("true")
            default: throw Invalid()
            }
        case UInt8(ascii: "c"):
            guard let v = UInt32(try constantHex(), radix: 16), let scalar = Unicode.Scalar(v) else { throw Invalid() }
            emit(
                "'"
                    + Character(scalar).debugDescription.dropFirst().dropLast().replacing("\\\"", with: "\"")
                    .replacing("'", with: "\\'") + "'")
        default:
            throw Invalid()
        }
    }

    /// Lowercase hex digits up to `_`, without leading zeros.
    private mutating func constantHex() throws -> String {
        var hex = ""
        while !eat("_") {
            let c = try byte()
            guard
                (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
            else { throw Invalid() }
            hex.unicodeScalars.append(UnicodeScalar(c))
        }
        let trimmed = hex.drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : String(trimmed)
    }
}
