/// Memory protection bits, as `mprotect` takes them (PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4).
public struct Protection: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let read = Protection(rawValue: 1)
    public static let write = Protection(rawValue: 2)
    public static let execute = Protection(rawValue: 4)

    /// The protection of an armed page: the program's own, minus write.
    /// Only PROT_WRITE is removed so executable (JIT) pages stay executable.
    public var armed: Protection { subtracting(.write) }

    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
    }
}
