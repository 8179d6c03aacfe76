import Glibc

/// Readable names for mangled Swift, C++ and Rust symbols (Rust's v0
/// mangling by `RustV0Demangler`, its legacy one as C++ without the hash). The Swift and C++ demanglers are found
/// at run time with `dlsym`: `swift_demangle` is in the Swift runtime every
/// Swift program has loaded, `__cxa_demangle` in libstdc++, which the Swift
/// runtime on Linux loads; neither needs a link-time dependency, and a missing
/// one leaves names as they are.
public enum Demangler {
    /// `char *swift_demangle(const char *name, size_t length, char *buffer, size_t *bufferSize, uint32_t flags)`:
    /// a malloc'ed string when `buffer` is NULL, NULL when `name` is not a Swift symbol.
    private typealias SwiftDemangle =
        @convention(c) (
            UnsafePointer<CChar>?, Int, UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<Int>?, UInt32
        ) -> UnsafeMutablePointer<CChar>?
    /// `char *__cxa_demangle(const char *name, char *buffer, size_t *length, int *status)`: malloc'ed, or NULL.
    private typealias CxxDemangle =
        @convention(c) (
            UnsafePointer<CChar>?, UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<Int>?,
            UnsafeMutablePointer<Int32>?
        ) -> UnsafeMutablePointer<CChar>?

    private static let swiftDemangle: SwiftDemangle? =
        dlsym(nil, "swift_demangle").map { unsafeBitCast($0, to: SwiftDemangle.self) }
    private static let cxxDemangle: CxxDemangle? =
        dlsym(nil, "__cxa_demangle").map { unsafeBitCast($0, to: CxxDemangle.self) }

    /// Swift symbol prefixes: Swift 5+ (`$s`), 4.x (`$S`, `_T0`), with and without the Mach-O style underscore.
    private static let swiftPrefixes = ["$s", "_$s", "$S", "_$S", "_T0"]

    /// The demangled form of `name`, or `name` itself when it is not mangled
    /// or cannot be demangled.
    public static func demangle(_ name: String) -> String {
        if swiftPrefixes.contains(where: { name.hasPrefix($0) }), let swiftDemangle {
            let utf8 = Array(name.utf8CString)
            let result = utf8.withUnsafeBufferPointer { swiftDemangle($0.baseAddress, utf8.count - 1, nil, nil, 0) }
            if let result {
                defer { free(result) }
                return String(cString: result)
            }
        } else if name.hasPrefix("_R") {
            if let demangled = RustV0Demangler.demangle(name) { return demangled }
        } else if name.hasPrefix("_Z"), let cxxDemangle {
            // A Rust symbol LLVM made local (`.llvm.1234`) is the symbol without it.
            let rust = isRustLegacy(withoutLLVMSuffix(name))
            let base = rust ? withoutLLVMSuffix(name) : name
            var status: Int32 = 0
            if let result = cxxDemangle(base, nil, nil, &status), status == 0 {
                defer { free(result) }
                let demangled = String(cString: result)
                return rust ? rustLegacy(demangled) : demangled
            }
        }
        return name
    }

    /// `name` without a last `.llvm.` and hex digits (or `@`), as rustc-demangle drops it.
    static func withoutLLVMSuffix(_ name: String) -> String {
        guard let llvm = name.ranges(of: ".llvm.").last,
            name[llvm.upperBound...].allSatisfy({ $0.isHexDigit && !$0.isLowercase || $0 == "@" })
        else { return name }
        return String(name[..<llvm.lowerBound])
    }

    /// Rust's legacy mangling is the Itanium scheme with a last component
    /// `h` + 16 hex digits (a hash): `..._ZN1q12quokka_touch17h114bb9707596f047E`.
    static func isRustLegacy(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard u.count > 21, u.last == UInt8(ascii: "E") else { return false }
        let tail = u[(u.count - 20)..<(u.count - 1)]
        return tail.starts(with: Array("17h".utf8)) && tail.dropFirst(3).allSatisfy { isxdigit(Int32($0)) != 0 }
    }

    /// As rustc-demangle displays a legacy name: without the hash, each
    /// component's `$LT$`-style escapes decoded, `..` as `::`
    /// (`<q::W<T> as core::fmt::Display>::fmt`).
    static func rustLegacy(_ demangled: String) -> String {
        var parts = demangled.split(separator: "::", omittingEmptySubsequences: false).map(String.init)
        if let last = parts.last, last.count == 17, last.hasPrefix("h") { parts.removeLast() }
        return parts.map { part -> String in
            var p = Substring(part)
            if p.hasPrefix("_$") { p = p.dropFirst() }
            var out = ""
            while let dollar = p.firstIndex(of: "$") {
                out += p[..<dollar].replacing("..", with: "::")
                let rest = p[p.index(after: dollar)...]
                guard let end = rest.firstIndex(of: "$") else { break }
                let code = String(rest[..<end])
                let named = ["SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")", "C": ","]
                if let c = named[code] {
                    out += c
                } else if code.hasPrefix("u"), let v = UInt32(code.dropFirst(), radix: 16),
                    let scalar = Unicode.Scalar(v)
                {
                    out.unicodeScalars.append(scalar)
                } else {
                    out += "$" + code + "$"
                }
                p = rest[rest.index(after: end)...]
            }
            return out + p.replacing("..", with: "::")
        }.joined(separator: "::")
    }
}
