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

    /// Sorts `candidates` (a subset of the dirty pages) by `runs`, the
    /// pagemap lookup (`PageMap.runs`: the present or swapped pages; the
    /// others are neither); the other dirty pages stay in `data`. Only
    /// private mappings are looked at: a page of a shared mapping may hold
    /// data that is not in this process's page tables. `runs` throwing
    /// leaves the pages it was asked for in `data` (reported, as before).
    /// `zeroFilled`: whether a present anonymous page reads as zeros, asked
    /// of the pages in `populated` (PageWatch's own populating) only.
    static func sort(
        dirty: PageSet, candidates: PageSet, maps: [Mapping], populated: PageSet = PageSet(),
        runs: (AddressRange) throws -> [PageMapRun], zeroFilled: (RemoteAddress) -> Bool
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
                    let piece = mapping.range.intersection(candidate), let found = try? runs(piece)
                else { continue }
                let isFile = mapping.isFileBacked
                // A page in no run is neither present nor swapped.
                let absent: Kind = isFile ? .file : .zero
                var cursor = piece.start
                for run in found {
                    // Runs come in order; one overlapping what is sorted already is cut.
                    guard let r = run.range.intersection(AddressRange(start: cursor, end: piece.end)) else { continue }
                    out.add(AddressRange(start: cursor, end: r.start), absent)
                    let kind: Kind =
                        run.isSwapped
                        ? .data
                        : isFile
                            ? (run.isPresent && !run.isFilePage ? .data : .file)
                            : (run.isPresent && !run.isZeroPage ? .data : .zero)
                    out.add(r, kind)
                    if kind == .data, !isFile {
                        // PageWatch's own populating made a page present with nothing in it.
                        for p in populated.intersection(r).ranges {
                            var page = p.start
                            while page < p.end {
                                if zeroFilled(page) { out.zero.insert(page: page) }
                                page = page + Page.size
                            }
                        }
                    }
                    cursor = r.end
                }
                out.add(AddressRange(start: cursor, end: piece.end), absent)
            }
        }
        out.data = dirty.subtracting(out.zero).subtracting(out.file)
        return out
    }

    mutating func add(_ range: AddressRange, _ kind: Kind) {
        guard range.start < range.end else { return }
        switch kind {
        case .zero: zero.insert(range)
        case .file: file.insert(range)
        case .data: break
        }
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
        var held = sortTrackedUnseen(dirty: dirty, presumed: presumed)
        // Write-protected pages were sorted when they became unseen
        // (`WriteProtectedMemory.zeroKnown`): pagemap shows their pte
        // markers as swapped pages.
        guard session.config.schema != .v1, writeProtect.isActive else { return held }
        let zero = writeProtect.zeroNow.intersection(dirty)
        held.zero.formUnion(zero)
        held.data = held.data.subtracting(zero)
        return held
    }

    func sortTrackedUnseen(dirty: PageSet, presumed: PageSet) -> UnseenPages {
        guard session.config.schema != .v1, !memory.unseen.isEmpty else { return UnseenPages(data: dirty) }
        var candidates = dirty.intersection(memory.unseen)
        candidates = candidates.subtracting(memory.pinned).subtracting(presumed)
        if !UserfaultRanges.shared.isEmpty { candidates = candidates.subtracting(userfaultRangesHere) }
        guard !candidates.isEmpty else { return UnseenPages(data: dirty) }
        // Any thread's view will do, but at an exit the one PageWatch takes
        // for live may have left the address space already.
        // A loop, not `lazy.compactMap(...).first`: that evaluates its
        // closure twice for the element it returns, and a thread leaving
        // the address space in between made the second look nil (a trap).
        var found: (tid: Int32, pagemap: PageMap)?
        for tid in [liveThread()] + threads.keys.sorted() {
            if let pagemap = try? PageMap(pid: tid), pagemap.hasAddressSpace {
                found = (tid, pagemap)
                break
            }
        }
        guard let (tid, pagemap) = found else { return UnseenPages(data: dirty) }
        let populated = memory.populated
        return UnseenPages.sort(
            dirty: dirty, candidates: candidates, maps: attribution.lastMaps, populated: populated,
            runs: { try pagemap.runs($0) },
            zeroFilled: { page in
                guard let bytes = try? Ptrace.readMemory(tid, page, count: Int(Page.size)),
                    bytes.count == Int(Page.size)
                else { return false }
                return bytes.allSatisfy { $0 == 0 }
            })
    }
}
