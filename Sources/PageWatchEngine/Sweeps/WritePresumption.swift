import Glibc
import PageWatchAddressSpace
import PageWatchLog

/// When PageWatch may leave pages writable and report them without a fault.
public enum PresumeMode: String, Sendable, CaseIterable {
    /// Only when the program starves: interval sweeps, and PageWatch's own
    /// work took more than `WritePresumption.pressureShare` of the interval.
    case auto
    /// Never: every reported page was seen written (or is new, pinned, ...).
    case never
    /// At every sweep that re-arms, whatever the cost (tests, and users who
    /// want the cheapest tracking of a hot working set).
    case always
}

/// Presumed writes: the cure for starvation at short intervals. A program
/// that rewrites the same pages all the time faults on all of them after
/// every sweep; once that work approaches the interval, the program makes
/// almost no progress between sweeps, and the slower it runs the more
/// sweeps (and faults) its work takes. A page seen written again within
/// `recentIntervals` intervals of an earlier write is instead left writable
/// and reported as dirty by every sweep, written or not, until the
/// presumption ends: then every presumed page is re-armed for a check, and
/// those written again are presumed again at once. A presumption lasts
/// `sweepsPerCheck` sweeps, twice as long each time it resumes right after
/// a check, up to about `longestPresumptionNs` (in sweeps at least
/// `sweepsPerCheck`, at most `maxSweepsPerCheck`).
///
/// Never a missed write: a presumed page is writable and dirty in the model,
/// so every sweep until it is re-armed reports it (ranges stay a superset),
/// and the sweep record names those pages (`presumed`).
///
/// Gaps of at most `gapPages` pages between presumed runs are presumed too
/// (`filled`: the sweep un-arms them): each writable run inside an armed
/// VMA splits it in three, and a program's rewritten pages lie in many
/// small runs (python's: most of them 1 to 8 pages apart), so filling them
/// keeps its VMA count near the untracked one for a few hundred more
/// pages reported presumed each sweep.
///
/// Between the sweeps of a presumption, a write fault fills such a gap
/// too, between its page and a page already writable (`filledAtFaults`):
/// the program's fresh writes land in small runs a few pages apart (python's
/// allocator writes 8 pages of every 12), and un-armed page by page each
/// run is a VMA of its own until the next sweep. Those gaps are reported
/// presumed by the next sweep and re-armed with their neighbours.
struct WritePresumption {
    /// The shortest presumption, in sweeps.
    static let sweepsPerCheck = 8
    /// The longest, in sweeps and in time.
    static let maxSweepsPerCheck = 64
    static let longestPresumptionNs: UInt64 = 8_000_000_000
    /// How far back an earlier write makes a page's new write a rewrite.
    static let recentIntervals = 32
    /// The share of an interval's wall time PageWatch's handling of the
    /// process's stops must exceed for `auto` to presume.
    static let pressureShare = 0.25
    /// The widest gap between presumed runs that is presumed too, in pages
    /// (`PAGEWATCH_PRESUME_GAP`: another width, for measurements; 0 fills none).
    static let gapPages = getenv("PAGEWATCH_PRESUME_GAP").flatMap { Int(String(cString: $0)) } ?? 64
    /// The widest gap a write fault fills beside its page, in pages
    /// (`PAGEWATCH_FAULT_GAP`: another width, for measurements; 0 fills none).
    static let faultGapPages = getenv("PAGEWATCH_FAULT_GAP").flatMap { Int(String(cString: $0)) } ?? 64

    let mode: PresumeMode
    /// The longest presumption at this interval, in sweeps.
    let longest: Int
    /// Pages left writable by presumption now (reported by the next sweep unseen).
    private(set) var presumed = PageSet()
    /// The part of `presumed` that fills gaps between presumed runs (none
    /// of it seen written); the pages of it armed now, the sweep un-arms.
    private(set) var filled = PageSet()
    /// Pages un-armed by write faults to fill a gap beside their page
    /// since the last sweep (none of them seen written).
    private(set) var filledAtFaults = PageSet()
    /// Whether write faults fill gaps now: the last sweep presumed.
    private(set) var fillsAtFaults = false
    /// Sweeps until `presumed` is re-armed, and how long this presumption lasts.
    private var sweepsLeft = 0
    private var length = Self.sweepsPerCheck
    /// Sweeps since the last check (presumed pages re-armed).
    private var sinceCheck = Int.max
    /// The pages armed when the last sweep was done: those of them dirty now
    /// were seen written since (a fault, or the kernel for a syscall).
    private var armedAtLastSweep = PageSet()
    /// The pages written (seen, or presumed) in each of the last intervals, newest last.
    private var recent: [PageSet] = []

    /// `intervalNs`: the `--interval` (0: sweeps at a signal only).
    init(mode: PresumeMode, intervalNs: UInt64) {
        self.mode = mode
        let inTime = intervalNs > 0 ? Int(Self.longestPresumptionNs / intervalNs) : Self.sweepsPerCheck
        longest = min(Self.maxSweepsPerCheck, max(Self.sweepsPerCheck, inTime))
    }

    /// Whether this sweep may presume: always, or under `auto` an interval
    /// sweep after an interval in which PageWatch was busy for more than
    /// `pressureShare` of the time.
    func applies(toInterval: Bool, busyNs: UInt64, elapsedNs: UInt64) -> Bool {
        switch mode {
        case .never: return false
        case .always: return true
        case .auto:
            return toInterval && elapsedNs > 0 && Double(busyNs) > Self.pressureShare * Double(elapsedNs)
        }
    }

    /// The pages of `dirty` this sweep reports presumed, not seen written:
    /// those left writable by presumption that still are (`eligible`).
    func unseen(dirty: PageSet, eligible: PageSet) -> PageSet {
        var unseen = presumed
        unseen.formUnion(filledAtFaults)
        return unseen.intersection(dirty).intersection(eligible)
    }

    /// Whether a sweep now reports pages it did not see written.
    var leavesPagesUnseen: Bool { !presumed.isEmpty || !filledAtFaults.isEmpty }

    /// A write fault un-armed `gap` beside its own page.
    mutating func filledAtFault(_ gap: AddressRange) { filledAtFaults.insert(gap) }

    /// A sweep that re-arms reports `dirty`: the pages to leave writable
    /// (presumed) until the next sweep. `eligible`: pages that may be
    /// presumed at all (writable to the program, not armed, not pinned).
    /// Pages new to PageWatch (a new mapping) were not seen written, so
    /// only pages written in two intervals in a row are presumed.
    /// `fillable`: pages a gap may be filled with (writable to the program,
    /// tracked, not pinned); those armed now the sweep must un-arm (`filled`).
    mutating func decide(dirty: PageSet, eligible: PageSet, fillable: PageSet, presume: Bool) -> PageSet {
        let unseen = unseen(dirty: dirty, eligible: eligible)
        // Gaps filled at faults were armed at the last sweep, not seen
        // written since: re-armed now, never presumed for themselves.
        let seen = dirty.intersection(armedAtLastSweep).subtracting(filledAtFaults)
        var filledBefore = filled
        filledBefore.formUnion(filledAtFaults)
        presumed = unseen.subtracting(filledAtFaults)
        filledAtFaults = PageSet()
        fillsAtFaults = presume && Self.faultGapPages > 0
        if sinceCheck < Int.max { sinceCheck += 1 }
        if !presumed.isEmpty {
            sweepsLeft -= 1
            if sweepsLeft <= 0 {
                presumed = PageSet()  // re-armed now: the next interval checks them
                sinceCheck = 0
            }
        }
        if presume {
            var writtenRecently = PageSet()
            for set in recent { writtenRecently.formUnion(set) }
            let candidates = seen.intersection(writtenRecently).intersection(eligible)
            if !candidates.isEmpty {
                if presumed.isEmpty {
                    // Still rewritten right after a check: presumed longer this time.
                    length = sinceCheck <= 2 ? min(2 * length, longest) : Self.sweepsPerCheck
                    sweepsLeft = length
                }
                presumed.formUnion(candidates)
            }
        }
        fillGaps(within: fillable)
        if !presume && presumed.isEmpty && (sinceCheck == Int.max || sinceCheck > Self.recentIntervals) {
            // Nothing presumed, no pressure, and no check in the recent
            // intervals (whose pages, rewritten, are presumed again at once):
            // no history is kept (a sweep of scattered pages would pay for it
            // every time); pressure starts it again, and presumption follows
            // from the sweep after.
            reset()
            return presumed
        }
        // A filled gap was presumed for its neighbours, not for a write of its own.
        var written = unseen.subtracting(filledBefore)
        written.formUnion(seen)
        recent.append(written)
        if recent.count > Self.recentIntervals { recent.removeFirst() }
        return presumed
    }

    /// Adds to `presumed` the gaps of at most `gapPages` pages between its
    /// runs that lie wholly in `fillable`; `filled` is those gaps, and those
    /// filled before that are still presumed.
    private mutating func fillGaps(within fillable: PageSet) {
        filled = filled.intersection(presumed)
        guard Self.gapPages > 0 else { return }
        let runs = presumed.ranges
        for (a, b) in zip(runs, runs.dropFirst()) {
            let gap = AddressRange(start: a.end, end: b.start)
            guard gap.pageCount <= UInt64(Self.gapPages), fillable.intersection(gap).pageCount == gap.pageCount
            else { continue }
            filled.insert(gap)
        }
        presumed.formUnion(filled)
    }

    /// Whether a sweep has anything to do for presumption: pages presumed,
    /// or a history kept since the last sweep under pressure.
    var isActive: Bool { leavesPagesUnseen || !recent.isEmpty }

    /// After the sweep's re-arming: what is armed now.
    mutating func rearmed(_ armed: PageSet) { armedAtLastSweep = armed }

    /// Pages unmapped, or replaced by a new mapping: their history is not the new pages'.
    mutating func forget(_ range: AddressRange) {
        presumed.remove(range)
        filled.remove(range)
        filledAtFaults.remove(range)
        armedAtLastSweep.remove(range)
        for i in recent.indices { recent[i].remove(range) }
    }

    /// A new address space (exec), or tracking ended.
    mutating func reset() {
        presumed = PageSet()
        filled = PageSet()
        filledAtFaults = PageSet()
        fillsAtFaults = false
        armedAtLastSweep = PageSet()
        recent = []
        sweepsLeft = 0
        length = Self.sweepsPerCheck
        sinceCheck = Int.max
    }
}

extension ProcessTracker {
    /// The share of the time PageWatch's work may take over
    /// `starvationWindow` interval sweeps before the user is told the
    /// program is starved (a short burst, as while presumption sets in, is not).
    /// (`PAGEWATCH_STARVATION_SHARE`: another share, e.g. 0 in the tests, which warns whatever the load.)
    static let starvationShare = getenv("PAGEWATCH_STARVATION_SHARE").flatMap { Double(String(cString: $0)) } ?? 0.5
    static let starvationWindow = 10

    /// Warns once (stderr, and a `warning` record) when PageWatch's
    /// handling of this process's stops has taken more than half of the
    /// time over the last interval sweeps: the program then runs many
    /// times slower than without PageWatch.
    func noteStarvation(reason: SweepReason, elapsedNs: UInt64) {
        guard reason == .interval, !warnedAboutStarvation else { return }
        recentIntervalLoads.append((busyNs, elapsedNs))
        if recentIntervalLoads.count > Self.starvationWindow { recentIntervalLoads.removeFirst() }
        let busy = recentIntervalLoads.reduce(0) { $0 + $1.busyNs }
        let elapsed = recentIntervalLoads.reduce(0) { $0 + $1.elapsedNs }
        guard recentIntervalLoads.count == Self.starvationWindow, elapsed > 0,
            Double(busy) >= Self.starvationShare * Double(elapsed)
        else { return }
        warnedAboutStarvation = true
        let share = Int((100 * Double(busy) / Double(elapsed)).rounded())
        let hint =
            presumption.mode == .never
            ? "--presume auto leaves pages rewritten at every sweep writable, or use a longer --interval"
            : "a longer --interval lowers it"
        session.warn(
            "pid \(pid): PageWatch's work took \(share)% of the time over the last \(Self.starvationWindow) sweeps: "
                + "the program runs much slower than untracked; \(hint)")
        emit(
            .warning(
                pid: pid,
                message: "PageWatch's work took \(share)% of the time over the last \(Self.starvationWindow) sweeps",
                timeNs: wallClockNs()))
    }
}
