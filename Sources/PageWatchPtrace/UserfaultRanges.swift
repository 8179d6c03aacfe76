import Glibc
import PageWatchAddressSpace

/// Where a traced program's own userfaultfd would be asked for a page.
///
/// A range registered with `UFFDIO_REGISTER_MODE_MISSING` (or `MINOR`)
/// hands a fault on a page that is not there to the program's handler
/// thread, and the faulting task sleeps in `handle_userfault` until the
/// handler supplies it. `process_vm_readv` faults pages in that way too:
/// PageWatch reading such a page would sleep until the program's handler
/// ran, while the handler may be held at a ptrace stop waiting for
/// PageWatch (a deadlock; the tracer in state D). So every read of program
/// memory that overlaps these ranges goes through `/proc/PID/mem` instead,
/// which faults pages in without allowing a retry: the kernel's
/// `handle_userfault` then refuses at once (EIO) instead of asking the
/// handler, and pages that are there are read as usual.
/// (`PTRACE_PEEKDATA` takes the same path.) Write-protect mode never makes
/// a read wait, but a write does: those ranges are kept apart
/// (`writeProtected(of:)`), for what writes the program's memory on
/// PageWatch's behalf (populating a page with `MADV_POPULATE_WRITE`).
///
/// Kept per process (its pid); the check is against the union of all
/// processes, which only makes some reads take the slower path. One
/// registry for the tracer (`UserfaultRanges.shared`), used from the
/// tracer thread only.
public struct UserfaultRanges: Sendable {
    private var byProcess: [Int32: PageSet] = [:]
    private var union = PageSet()
    /// Registered for write-protect faults (reads never wait there).
    private var writeProtectedByProcess: [Int32: PageSet] = [:]
    /// Changes whenever `all` does (the unwinder copies the ranges to C).
    public private(set) var generation: UInt64 = 0

    public init() {}

    /// The tracer's registry, which `Ptrace.readMemory` consults.
    nonisolated(unsafe) public static var shared = UserfaultRanges()

    /// `uffdio_register.mode` bits.
    public static let modeMissing: UInt64 = 1
    public static let modeWriteProtect: UInt64 = 2
    public static let modeMinor: UInt64 = 4

    /// Every range of every process where a read could ask a handler.
    public var all: [AddressRange] { union.ranges }

    /// Whether any process has a range registered in any mode.
    public var isEmpty: Bool { union.isEmpty && writeProtectedByProcess.isEmpty }

    /// The ranges of process `pid`.
    public func ranges(of pid: Int32) -> [AddressRange] { byProcess[pid]?.ranges ?? [] }

    /// The ranges of process `pid` registered for write-protect faults: a
    /// write there by the kernel on anyone's behalf waits for the program's
    /// handler when the program has write-protected the page.
    public func writeProtected(of pid: Int32) -> [AddressRange] { writeProtectedByProcess[pid]?.ranges ?? [] }

    /// A `UFFDIO_REGISTER` of `range` with `mode` in process `pid` (noted
    /// before the call runs: a failed call leaves a superset, which is safe).
    public mutating func register(_ range: AddressRange, mode: UInt64, pid: Int32) {
        guard !range.isEmpty else { return }
        if mode & Self.modeWriteProtect != 0 {
            writeProtectedByProcess[pid, default: PageSet()].insert(range.pageAligned)
        }
        guard mode & (Self.modeMissing | Self.modeMinor) != 0 else { return }
        byProcess[pid, default: PageSet()].insert(range.pageAligned)
        changed()
    }

    /// The range no longer asks a handler in `pid` (`UFFDIO_UNREGISTER`, munmap).
    public mutating func remove(_ range: AddressRange, pid: Int32) {
        if var set = writeProtectedByProcess[pid] {
            set.remove(range.pageAligned)
            writeProtectedByProcess[pid] = set.isEmpty ? nil : set
        }
        guard var set = byProcess[pid], !set.intersection(range.pageAligned).isEmpty else { return }
        set.remove(range.pageAligned)
        byProcess[pid] = set.isEmpty ? nil : set
        changed()
    }

    /// `pid` exec'd (a new address space) or is gone.
    public mutating func forget(pid: Int32) {
        writeProtectedByProcess[pid] = nil
        guard byProcess.removeValue(forKey: pid) != nil else { return }
        changed()
    }

    /// A fork child: with `UFFD_FEATURE_EVENT_FORK` its copy of the ranges
    /// is registered with a new userfaultfd the parent's handler serves;
    /// without, they are not registered at all. Taken as registered.
    public mutating func forked(from parent: Int32, child: Int32) {
        if let set = writeProtectedByProcess[parent] {
            writeProtectedByProcess[child, default: PageSet()].formUnion(set)
        }
        guard let set = byProcess[parent] else { return }
        byProcess[child, default: PageSet()].formUnion(set)
        changed()
    }

    /// Whether `[address, address + count)` overlaps a range of any process.
    public func overlaps(_ address: RemoteAddress, count: Int) -> Bool {
        guard !union.isEmpty, count > 0 else { return false }
        let end = address.value &+ UInt64(count)
        guard end > address.value else { return true }
        return !union.intersection(AddressRange(start: address, end: RemoteAddress(end))).isEmpty
    }

    private mutating func changed() {
        var u = PageSet()
        for set in byProcess.values { u.formUnion(set) }
        union = u
        generation &+= 1
    }

    /// The ranges `/proc/PID/smaps` shows registered with a userfaultfd
    /// (VmFlags `um` missing, `uw` write-protect, `ui` minor) and their
    /// modes: what a program registered before PageWatch came.
    public static func registered(inSmaps text: String) -> [(range: AddressRange, mode: UInt64)] {
        var found: [(range: AddressRange, mode: UInt64)] = []
        var current: AddressRange?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("VmFlags:") {
                var mode: UInt64 = 0
                for flag in line.dropFirst("VmFlags:".count).split(separator: " ") {
                    switch flag {
                    case "um": mode |= modeMissing
                    case "uw": mode |= modeWriteProtect
                    case "ui": mode |= modeMinor
                    default: break
                    }
                }
                if let current, mode != 0 { found.append((current, mode)) }
                continue
            }
            // A mapping's header: "start-end perms offset dev inode path".
            guard let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
                let start = UInt64(line[line.startIndex..<dash], radix: 16),
                let end = UInt64(line[line.index(after: dash)..<space], radix: 16)
            else { continue }
            current = AddressRange(start, end)
        }
        return found
    }

    /// Learns what `pid` registered before PageWatch came (attach).
    public mutating func learn(pid: Int32) {
        guard let text = try? ProcFS.read("/proc/\(pid)/smaps", pid: pid) else { return }
        for (range, mode) in Self.registered(inSmaps: text) { register(range, mode: mode, pid: pid) }
    }
}

extension Ptrace {
    /// Reads through `/proc/PID/mem`: a page a userfaultfd handler would have
    /// to supply fails with EIO instead of waiting for it. Same result as
    /// `readMemory` otherwise: the bytes read before the first unreadable
    /// page, or an error when the first is.
    static func readMemoryAskingNoHandler(_ pid: Int32, _ address: RemoteAddress, count: Int) throws -> [UInt8] {
        let fd = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open /proc/\(pid)/mem", Errno(Glibc.errno), tid: pid, address: address) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress! + done, count - done, off_t(Int64(bitPattern: address.value &+ UInt64(done))))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                if done == 0 {
                    throw TraceError.call(
                        "read /proc/\(pid)/mem", n < 0 ? Errno(Glibc.errno) : .EIO, tid: pid, address: address)
                }
                break
            }
            done += n
        }
        buffer.removeLast(count - done)
        return buffer
    }
}
