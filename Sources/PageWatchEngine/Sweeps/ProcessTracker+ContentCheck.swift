import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// `--verify-contents`: PageWatch's own copy of every armed page, taken when
/// a sweep armed it. A page that stayed armed since (no write fault, no
/// kernel write PageWatch knew of, not new) and whose contents differ at the
/// next sweep was written unseen: a missed write. It checks the promise
/// "never miss a write" on programs that do not know their own truth. A
/// write of the same bytes stays invisible to it, and is harmless.
final class ContentCopies {
    /// A page that read as zeros is kept as an empty copy: a program with
    /// large stacks or heaps it never touched has gigabytes of them.
    var pages: [RemoteAddress: [UInt8]] = [:]
    /// Pages found changed with no write reported, over the whole run.
    var missedPages = 0
}

extension ProcessTracker {
    /// The pages of `ranges` with a copy in `copies` (but those in `except`)
    /// whose contents differ from it now.
    func pagesDiffering(
        from copies: ContentCopies, in ranges: [AddressRange], except: PageSet = PageSet(), tid: Int32
    ) -> PageSet {
        var changed = PageSet()
        for range in ranges {
            forEachChunk(of: range, tid: tid) { start, bytes in
                bytes.withUnsafeBytes { now in
                    for k in 0..<bytes.count / Int(Page.size) {
                        let page = start + UInt64(k) * Page.size
                        guard !except.contains(page), let copy = copies.pages[page] else { continue }
                        let differs =
                            copy.isEmpty
                            ? !Self.isZero(now.baseAddress! + k * Int(Page.size))
                            : copy.withUnsafeBytes {
                                memcmp(now.baseAddress! + k * Int(Page.size), $0.baseAddress!, Int(Page.size)) != 0
                            }
                        if differs { changed.insert(page: page) }
                    }
                }
            }
        }
        return changed
    }

    /// The largest read of the program's memory at once.
    static let contentChunk = 64 * Int(Page.size)

    /// Before a sweep reports: compares every page armed and clean since the
    /// last sweep with its copy. Changed pages are reported (a `missed`
    /// record, one stderr line) and counted dirty, so this sweep reports
    /// them. Skipped while another thread is inside a memory call: its
    /// mapping may change under the comparison, and the model learns of it
    /// at the call's exit.
    func checkContents(tid: Int32) {
        guard let copies = contentCopies, !memoryCallInFlight(besides: tid) else { return }
        var missed = pagesDiffering(
            from: copies, in: memory.armedPieces(in: Self.everything).map(\.range), except: memory.dirtyPages(),
            tid: tid)
        // Covered pages found changed before the scan, and not by it.
        missed.formUnion(writeProtect.missed)
        writeProtect.missed = PageSet()
        guard !missed.isEmpty else { return }
        let count = missed.ranges.reduce(0) { $0 + Int($1.pageCount) }
        copies.missedPages += count
        session.missedPages += count
        for range in missed.ranges { memory.markDirty(range) }
        emit(.missed(pid: pid, seq: sweeps + 1, pages: count, ranges: missed.ranges, timeNs: wallClockNs()))
    }

    /// After a sweep re-armed: copies the armed pages that have no copy or
    /// were dirty (re-armed now), and forgets the copies of pages no longer
    /// armed (written, unmapped).
    func copyContents(dirty: PageSet, tid: Int32) {
        guard let copies = contentCopies else { return }
        var armed = PageSet()
        for piece in memory.armedPieces(in: Self.everything) { armed.insert(piece.range) }
        // Write-protected again by the sweep's scan, like armed pages.
        armed.formUnion(writeProtect.covered)
        copies.pages = copies.pages.filter { armed.contains($0.key) && !dirty.contains($0.key) }
        var needed = PageSet()
        for range in armed.ranges {
            var page = range.start
            while page < range.end {
                if copies.pages[page] == nil { needed.insert(page: page) }
                page = page + Page.size
            }
        }
        for range in needed.ranges {
            forEachChunk(of: range, tid: tid) { start, bytes in
                bytes.withUnsafeBytes { all in
                    for k in 0..<bytes.count / Int(Page.size) {
                        let page = all.baseAddress! + k * Int(Page.size)
                        copies.pages[start + UInt64(k) * Page.size] =
                            Self.isZero(page) ? [] : Array(UnsafeRawBufferPointer(start: page, count: Int(Page.size)))
                    }
                }
            }
        }
    }

    /// Reads `range` in chunks; a chunk that cannot be read whole (unmapped
    /// meanwhile by a running thread) is skipped: those pages go unchecked.
    func forEachChunk(of range: AddressRange, tid: Int32, _ body: (RemoteAddress, [UInt8]) -> Void) {
        var start = range.start
        while start < range.end {
            let count = min(Self.contentChunk, Int(range.end - start))
            if let bytes = try? Ptrace.readMemory(tid, start, count: count), bytes.count == count { body(start, bytes) }
            start = start + UInt64(count)
        }
    }

    /// Whether the page at `bytes` is all zeros (memcmp with a page of
    /// zeros: a loop in Swift was slower by far in debug builds, where the
    /// tests run, on a JVM's gigabytes of them).
    static func isZero(_ bytes: UnsafeRawPointer) -> Bool {
        memcmp(bytes, zeroPage, Int(Page.size)) == 0
    }

    nonisolated(unsafe) static let zeroPage: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: Int(Page.size), alignment: Int(Page.size))
        p.initializeMemory(as: UInt8.self, repeating: 0, count: Int(Page.size))
        return p
    }()

    static let everything = AddressRange(start: RemoteAddress(0), end: RemoteAddress(UInt64.max & ~(Page.size - 1)))
}
