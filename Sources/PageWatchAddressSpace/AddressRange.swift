/// A half-open range `[start, end)` of tracee addresses.
public struct AddressRange: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var start: RemoteAddress
    public var end: RemoteAddress

    public init(start: RemoteAddress, end: RemoteAddress) {
        precondition(start <= end, "AddressRange start \(start) above end \(end)")
        self.start = start
        self.end = end
    }

    public init(_ start: UInt64, _ end: UInt64) {
        self.init(start: RemoteAddress(start), end: RemoteAddress(end))
    }

    public var length: UInt64 { end - start }
    public var isEmpty: Bool { start == end }
    public var pageCount: UInt64 { length / Page.size }

    public func contains(_ a: RemoteAddress) -> Bool { start <= a && a < end }
    public func contains(_ r: AddressRange) -> Bool { start <= r.start && r.end <= end }
    public func overlaps(_ r: AddressRange) -> Bool { start < r.end && r.start < end }

    /// The overlap, or nil when the two do not overlap.
    public func intersection(_ r: AddressRange) -> AddressRange? {
        let s = max(start, r.start), e = min(end, r.end)
        return s < e ? AddressRange(start: s, end: e) : nil
    }

    /// The smallest page-aligned range that covers this one.
    public var pageAligned: AddressRange {
        AddressRange(start: Page.floor(start), end: Page.ceil(end))
    }

    public static func < (lhs: AddressRange, rhs: AddressRange) -> Bool {
        (lhs.start, lhs.end) < (rhs.start, rhs.end)
    }

    public var description: String { "\(start.hex)-\(end.hex)" }
}
