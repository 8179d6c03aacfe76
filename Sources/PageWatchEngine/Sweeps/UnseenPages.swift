import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// A sweep's dirty pages sorted by what they hold, for `pagewatch/2`: the
/// pages PageWatch did not see written (new to it, or changed behind its
/// back) are looked up in pagemap, and those that hold nothing of the
/// process's own leave `ranges`: zero-filled ones for `zero_ranges`, pages
/// of a private file mapping still (or again) the file's for `file_ranges`.
struct UnseenPages {
    /// The pages that may hold the process's data: the sweep's `ranges`.
    var data = PageSet()
    var zero = PageSet()
    var file = PageSet()

    /// Sorts `candidates` (a subset of the dirty pages) by `entries`, the
    /// pagemap lookup; the other dirty pages stay in `data`. Only private
    /// mappings are looked at: a page of a shared mapping may hold data
    /// that is not in this process's page tables. `entries` throwing leaves
    /// the pages it was asked for in `data` (reported, as before).
    /// `zeroFilled`: whether a present anonymous page reads as zeros
    /// (asked of the pages PageWatch populated itself only).
    static func sort(
        dirty: PageSet, candidates: PageSet, maps: [Mapping],
        entries: (AddressRange) throws -> [PageMapEntry], zeroFilled: (RemoteAddress) -> Bool
    ) -> UnseenPages {
        var out = UnseenPages()
        guard !candidates.isEmpty else {
            out.data = dirty
            return out
        }
        var m = 0
        for candidate in candidates.ranges {
            while m < maps.count && maps[m].range.end <= candidate.start { m += 1 }
            var k = m
            while k < maps.count && maps[k].range.start < candidate.end {
                let mapping = maps[k]
                k += 1
                guard mapping.isPrivate, !mapping.isSpecialKernelMapping,
                    let piece = mapping.range.intersection(candidate), let found = try? entries(piece)
                else { continue }
                let isFile = mapping.isFileBacked
                var runStart = piece.start
                var runKind: Kind? = nil
                func close(at end: RemoteAddress) {
                    guard let kind = runKind, runStart < end else { return }
                    let run = AddressRange(start: runStart, end: end)
                    switch kind {
                    case .zero: out.zero.insert(run)
                    case .file: out.file.insert(run)
                    case .data: break
                    }
                }
                for (i, entry) in found.enumerated() {
                    let page = piece.start + UInt64(i) * Page.size
                    var kind: Kind
                    if entry.isSwapped {
                        kind = .data
                    } else if isFile {
                        kind = entry.isPresent && !entry.isFileOrShared ? .data : .file
                    } else {
                        kind = entry.isPresent && !entry.isSharedZeroPage ? .data : .zero
                        if kind == .data, zeroFilled(page) { kind = .zero }
                    }
                    if kind != runKind {
                        close(at: page)
                        runStart = page
                        runKind = kind
                    }
                }
                close(at: piece.start + UInt64(found.count) * Page.size)
            }
        }
        out.data = dirty.subtracting(out.zero).subtracting(out.file)
        return out
    }

    enum Kind { case data, zero, file }
}

extension ProcessTracker {
    /// The sweep's `dirty` pages by what they hold (`UnseenPages`), read
    /// after the sweep re-armed them: a write before the read made its page
    /// present (reported in `ranges`), and one after it faults and is
    /// reported by the next sweep. Pages the sweep leaves writable stay
    /// dirty and are looked at again then. Not looked at: pages seen
    /// written, pinned and presumed ones (reported as they are), and
    /// userfaultfd ranges (a missing page there is its handler's to fill).
    /// `pagewatch/1` has no place for them: every page stays in `ranges`.
    func sortUnseen(dirty: PageSet, presumed: PageSet) -> UnseenPages {
        guard session.config.schema != .v1, !memory.unseen.isEmpty else { return UnseenPages(data: dirty) }
        var candidates = dirty.intersection(memory.unseen)
        candidates = candidates.subtracting(memory.pinned).subtracting(presumed)
        if !UserfaultRanges.shared.isEmpty { candidates = candidates.subtracting(userfaultRangesHere) }
        guard !candidates.isEmpty else { return UnseenPages(data: dirty) }
        let tid = liveThread()
        guard let pagemap = try? PageMap(pid: tid) else { return UnseenPages(data: dirty) }
        let populated = memory.populated
        return UnseenPages.sort(
            dirty: dirty, candidates: candidates, maps: attribution.lastMaps,
            entries: { try pagemap.entries($0) },
            zeroFilled: { page in
                // PageWatch's own populating (one page per mapping, for its
                // anon_vma) made the page present with nothing in it.
                guard populated.contains(page),
                    let bytes = try? Ptrace.readMemory(tid, page, count: Int(Page.size)),
                    bytes.count == Int(Page.size)
                else { return false }
                return bytes.allSatisfy { $0 == 0 }
            })
    }
}
