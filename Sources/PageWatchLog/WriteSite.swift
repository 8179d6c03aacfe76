import PageWatchAddressSpace

/// One writer's share of a sweep: the `sites` of the log.
public struct WriteSite: Sendable, Equatable {
    public var pages: UInt64
    public var faults: Int
    /// Which pages: sorted, coalesced, like a sweep's.
    public var ranges: [AddressRange]
    /// Innermost first. A pseudo-frame (`[kernel] read`, `[unseen]`,
    /// `[pinned]`) has only a function name and `ip` 0.
    public var frames: [Frame]

    public init(pages: UInt64, faults: Int, ranges: [AddressRange], frames: [Frame]) {
        self.pages = pages
        self.faults = faults
        self.ranges = ranges
        self.frames = frames
    }
}

/// One symbolized stack frame, as the log records it. Here rather than with
/// the Symbolizer (PageWatchAttribution) that fills it in, so that reading a
/// log needs neither ptrace nor the unwinding libraries.
public struct Frame: Sendable, Equatable {
    public var ip: UInt64
    /// The path of the mapping holding `ip` (`[vdso]` included); nil for anonymous memory.
    public var module: String?
    /// The file offset of `ip` in `module`.
    public var offset: UInt64?
    /// Demangled function name; nil when no symbol covers `ip`.
    public var function: String?
    public var file: String?
    public var line: Int?
    /// `function` is a JIT's name for code it generated, from its perf map
    /// (`/tmp/perf-PID.map`, format rule 14).
    public var jit: Bool
    /// The unwinder reached this frame by following the frame pointer of
    /// the frame below it, which had no unwind information (JIT code,
    /// assembly without CFI): likelier wrong than a frame found by
    /// unwind tables (format rule 14).
    public var foundByFramePointer: Bool

    public init(
        ip: UInt64, module: String? = nil, offset: UInt64? = nil, function: String? = nil,
        file: String? = nil, line: Int? = nil, jit: Bool = false, foundByFramePointer: Bool = false
    ) {
        self.ip = ip
        self.module = module
        self.offset = offset
        self.function = function
        self.file = file
        self.line = line
        self.jit = jit
        self.foundByFramePointer = foundByFramePointer
    }

    /// The function if known, else `module+0xOFFSET`, else `0xIP`.
    public var display: String {
        if let function { return function }
        if let module, let offset { return "\(module)+0x\(String(offset, radix: 16))" }
        return "0x\(String(ip, radix: 16))"
    }
}
