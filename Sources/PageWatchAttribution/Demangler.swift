import Glibc

/// Readable names for mangled Swift and C++ symbols. Both demanglers are found
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
        } else if name.hasPrefix("_Z"), let cxxDemangle {
            var status: Int32 = 0
            if let result = cxxDemangle(name, nil, nil, &status), status == 0 {
                defer { free(result) }
                return String(cString: result)
            }
        }
        return name
    }
}
