internal import CPtrace
import Glibc
import PageWatchAddressSpace

/// What one `PAGEMAP_SCAN` sweep of memory under asynchronous
/// userfaultfd write-protection found: the pages written since they were
/// last write-protected, and among them those that map the kernel's zero
/// page (read, never written: a page populated after its range was
/// protected is mapped without the bit, by a read as by a write).
public struct WrittenPages: Sendable, Equatable {
    public var written = PageSet()
    public var zeroPages = PageSet()

    public init() {}
}

/// `PAGEMAP_SCAN` (Linux 6.7+) on `/proc/PID/pagemap` for pages written
/// under asynchronous uffd-WP (`PAGE_IS_WRITTEN`: present or swapped
/// without the write-protect bit), write-protecting them again in the same
/// walk (`PM_SCAN_WP_MATCHING`), so that a write racing with the scan is
/// either found now or faults and is found by the next scan. Needs no stop
/// of the process. `PM_SCAN_CHECK_WPASYNC` makes a VMA without
/// asynchronous write-protection an error (EPERM) instead of being skipped.
///
/// `onlyData`: pages present or swapped only (`category_anyof_mask`), for
/// ranges whose holes carry no protection. Such a hole counts written
/// otherwise (no write-protect bit), and the walk skips the 2 MiB pieces
/// without a page table instead of visiting each of their pages.
public enum PageMapScan {
    /// Regions per ioctl; the kernel stops where the vector is full and
    /// says where (`walk_end`), and the scan goes on from there.
    static let regions = 4096

    public static func takeWritten(
        _ range: AddressRange, in pagemap: PageMap, reprotect: Bool = true, onlyData: Bool = false
    ) throws -> WrittenPages {
        var found = WrittenPages()
        var vector = [pw_page_region](repeating: pw_page_region(), count: regions)
        var start = range.start.value
        while start < range.end.value {
            var arg = pw_pm_scan_arg()
            let n = vector.withUnsafeMutableBufferPointer { buffer in
                arg.size = UInt64(MemoryLayout<pw_pm_scan_arg>.size)
                arg.flags =
                    UInt64(PW_PM_SCAN_CHECK_WPASYNC) | (reprotect ? UInt64(PW_PM_SCAN_WP_MATCHING) : 0)
                arg.start = start
                arg.end = range.end.value
                arg.vec = UInt64(UInt(bitPattern: buffer.baseAddress))
                arg.vec_len = UInt64(buffer.count)
                arg.category_mask = UInt64(PW_PAGE_IS_WRITTEN)
                if onlyData { arg.category_anyof_mask = UInt64(PW_PAGE_IS_PRESENT | PW_PAGE_IS_SWAPPED) }
                arg.return_mask = UInt64(PW_PAGE_IS_WRITTEN | PW_PAGE_IS_PFNZERO)
                return pw_pagemap_scan(pagemap.fd, &arg)
            }
            if n < 0 {
                throw TraceError.call(
                    "PAGEMAP_SCAN /proc/\(pagemap.pid)/pagemap", Errno(-n), tid: pagemap.pid,
                    address: RemoteAddress(start))
            }
            for region in vector[0..<Int(n)] where region.start < region.end {
                let r = AddressRange(region.start, region.end)
                found.written.insert(r)
                if Int(truncatingIfNeeded: region.categories) & Int(PW_PAGE_IS_PFNZERO) != 0 {
                    found.zeroPages.insert(r)
                }
            }
            // A short walk (the vector filled up) ends below `end`: go on
            // from there. One that did not move on cannot be trusted to
            // have seen the rest: an error, not a silent end.
            if arg.walk_end >= range.end.value { break }
            guard arg.walk_end > start else {
                throw TraceError.call(
                    "PAGEMAP_SCAN /proc/\(pagemap.pid)/pagemap (walk stalled)", .EIO, tid: pagemap.pid,
                    address: RemoteAddress(start))
            }
            start = arg.walk_end
        }
        return found
    }
}
