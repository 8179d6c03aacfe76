import PageWatchAddressSpace
import PageWatchLog

/// The columns of the HTML page map: the address space as the log shows
/// it, every page some sweep reported (sweep 1 reports all that is
/// tracked), with the gaps between them squeezed out. The gaps can be
/// terabytes (heap at 0x55…, libraries at 0x7f…), so the map lays the
/// reported pages side by side, `pagesPerColumn` to a column, and breaks
/// them into labelled blocks at the widest gaps.
struct AddressMap {
    struct Block {
        /// From the first reported page to the end of the last (gaps inside included).
        var span: AddressRange
        /// Reported pages in it.
        var pages: UInt64
        var firstColumn: Int
        var columns: Int
        /// Its part of `pieces`.
        var pieces: Range<Int>
    }

    let pageSize: UInt64
    /// Every reported page, coalesced and sorted.
    private(set) var pieces: [AddressRange] = []
    /// Reported pages of the block before `pieces[i]`.
    private(set) var rankInBlock: [UInt64] = []
    private(set) var blockOfPiece: [Int] = []
    private(set) var blocks: [Block] = []
    private(set) var pagesPerColumn: UInt64 = 1
    var columns: Int { blocks.last.map { $0.firstColumn + $0.columns } ?? 0 }

    init(_ sweeps: [LoggedSweep], pageSize: UInt64, columns: Int = 160, maxBlocks: Int = 16) {
        self.pageSize = pageSize
        for r in sweeps.flatMap(\.ranges).sorted() where !r.isEmpty {
            if let last = pieces.last, r.start <= last.end {
                pieces[pieces.count - 1].end = max(last.end, r.end)
            } else {
                pieces.append(r)
            }
        }
        guard !pieces.isEmpty else { return }
        // Cut before the widest gaps; the others stay inside a block and take no columns.
        let gaps = pieces.indices.dropFirst().sorted {
            pieces[$0].start - pieces[$0 - 1].end > pieces[$1].start - pieces[$1 - 1].end
        }
        let cuts = Set(gaps.prefix(maxBlocks - 1))
        var bounds: [Range<Int>] = []
        var first = 0
        for i in pieces.indices.dropFirst() where cuts.contains(i) {
            bounds.append(first..<i)
            first = i
        }
        bounds.append(first..<pieces.count)

        let total = pieces.reduce(UInt64(0)) { $0 + $1.length / pageSize }
        // Each block starts a column of its own, so leave a column per block for rounding.
        let usable = UInt64(max(1, columns - bounds.count))
        pagesPerColumn = max(1, (total + usable - 1) / usable)
        var column = 0
        for (b, range) in bounds.enumerated() {
            var pages: UInt64 = 0
            for i in range {
                rankInBlock.append(pages)
                blockOfPiece.append(b)
                pages += pieces[i].length / pageSize
            }
            let used = Int((pages + pagesPerColumn - 1) / pagesPerColumn)
            blocks.append(
                Block(
                    span: AddressRange(start: pieces[range.lowerBound].start, end: pieces[range.upperBound - 1].end),
                    pages: pages, firstColumn: column, columns: used, pieces: range))
            column += used
        }
    }

    /// The piece holding `address`, by binary search.
    func piece(containing address: RemoteAddress) -> Int? {
        var low = 0, high = pieces.count
        while low < high {
            let mid = (low + high) / 2
            if pieces[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low < pieces.count && pieces[low].contains(address) ? low : nil
    }

    /// Column → pages of `ranges` in it. Every range of a sweep lies inside
    /// one piece, since the pieces are the union of all the sweeps' ranges.
    func dirtyPerColumn(_ ranges: [AddressRange]) -> [Int: UInt64] {
        var counts: [Int: UInt64] = [:]
        for r in ranges where !r.isEmpty {
            guard let i = piece(containing: r.start) else { continue }
            let block = blocks[blockOfPiece[i]]
            var rank = rankInBlock[i] + (r.start - pieces[i].start) / pageSize
            let endRank = rank + r.length / pageSize
            while rank < endRank {
                // A column at a time: one range can cover thousands of pages.
                let column = rank / pagesPerColumn
                let columnEnd = min(endRank, (column + 1) * pagesPerColumn)
                counts[block.firstColumn + Int(column), default: 0] += columnEnd - rank
                rank = columnEnd
            }
        }
        return counts
    }

    /// What a column stands for: its first page's address, the end of its
    /// last page, and how many reported pages it holds.
    func bucket(_ column: Int) -> (start: UInt64, end: UInt64, pages: UInt64) {
        let b = blocks.last { $0.firstColumn <= column }!
        let firstRank = UInt64(column - b.firstColumn) * pagesPerColumn
        let endRank = min(b.pages, firstRank + pagesPerColumn)
        return (address(ofRank: firstRank, in: b), address(ofRank: endRank - 1, in: b) + pageSize, endRank - firstRank)
    }

    private func address(ofRank rank: UInt64, in block: Block) -> UInt64 {
        let i = block.pieces.last { rankInBlock[$0] <= rank }!
        return pieces[i].start.value + (rank - rankInBlock[i]) * pageSize
    }
}
