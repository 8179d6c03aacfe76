import Testing
import PageWatchAddressSpace
@testable import PageWatchEngine

/// `reconcile(maps:within:…)` against the whole reconcile, on synthetic maps
/// where only the range changed.
extension TrackedMemoryTests {
    /// One tracked page's whole state.
    struct PageRow: Equatable, CustomStringConvertible {
        var page: UInt64
        var protection: Protection
        var armed: Bool
        var dirty: Bool
        var description: String { "\(String(page, radix: 16)) \(protection) \(armed ? "A" : "-")\(dirty ? "D" : "-")" }
    }

    func rows(_ m: TrackedMemory) -> [PageRow] {
        m.regions.flatMap { r in
            (0..<r.armed.pageCount).map { i in
                PageRow(
                    page: r.address(ofPage: i).value, protection: r.protection, armed: r.armed[i], dirty: r.dirty[i])
            }
        }
    }

    /// `logical` (the mappings as the program made them) as maps shows them
    /// with `armed` pages without write: the kernel splits a VMA there, and
    /// joins neighbours that have become alike.
    func shown(_ logical: [Mapping], armed: PageSet) -> [Mapping] {
        var out: [Mapping] = []
        for m in logical.sorted(by: { $0.range < $1.range }) {
            var pieces: [(AddressRange, Bool)] = []
            var at = m.range.start
            for a in armed.intersection(m.range).ranges {
                if at < a.start { pieces.append((AddressRange(start: at, end: a.start), false)) }
                pieces.append((a, true))
                at = a.end
            }
            if at < m.range.end { pieces.append((AddressRange(start: at, end: m.range.end), false)) }
            for (range, isArmed) in pieces {
                var e = m
                e.range = range
                e.offset = m.inode == 0 ? 0 : m.offset + (range.start - m.range.start)
                if isArmed { e.protection = m.protection.armed }
                if let last = out.last, last.range.end == e.range.start, last.protection == e.protection,
                    last.isPrivate == e.isPrivate, last.inode == e.inode, last.path == e.path,
                    last.inode == 0 || last.offset + last.range.length == e.offset
                {
                    out[out.count - 1].range = AddressRange(start: last.range.start, end: e.range.end)
                } else {
                    out.append(e)
                }
            }
        }
        return out
    }

    /// The model after the whole reconcile of `after` and after the ranged
    /// one of the entries overlapping `range` (plus `whole`, entries the
    /// caller adds so that a mapping decided as a whole is whole), from the
    /// same model: equal, page by page, region by region, pins included.
    @discardableResult
    func expectRangedEqualsWhole(
        _ model: TrackedMemory, after: [Mapping], range: AddressRange, whole: [Mapping] = [],
        selection: Selection = Selection([]), anchors: [RemoteAddress] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> TrackedMemory {
        var full = model, ranged = model
        full.reconcile(maps: after, selection: selection, stackAnchors: anchors)
        let overlapping = after.filter { $0.range.overlaps(range.pageAligned) || whole.contains($0) }
        ranged.reconcile(maps: overlapping, within: range, selection: selection, stackAnchors: anchors)
        #expect(rows(ranged) == rows(full), sourceLocation: sourceLocation)
        #expect(ranged.regions.map(\.range) == full.regions.map(\.range), sourceLocation: sourceLocation)
        #expect(ranged.pinned == full.pinned, sourceLocation: sourceLocation)
        return ranged
    }

    /// A model of `logical`, armed at a sweep, then `written` pages faulted.
    func model(
        _ logical: [Mapping], written: [UInt64], selection: Selection = Selection([]),
        anchors: [RemoteAddress] = []
    ) -> TrackedMemory {
        var m = TrackedMemory()
        m.reconcile(maps: logical, selection: selection, stackAnchors: anchors)
        for c in m.rearmPlan() { m.markArmed(c.range) }
        for a in written { m.markWritten(RemoteAddress(a)) }
        // Maps as the kernel shows it now agrees with the model.
        m.reconcile(maps: shown(logical, armed: m.armedPages()), selection: selection, stackAnchors: anchors)
        return m
    }

    func file(_ a: UInt64, _ b: UInt64, _ prot: Protection, offset: UInt64 = 0) -> Mapping {
        Mapping(
            range: AddressRange(a, b), protection: prot, isPrivate: true, offset: offset, device: "fe:01",
            inode: 42, path: "/usr/lib/libx.so")
    }

    @Test func rangedReconcileOfANewMappingInAHole() {
        let logical = [anon(0x10000, 0x18000, rw), anon(0x30000, 0x38000, rw)]
        let m = model(logical, written: [0x11000, 0x31000])
        let armed = m.armedPages()
        let new = anon(0x20000, 0x24000, rw)
        expectRangedEqualsWhole(m, after: shown(logical + [new], armed: armed), range: new.range)
        // Not page-aligned: widened to pages.
        expectRangedEqualsWhole(
            m, after: shown(logical + [new], armed: armed), range: AddressRange(0x20800, 0x23800))
        // Read-only: nothing new tracked.
        let readOnly = anon(0x20000, 0x24000, [.read])
        expectRangedEqualsWhole(m, after: shown(logical + [readOnly], armed: armed), range: readOnly.range)
    }

    @Test func rangedReconcileOfAMappingJoiningItsNeighbour() {
        // The neighbour's last page was written (writable): the kernel merges
        // the new mapping into its VMA, an entry that straddles the range's start.
        let logical = [anon(0x10000, 0x18000, rw)]
        let m = model(logical, written: [0x17000])
        let after = shown([anon(0x10000, 0x1a000, rw)], armed: m.armedPages())
        #expect(after.last?.range == AddressRange(0x17000, 0x1a000))
        expectRangedEqualsWhole(m, after: after, range: AddressRange(0x18000, 0x1a000))
    }

    @Test func rangedReconcileOfAMappingReplacingPartOfARegion() {
        let logical = [anon(0x10000, 0x20000, rw)]
        let m = model(logical, written: [0x13000, 0x14000, 0x17000])
        let armed = m.armedPages()
        // mmap(MAP_FIXED) of a file, writable or not, over 0x14000-0x16000.
        for prot: Protection in [rw, [.read], [.read, .write, .execute]] {
            let after =
                shown([anon(0x10000, 0x14000, rw)], armed: armed) + [file(0x14000, 0x16000, prot)]
                + shown([anon(0x16000, 0x20000, rw)], armed: armed)
            expectRangedEqualsWhole(m, after: after, range: AddressRange(0x14000, 0x16000))
        }
        // A fresh anonymous mapping there: a new VMA the kernel does not merge
        // with the armed pages around it (it is writable, they are not).
        let fresh =
            shown([anon(0x10000, 0x14000, rw)], armed: armed) + [anon(0x14000, 0x16000, rw)]
            + shown([anon(0x16000, 0x20000, rw)], armed: armed)
        expectRangedEqualsWhole(m, after: fresh, range: AddressRange(0x14000, 0x16000))
    }

    @Test func rangedReconcileOfProtectionChanges() {
        let logical = [anon(0x10000, 0x20000, rw), anon(0x20000, 0x28000, [.read]), file(0x28000, 0x2c000, rw)]
        let m = model(logical, written: [0x12000, 0x1f000, 0x29000])
        let armed = m.armedPages()
        let target = AddressRange(0x1c000, 0x24000)  // across a tracked and an untracked mapping
        for prot: Protection in [[.read], rw, [.read, .write, .execute], []] {
            let after =
                shown([anon(0x10000, 0x1c000, rw)], armed: armed) + [anon(0x1c000, 0x24000, prot)]
                + [anon(0x24000, 0x28000, [.read])] + shown([file(0x28000, 0x2c000, rw)], armed: armed)
            expectRangedEqualsWhole(m, after: shown(after, armed: PageSet()), range: target)
        }
        // Run armed (PageWatch took write away): maps shows the target armed.
        let ranArmed =
            shown([anon(0x10000, 0x1c000, rw)], armed: armed) + [anon(0x1c000, 0x24000, [.read])]
            + [anon(0x24000, 0x28000, [.read])] + shown([file(0x28000, 0x2c000, rw)], armed: armed)
        var writable = m
        writable.setProtection(target, rw, armAll: true)
        expectRangedEqualsWhole(writable, after: shown(ranArmed, armed: PageSet()), range: target)
        // A file mapping's piece: its offset moves with its start.
        let filePiece =
            shown(logical.dropLast(), armed: armed) + shown([file(0x28000, 0x2a000, rw)], armed: armed)
            + [file(0x2a000, 0x2c000, [.read], offset: 0x2000)]
        expectRangedEqualsWhole(m, after: filePiece, range: AddressRange(0x2a000, 0x2c000))
    }

    @Test func rangedReconcileOfTheMainStack() {
        let stack = Mapping(
            range: AddressRange(0x7ff0_0000, 0x7ff0_8000), protection: rw, isPrivate: true, path: "[stack]")
        let below = anon(0x7fe0_0000, 0x7fe0_4000, rw)
        let m = model([below, stack], written: [0x7ff0_5000])
        #expect(m.isPinned(RemoteAddress(0x7ff0_0000)))
        /// Maps as the kernel labels it: `[stack]` only on the piece holding the initial stack pointer.
        func labelled(_ maps: [Mapping], at sp: UInt64 = 0x7ff0_7800) -> [Mapping] {
            maps.map { e in
                var e = e
                if e.range.start.value >= 0x7fef_0000 {
                    e.path = e.range.contains(RemoteAddress(sp)) ? "[stack]" : ""
                }
                return e
            }
        }
        let armed = m.armedPages()
        // The stack grew down by two pages (the lowest VMA, never armed, grew).
        let grown = labelled(shown([below, anon(0x7fef_e000, 0x7ff0_8000, rw)], armed: armed))
        #expect(grown.count > 3)
        let stackEntries = grown.filter { $0.range.end.value > 0x7fef_e000 }
        let afterGrowth = expectRangedEqualsWhole(
            m, after: grown, range: AddressRange(0x7fef_e000, 0x7ff0_0000), whole: stackEntries)
        #expect(afterGrowth.isPinned(RemoteAddress(0x7fef_e000)))
        // mprotect of a piece in the middle, the whole stack given. Made
        // executable, the piece splits the stack in three mappings (only the
        // top one the main stack): with --track stack that changes what is
        // selected below the range, so there the engine reads all of maps.
        let middle = AddressRange(0x7ff0_2000, 0x7ff0_4000)
        let cases: [(Protection, Selection)] = [
            ([.read, .write, .execute], Selection([])), ([.read], Selection([])), ([.read], Selection([.stack])),
        ]
        for (prot, selection) in cases {
            let m = model([below, stack], written: [0x7ff0_5000], selection: selection)
            let armed = m.armedPages()
            let after = labelled(
                shown([below, anon(0x7ff0_0000, 0x7ff0_2000, rw)], armed: armed)
                    + [anon(0x7ff0_2000, 0x7ff0_4000, prot)]
                    + shown([anon(0x7ff0_4000, 0x7ff0_8000, rw)], armed: armed))
            expectRangedEqualsWhole(
                m, after: after, range: middle, whole: after.filter { $0.range.start.value >= 0x7ff0_0000 },
                selection: selection)
        }
    }

    @Test func rangedReconcileOfAThreadStack() {
        // --track stack: a thread stack is known by its anchor, anywhere in its mapping.
        let logical = [anon(0x40000, 0x50000, rw), anon(0x60000, 0x68000, rw)]
        let anchors = [RemoteAddress(0x4ffff)]
        let m = model(logical, written: [0x41000, 0x4f000], selection: Selection([.stack]), anchors: anchors)
        #expect(m.trackedPageCount == 16)
        let after = shown(logical + [anon(0x50000, 0x52000, [.read])], armed: m.armedPages())
        expectRangedEqualsWhole(
            m, after: after, range: AddressRange(0x40000, 0x42000),
            whole: after.filter { $0.range.end.value <= 0x52000 },
            selection: Selection([.stack]), anchors: anchors)
    }

    @Test func rangedReconcileLeavesTheRestAlone() {
        // Outside the range the model stays as it was, even where maps (not
        // given) would say otherwise: only the range is decided.
        let logical = [anon(0x10000, 0x18000, rw), anon(0x20000, 0x28000, rw)]
        var m = model(logical, written: [0x11000])
        let before = m.regions.map(\.range)
        m.reconcile(
            maps: [anon(0x20000, 0x28000, [.read])], within: AddressRange(0x20000, 0x22000), selection: Selection([]),
            stackAnchors: [])
        #expect(m.regions.first?.range == before.first)
        #expect(m.state(of: RemoteAddress(0x11000)) == .writable(rw))
        #expect(m.state(of: RemoteAddress(0x23000)) == .armed(rw))
        // Shown r-- where PageWatch had armed: kept, armed, in one region again.
        #expect(m.regions.map(\.range) == before)
    }
}
