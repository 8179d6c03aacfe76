/// An address in the tracee's address space. Never dereferenced here: a
/// distinct type so a tracee address cannot be mistaken for a local pointer.
public struct RemoteAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var value: UInt64

    public init(_ value: UInt64) { self.value = value }

    public static func < (lhs: RemoteAddress, rhs: RemoteAddress) -> Bool { lhs.value < rhs.value }

    public static func + (lhs: RemoteAddress, rhs: UInt64) -> RemoteAddress { RemoteAddress(lhs.value &+ rhs) }
    public static func - (lhs: RemoteAddress, rhs: RemoteAddress) -> UInt64 { lhs.value &- rhs.value }

    /// Lower-case hex with a `0x` prefix, the form the log uses.
    public var hex: String { "0x" + String(value, radix: 16) }
    public var description: String { hex }
}

/// Page arithmetic lives here and nowhere else.
public enum Page {
    /// The page size of every supported target (x86_64, aarch64 4K kernels).
    public static let size: UInt64 = 4096
    public static let shift: UInt64 = 12

    public static func floor(_ a: RemoteAddress) -> RemoteAddress { RemoteAddress(a.value & ~(size - 1)) }
    public static func ceil(_ a: RemoteAddress) -> RemoteAddress {
        // Saturate at the top of the address space rather than wrapping to 0.
        let (sum, overflow) = a.value.addingReportingOverflow(size - 1)
        return RemoteAddress(overflow ? ~(size - 1) : sum & ~(size - 1))
    }
    public static func index(_ a: RemoteAddress) -> UInt64 { a.value >> shift }
    public static func address(ofIndex i: UInt64) -> RemoteAddress { RemoteAddress(i << shift) }
    public static func isAligned(_ a: RemoteAddress) -> Bool { a.value & (size - 1) == 0 }
}
