import Glibc
import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace

/// `PageMap.runs`: PAGEMAP_SCAN and the entries read one by one say the
/// same of this process's own pages.
@Suite struct PageMapTests {
    let size = Int(Page.size)

    func address(_ p: UnsafeMutableRawPointer, page: Int) -> RemoteAddress {
        RemoteAddress(UInt64(UInt(bitPattern: p)) + UInt64(page) * Page.size)
    }

    @Test func scanAndEntriesAgree() throws {
        // 32 anonymous pages: 0-7 written, 8-9 read (the zero page), 10-11
        // written and paged out (in swap where there is swap), the rest untouched.
        let anon = try #require(
            mmap(nil, 32 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).flatMap {
                $0 == MAP_FAILED ? nil : $0
            })
        defer { munmap(anon, 32 * size) }
        for page in [0, 1, 2, 3, 4, 5, 6, 7, 10, 11] {
            anon.storeBytes(of: UInt8(page + 1), toByteOffset: page * size, as: UInt8.self)
        }
        let read =
            (anon.load(fromByteOffset: 8 * size, as: UInt8.self) | anon.load(fromByteOffset: 9 * size, as: UInt8.self))
        #expect(read == 0)
        _ = madvise(anon + 10 * size, 2 * size, 21)  // MADV_PAGEOUT

        // 8 pages of a private file mapping: 0-3 read, 4 written, the rest untouched.
        var template = Array("/tmp/pagewatch-pagemap-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        #expect(fd >= 0)
        unlink(template)
        defer { close(fd) }
        #expect(ftruncate(fd, off_t(8 * size)) == 0)
        let file = try #require(
            mmap(nil, 8 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0).flatMap { $0 == MAP_FAILED ? nil : $0 })
        defer { munmap(file, 8 * size) }
        var sum: UInt8 = 0
        for page in 0..<4 { sum |= file.load(fromByteOffset: page * size, as: UInt8.self) }
        #expect(sum == 0)
        file.storeBytes(of: 1, toByteOffset: 4 * size, as: UInt8.self)

        let pagemap = try PageMap(pid: getpid())
        let anonRange = AddressRange(start: address(anon, page: 0), end: address(anon, page: 32))
        let fileRange = AddressRange(start: address(file, page: 0), end: address(file, page: 8))
        let frames = PageMap.zeroPageFrame != nil
        for range in [anonRange, fileRange] {
            let read = try pagemap.readRuns(range)
            guard let scanned = try pagemap.scannedRuns(range) else { continue }  // before Linux 6.7
            // Without CAP_SYS_ADMIN the entries cannot tell the zero page.
            let strip = { (runs: [PageMapRun]) in
                runs.map {
                    PageMapRun(
                        range: $0.range, isPresent: $0.isPresent, isSwapped: $0.isSwapped, isFilePage: $0.isFilePage,
                        isZeroPage: false)
                }
            }
            if frames { #expect(scanned == read) } else { #expect(strip(scanned).count >= strip(read).count) }
        }
        let runs = try pagemap.runs(anonRange)
        func run(at page: Int) -> PageMapRun? { runs.first { $0.range.contains(address(anon, page: page)) } }
        #expect(run(at: 0)?.range == AddressRange(start: address(anon, page: 0), end: address(anon, page: 8)))
        #expect(run(at: 0)?.isPresent == true && run(at: 0)?.isZeroPage == false)
        #expect(run(at: 8)?.isPresent == true)
        if frames || (try? pagemap.scannedRuns(anonRange)) != nil { #expect(run(at: 8)?.isZeroPage == true) }
        if let swapped = run(at: 10), swapped.isSwapped {
            #expect(!swapped.isPresent)
        } else {
            #expect(run(at: 10)?.isPresent == true)
        }
        #expect(run(at: 12) == nil && run(at: 31) == nil)

        let fileRuns = try pagemap.runs(fileRange)
        func fileRun(at page: Int) -> PageMapRun? { fileRuns.first { $0.range.contains(address(file, page: page)) } }
        #expect(fileRun(at: 0)?.isFilePage == true)
        #expect(fileRun(at: 4)?.isPresent == true && fileRun(at: 4)?.isFilePage == false)
        // Untouched: absent, or mapped by the kernel's fault-around as page-cache pages.
        #expect(fileRun(at: 6).map { $0.isFilePage } ?? true)
    }

    /// Exactly as many runs as one PAGEMAP_SCAN call returns: the kernel
    /// (6.18) then says it stopped below the last of them.
    @Test func aFullScanVectorIsNotReadTwice() throws {
        let pages = 4 * PageMap.scanRegions
        let region = try #require(
            mmap(nil, pages * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0).flatMap {
                $0 == MAP_FAILED ? nil : $0
            })
        defer { munmap(region, pages * size) }
        for k in 0..<PageMap.scanRegions { region.storeBytes(of: 1, toByteOffset: 2 * k * size, as: UInt8.self) }
        let pagemap = try PageMap(pid: getpid())
        let range = AddressRange(start: address(region, page: 0), end: address(region, page: pages))
        guard let scanned = try pagemap.scannedRuns(range) else { return }  // before Linux 6.7
        #expect(scanned == (try pagemap.readRuns(range)))
        #expect(scanned.count == PageMap.scanRegions)
    }

    @Test func runsMergeOnlyAlike() {
        var runs: [PageMapRun] = []
        let a = PageMapRun(
            range: AddressRange(0, 4096), isPresent: true, isSwapped: false, isFilePage: false, isZeroPage: false)
        var b = a
        b.range = AddressRange(4096, 8192)
        var c = b
        c.range = AddressRange(8192, 12288)
        c.isZeroPage = true
        for r in [a, b, c] { PageMapRun.append(r, to: &runs) }
        #expect(runs.map(\.range) == [AddressRange(0, 8192), AddressRange(8192, 12288)])
    }
}
