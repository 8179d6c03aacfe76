internal import CPtrace
import Glibc
import PageWatchAddressSpace
import Synchronization

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
    let fd: Int32

    public init(pid: Int32) throws {
        self.pid = pid
        fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw TraceError.call("open /proc/\(pid)/pagemap", Errno(errno), tid: pid) }
    }

    deinit { close(fd) }

    /// Whether the thread still has its address space (one leaving it, as a
    /// thread group leader that has exited while the others run on or do
    /// their exit, reads as empty).
    public var hasAddressSpace: Bool {
        var word: UInt64 = 0
        return pread(fd, &word, 8, 0) == 8
    }

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
            let entry = try? own.entries(
                AddressRange(UInt64(UInt(bitPattern: p)), UInt64(UInt(bitPattern: p)) + Page.size)
            ).first,
            entry.isPresent, entry.frame != 0
        else { return nil }
        return entry.frame
    }()

    /// The runs of `range`'s pages that are present or swapped, in order;
    /// a page in no run is neither (it reads as zeros in an anonymous
    /// mapping, as its file's contents in a file mapping). Asked of the
    /// kernel with PAGEMAP_SCAN (Linux 6.7+), whose cost follows the pages
    /// mapped, not the range's size; else from the entries, read a chunk
    /// at a time (`PAGEWATCH_PAGEMAP=read` always reads them, to compare).
    public func runs(_ range: AddressRange) throws -> [PageMapRun] {
        if !Self.scanUnsupported.load(ordering: .relaxed), let runs = try scannedRuns(range) { return runs }
        return try readRuns(range)
    }

    /// Whether the kernel answers PAGEMAP_SCAN (Linux 6.7+), whatever
    /// `PAGEWATCH_PAGEMAP` says: one page of this process's own stack asked.
    public static func kernelScans() -> Bool {
        guard let map = try? PageMap(pid: getpid()) else { return false }
        var probe: UInt8 = 0
        var region = pw_page_region()
        return withUnsafeMutablePointer(to: &probe) { p in
            withUnsafeMutablePointer(to: &region) { r in
                let page = Page.floor(RemoteAddress(UInt64(UInt(bitPattern: p))))
                var arg = pw_pm_scan_arg()
                arg.size = UInt64(MemoryLayout<pw_pm_scan_arg>.size)
                arg.start = page.value
                arg.end = page.value + Page.size
                arg.vec = UInt64(UInt(bitPattern: r))
                arg.vec_len = 1
                arg.category_anyof_mask = UInt64(PW_PAGE_IS_PRESENT)
                arg.return_mask = UInt64(PW_PAGE_IS_PRESENT)
                return pw_pagemap_scan(map.fd, &arg) >= 0
            }
        }
    }

    /// Set once the kernel answered PAGEMAP_SCAN with ENOTTY or EINVAL.
    private static let scanUnsupported = Atomic<Bool>(getenv("PAGEWATCH_PAGEMAP").map { String(cString: $0) } == "read")

    /// Regions per ioctl: the kernel fills at most this many, then says where it stopped.
    static let scanRegions = 1024

    func scannedRuns(_ range: AddressRange) throws -> [PageMapRun]? {
        var runs: [PageMapRun] = []
        var regions = [pw_page_region](repeating: pw_page_region(), count: Self.scanRegions)
        var start = range.start.value
        while start < range.end.value {
            var arg = pw_pm_scan_arg()
            let n = regions.withUnsafeMutableBufferPointer { buffer in
                arg.size = UInt64(MemoryLayout<pw_pm_scan_arg>.size)
                arg.start = start
                arg.end = range.end.value
                arg.vec = UInt64(UInt(bitPattern: buffer.baseAddress))
                arg.vec_len = UInt64(buffer.count)
                let wanted = UInt64(PW_PAGE_IS_PRESENT | PW_PAGE_IS_SWAPPED)
                arg.category_anyof_mask = wanted
                arg.return_mask = wanted | UInt64(PW_PAGE_IS_FILE | PW_PAGE_IS_PFNZERO)
                return pw_pagemap_scan(fd, &arg)
            }
            if n == -ENOTTY || n == -EINVAL {
                Self.scanUnsupported.store(true, ordering: .relaxed)
                return nil
            }
            if n < 0 {
                throw TraceError.call(
                    "PAGEMAP_SCAN /proc/\(pid)/pagemap", Errno(-n), tid: pid, address: RemoteAddress(start))
            }
            for region in regions[0..<Int(n)] {
                // Seen on 6.18: a full vector's `walk_end` can lie below the
                // regions it returned, and the next call returns them again.
                let from = max(region.start, runs.last?.range.end.value ?? 0)
                guard from < region.end else { continue }
                let c = Int(truncatingIfNeeded: region.categories)
                let run = PageMapRun(
                    range: AddressRange(from, region.end), isPresent: c & PW_PAGE_IS_PRESENT != 0,
                    isSwapped: c & PW_PAGE_IS_SWAPPED != 0, isFilePage: c & PW_PAGE_IS_FILE != 0,
                    isZeroPage: c & PW_PAGE_IS_PFNZERO != 0)
                PageMapRun.append(run, to: &runs)
            }
            // The walk ends where the vector filled up (or at the end).
            guard arg.walk_end > start else { break }
            start = arg.walk_end
        }
        return runs
    }

    /// The same runs from the entries, 65,536 (512 KiB) at a time.
    func readRuns(_ range: AddressRange) throws -> [PageMapRun] {
        var runs: [PageMapRun] = []
        var start = range.start
        while start < range.end {
            let chunk = AddressRange(start: start, end: min(range.end, start + 65536 * Page.size))
            for (i, entry) in try entries(chunk).enumerated() where entry.isPresent || entry.isSwapped {
                let page = chunk.start + UInt64(i) * Page.size
                let run = PageMapRun(
                    range: AddressRange(start: page, end: page + Page.size), isPresent: entry.isPresent,
                    isSwapped: entry.isSwapped, isFilePage: entry.isPresent && entry.isFileOrShared,
                    isZeroPage: entry.isSharedZeroPage)
                PageMapRun.append(run, to: &runs)
            }
            start = chunk.end
        }
        return runs
    }

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
                throw TraceError.call(
                    "read /proc/\(pid)/pagemap", Errno(n < 0 ? errno : EIO), tid: pid, address: range.start)
            }
            done += n / 8
        }
        return words.map(PageMapEntry.init(raw:))
    }
}

/// Pages in a row that pagemap says the same of: present or swapped, a
/// page of the page cache (or shared), the kernel's zero page.
public struct PageMapRun: Equatable, Sendable {
    public var range: AddressRange
    public var isPresent: Bool
    public var isSwapped: Bool
    /// Present and a page-cache page (or shared anonymous): in a private
    /// file mapping, one never copied on write.
    public var isFilePage: Bool
    /// Present, the kernel's shared zero page (known from PAGEMAP_SCAN, or
    /// where frame numbers are visible).
    public var isZeroPage: Bool

    public init(range: AddressRange, isPresent: Bool, isSwapped: Bool, isFilePage: Bool, isZeroPage: Bool) {
        self.range = range
        self.isPresent = isPresent
        self.isSwapped = isSwapped
        self.isFilePage = isFilePage
        self.isZeroPage = isZeroPage
    }

    /// Appends `run`, merged with the last one when it continues it with the same flags.
    static func append(_ run: PageMapRun, to runs: inout [PageMapRun]) {
        if var last = runs.last, last.range.end == run.range.start, last.isPresent == run.isPresent,
            last.isSwapped == run.isSwapped, last.isFilePage == run.isFilePage, last.isZeroPage == run.isZeroPage
        {
            last.range = AddressRange(start: last.range.start, end: run.range.end)
            runs[runs.count - 1] = last
        } else {
            runs.append(run)
        }
    }
}
