import Glibc
import PageWatchAddressSpace

/// `/proc/PID/pagemap`: one 64-bit entry per virtual page, which says
/// whether the page holds data without soft-dirty bits
/// (Documentation/admin-guide/mm/pagemap.rst). Readable by whoever may
/// ptrace the process; the frame numbers in it are zero without
/// CAP_SYS_ADMIN, so they only ever refine what the flags say.
public struct PageMapEntry: Equatable, Sendable {
    public var raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// Bit 63: a page is mapped in RAM.
    public var isPresent: Bool { raw & (1 << 63) != 0 }
    /// Bit 62: the page is in swap (its data kept there).
    public var isSwapped: Bool { raw & (1 << 62) != 0 }
    /// Bit 61: a page of the page cache or of shared anonymous memory. In a
    /// private file mapping, a present page without it has been copied on
    /// write: the process's own data.
    public var isFileOrShared: Bool { raw & (1 << 61) != 0 }
    /// Bits 0-54 of a present page: its frame number (0 when hidden).
    public var frame: UInt64 { raw & ((1 << 55) - 1) }

    /// Present, but the kernel's shared zero page: an anonymous page only
    /// read so far (by the program, or by a tracer's `process_vm_readv`),
    /// which holds zeros. Known only where frame numbers are visible.
    public var isSharedZeroPage: Bool {
        guard isPresent, let zero = PageMap.zeroPageFrame else { return false }
        return frame == zero
    }
}

/// The pagemap of one process, opened once for the reads of a sweep.
public final class PageMap {
    public let pid: Int32
    private let fd: Int32

    public init(pid: Int32) throws {
        self.pid = pid
        fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open /proc/\(pid)/pagemap", Errno(errno), tid: pid) }
    }

    deinit { close(fd) }

    /// The frame of the kernel's shared zero page, learned from a page of
    /// PageWatch's own that it reads without writing; nil where frame
    /// numbers are hidden (no CAP_SYS_ADMIN).
    public static let zeroPageFrame: UInt64? = {
        let size = Int(Page.size)
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            return nil
        }
        defer { munmap(p, size) }
        // The read maps the zero page (a load the compiler cannot drop: its value is used).
        guard p.load(as: UInt8.self) == 0, let own = try? PageMap(pid: getpid()),
            let entry = try? own.entries(AddressRange(UInt64(UInt(bitPattern: p)), UInt64(UInt(bitPattern: p)) + Page.size)).first,
            entry.isPresent, entry.frame != 0
        else { return nil }
        return entry.frame
    }()

    /// The entries of `range`'s pages, in one `pread` (the kernel walks the
    /// page tables once; holes cost next to nothing).
    public func entries(_ range: AddressRange) throws -> [PageMapEntry] {
        let count = Int(range.pageCount)
        var words = [UInt64](repeating: 0, count: count)
        var done = 0
        while done < count {
            let offset = off_t((range.start.value / Page.size + UInt64(done)) * 8)
            let n = words[done...].withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 {
                throw TraceError.call("read /proc/\(pid)/pagemap", Errno(n < 0 ? errno : EIO), tid: pid, address: range.start)
            }
            done += n / 8
        }
        return words.map(PageMapEntry.init(raw:))
    }
}
