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

    /// `0xSTART-0xEND` in hex (the second `0x` may be left out), START below
    /// END: how the command line names a range (`--track`, `image read`).
    public init?(parsing text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].hasPrefix("0x") || parts[0].hasPrefix("0X") else { return nil }
        func hex(_ s: Substring) -> UInt64? {
            let body = s.hasPrefix("0x") || s.hasPrefix("0X") ? s.dropFirst(2) : s
            return body.isEmpty ? nil : UInt64(body, radix: 16)
        }
        guard let a = hex(parts[0]), let b = hex(parts[1]), a < b else { return nil }
        self.init(a, b)
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
