import PageWatchAddressSpace
import Testing

@testable import PageWatchEngine

/// The presumption rule on its own, sweep by sweep.
@Suite struct WritePresumptionTests {
    let p = Page.size
    /// Pages `a..<b` (page numbers).
    func pages(_ a: UInt64, _ b: UInt64) -> PageSet { PageSet([AddressRange(a * p, b * p)]) }
    let region: PageSet = PageSet([AddressRange(0, 64 * 4096)])

    /// One sweep that re-arms: the model's dirty pages are those written plus
    /// those still presumed; everything not presumed is armed after it.
    func sweep(_ w: inout WritePresumption, written: PageSet, presume: Bool = true) -> (PageSet, PageSet) {
        var dirty = written
        dirty.formUnion(w.presumed)
        let unseen = w.unseen(dirty: dirty, eligible: w.presumed)
        let kept = w.decide(dirty: dirty, eligible: dirty, fillable: region, presume: presume)
        w.rearmed(region.subtracting(kept))
        return (unseen, kept)
    }

    @Test func pagesWrittenInTwoIntervalsArePresumedThenChecked() {
        var w = WritePresumption(mode: .always, intervalNs: 0)
        // Sweep 1 arms everything: no page was seen written before it.
        #expect(sweep(&w, written: region).1.isEmpty)
        #expect(sweep(&w, written: pages(0, 4)).1.isEmpty)  // seen once
        #expect(sweep(&w, written: pages(0, 4)).1 == pages(0, 4))  // seen again: presumed
        // Reported unseen for 8 sweeps, written or not; then re-armed.
        for k in 1...8 {
            let (unseen, kept) = sweep(&w, written: PageSet())
            #expect(unseen == pages(0, 4), "sweep \(k)")
            #expect(kept == (k < 8 ? pages(0, 4) : PageSet()), "sweep \(k)")
        }
        // Not written in the check interval: no longer reported.
        let (unseen, kept) = sweep(&w, written: PageSet())
        #expect(unseen.isEmpty && kept.isEmpty)
    }

    @Test func aPresumptionResumedRightAfterItsCheckLastsTwiceAsLong() {
        var w = WritePresumption(mode: .always, intervalNs: 10_000_000)  // 10 ms: up to 64 sweeps
        _ = sweep(&w, written: region)
        _ = sweep(&w, written: pages(0, 2))
        #expect(sweep(&w, written: pages(0, 2)).1 == pages(0, 2))
        var held = 0
        while !sweep(&w, written: PageSet()).1.isEmpty { held += 1 }
        #expect(held == 7)  // kept by 7 sweeps, re-armed by the 8th
        // Written again in the check interval: presumed again at once, for 16.
        #expect(sweep(&w, written: pages(0, 2)).1 == pages(0, 2))
        held = 0
        while !sweep(&w, written: PageSet()).1.isEmpty { held += 1 }
        #expect(held == 15)
    }

    /// Gaps of at most `gapPages` pages between presumed runs are presumed
    /// too (`filled`), where every page of the gap may be; the wider ones not.
    @Test func smallGapsBetweenPresumedRunsAreFilled() {
        var w = WritePresumption(mode: .always, intervalNs: 0)
        var runs = pages(0, 2)
        runs.formUnion(pages(5, 6))  // a gap of 3
        runs.formUnion(pages(86, 87))  // a gap of 80
        runs.formUnion(pages(90, 91))  // a gap of 3, not fillable below
        let region = pages(0, 128)
        var fillable = region
        fillable.remove(AddressRange(88 * p, 89 * p))
        var dirty = region
        _ = w.decide(dirty: dirty, eligible: dirty, fillable: fillable, presume: true)
        w.rearmed(region)
        for _ in 0..<2 {
            dirty = runs
            dirty.formUnion(w.presumed)
            _ = w.decide(dirty: dirty, eligible: dirty, fillable: fillable, presume: true)
            w.rearmed(region.subtracting(w.presumed))
        }
        #expect(w.filled == pages(2, 5))
        var expected = runs
        expected.formUnion(pages(2, 5))
        #expect(w.presumed == expected)
        // Kept while presumed, and re-armed at the check with the rest.
        for _ in 0..<8 {
            dirty = w.presumed
            _ = w.decide(dirty: dirty, eligible: dirty, fillable: fillable, presume: true)
            w.rearmed(region.subtracting(w.presumed))
        }
        #expect(w.presumed.isEmpty && w.filled.isEmpty)
    }

    /// Faults fill gaps only after a sweep that presumed; the next sweep
    /// reports them unseen, and neither presumes them for themselves nor
    /// counts them as written (they are re-armed with their neighbours).
    @Test func gapsFilledAtFaultsAreReportedOnceUnseen() {
        var w = WritePresumption(mode: .auto, intervalNs: 100_000_000)
        #expect(!w.fillsAtFaults)
        _ = w.decide(dirty: region, eligible: region, fillable: region, presume: false)
        #expect(!w.fillsAtFaults)
        _ = w.decide(dirty: region, eligible: region, fillable: region, presume: true)
        w.rearmed(region)
        #expect(w.fillsAtFaults)
        // Pages 2 and 5 written, 3-4 filled by the fault at 5.
        w.filledAtFault(AddressRange(3 * p, 5 * p))
        let dirty = pages(2, 6)
        #expect(w.unseen(dirty: dirty, eligible: dirty) == pages(3, 5))
        let kept = w.decide(dirty: dirty, eligible: dirty, fillable: region, presume: true)
        #expect(kept.isEmpty && w.filledAtFaults.isEmpty)
        w.rearmed(region)
        // All four written now: 2 and 5 are rewrites, presumed; 3-4 were
        // not seen written before, so they are only the gap between them.
        let again = w.decide(dirty: dirty, eligible: dirty, fillable: region, presume: true)
        #expect(again == pages(2, 6))
        #expect(w.filled == pages(3, 5))
        // No pressure, nothing presumed: faults stop filling.
        for _ in 0..<8 { _ = w.decide(dirty: w.presumed, eligible: w.presumed, fillable: region, presume: false) }
        #expect(!w.fillsAtFaults)
    }

    @Test func newPagesAndPagesWrittenOnceAreNotPresumed() {
        var w = WritePresumption(mode: .always, intervalNs: 0)
        _ = sweep(&w, written: region)
        // Each interval writes pages never written before.
        for k in UInt64(1)...20 {
            #expect(sweep(&w, written: pages(k, k + 1)).1.isEmpty, "sweep \(k)")
        }
    }

    @Test func neverAndAutoWithoutPressurePresumeNothing() {
        let never = WritePresumption(mode: .never, intervalNs: 0)
        #expect(!never.applies(toInterval: true, busyNs: 100, elapsedNs: 100))
        let auto = WritePresumption(mode: .auto, intervalNs: 100_000_000)
        #expect(!auto.applies(toInterval: false, busyNs: 100, elapsedNs: 100))  // a signal sweep
        #expect(!auto.applies(toInterval: true, busyNs: 20, elapsedNs: 100))
        #expect(auto.applies(toInterval: true, busyNs: 30, elapsedNs: 100))
        var w = WritePresumption(mode: .auto, intervalNs: 100_000_000)
        _ = sweep(&w, written: region, presume: false)
        for _ in 0..<4 { #expect(sweep(&w, written: pages(0, 4), presume: false).1.isEmpty) }
    }

    /// Under `auto` the interval of a check has no pressure (its pages were
    /// presumed): the history survives it, and pages rewritten after the
    /// check are presumed again at once, for twice as long.
    @Test func theHistorySurvivesACheckWithoutPressure() {
        var w = WritePresumption(mode: .auto, intervalNs: 10_000_000)
        _ = sweep(&w, written: region)
        _ = sweep(&w, written: pages(0, 2))
        #expect(sweep(&w, written: pages(0, 2)).1 == pages(0, 2))
        var held = 0
        while !sweep(&w, written: PageSet(), presume: false).1.isEmpty { held += 1 }
        #expect(held == 7)
        #expect(w.isActive)
        #expect(sweep(&w, written: pages(0, 2)).1 == pages(0, 2))
        held = 0
        while !sweep(&w, written: PageSet(), presume: false).1.isEmpty { held += 1 }
        #expect(held == 15)
        // Long after the last check, without pressure: nothing kept.
        for _ in 0...WritePresumption.recentIntervals { _ = sweep(&w, written: pages(0, 2), presume: false) }
        #expect(!w.isActive)
    }

    @Test func forgottenPagesLeaveThePresumption() {
        var w = WritePresumption(mode: .always, intervalNs: 0)
        _ = sweep(&w, written: region)
        _ = sweep(&w, written: pages(0, 4))
        #expect(sweep(&w, written: pages(0, 4)).1 == pages(0, 4))
        w.forget(AddressRange(0, 2 * p))
        #expect(w.presumed == pages(2, 4))
        w.reset()
        #expect(w.presumed.isEmpty)
    }
}
