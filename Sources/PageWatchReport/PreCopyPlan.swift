import PageWatchAddressSpace
import PageWatchLog

/// Pre-copy planning from a log, as QEMU's `calc-dirty-rate` answers it for
/// guests: how fast the process dirties memory, how much it rewrites over a
/// window, and whether an iterative pre-copy over a given link converges.
///
/// What a copy must send for a sweep is its `ranges` (pages that hold data,
/// presumed ones included); `zero_ranges` and `file_ranges` travel as a flag
/// or not at all and are left out. Sweep 1 reports what tracked memory held
/// when tracking began: the full image the first round sends.
public struct PreCopyPlan: Sendable, Equatable {
    /// A link's speed, in bytes per second.
    public struct Link: Sendable, Equatable, CustomStringConvertible {
        public var bytesPerSecond: Double

        public init(bytesPerSecond: Double) { self.bytesPerSecond = bytesPerSecond }

        /// `1GiB/s`, `500MB/s`, `10Gbit/s`, `100Mbit/s`, `4096B/s`; nil for anything else.
        public init?(parsing text: String) {
            let units: [(String, Double)] = [
                ("GiB/s", 1_073_741_824), ("MiB/s", 1_048_576), ("KiB/s", 1024),
                ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3), ("KB/s", 1e3),
                ("Gbit/s", 1e9 / 8), ("Mbit/s", 1e6 / 8), ("B/s", 1),
            ]
            for (suffix, scale) in units where text.hasSuffix(suffix) {
                guard let value = Double(text.dropLast(suffix.count)), value > 0, value.isFinite else { return nil }
                bytesPerSecond = value * scale
                return
            }
            return nil
        }

        public var description: String {
            let mib = bytesPerSecond / 1_048_576
            return mib >= 1024 ? Format.fixed(mib / 1024, 2) + " GiB/s" : Format.fixed(mib, 1) + " MiB/s"
        }

        /// 1 GiB/s: about a 10 Gbit/s link's payload.
        public static let standard = Link(bytesPerSecond: 1_073_741_824)
    }

    /// The downtime a pre-copy aims at when none is given: QEMU's default
    /// `downtime-limit`.
    public static let standardDowntime = 0.3

    /// What the model is asked about: the link, and the downtime aimed at (seconds).
    public struct Settings: Sendable {
        public var link: Link
        public var downtimeTarget: Double

        public init(link: Link = .standard, downtimeTarget: Double = PreCopyPlan.standardDowntime) {
            self.link = link
            self.downtimeTarget = downtimeTarget
        }

        public static let standard = Settings()
    }

    /// The write working set over windows of one length.
    public struct WorkingSet: Sendable, Equatable {
        public var seconds: Double
        /// Distinct pages written in the window, the median and the largest
        /// over the windows of the log; nil when no window of whole sweep
        /// intervals is that short.
        public var medianPages: UInt64?
        public var maxPages: UInt64?
    }

    /// One sweep's pages over the time since the sweep before.
    public struct Rate: Sendable, Equatable {
        public var seq: Int
        public var pagesPerSecond: Double
    }

    /// One round of the pre-copy: the pages it sends and how long that takes.
    public struct Round: Sendable, Equatable {
        public var pages: UInt64
        public var seconds: Double
    }

    public enum Outcome: Sendable, Equatable {
        /// The last round's pages fit the downtime target: the process is
        /// stopped for them.
        case converges(rounds: Int, downtimeSeconds: Double)
        /// A round did not send fewer pages than the one before: stopping
        /// there would take this downtime.
        case stalls(rounds: Int, downtimeSeconds: Double)
        /// Too few sweeps to say (needs sweep 1 and one more at a later time).
        case unknown
    }

    public var link: Link
    public var downtimeTarget: Double
    /// Each sweep's pages over the time since the one before, from sweep 2 on.
    public var rates: [Rate]
    /// The median of `rates`: the rate once start-up bursts are outweighed.
    public var steadyRate: Double?
    public var workingSets: [WorkingSet]
    public var rounds: [Round]
    public var outcome: Outcome
    public var pageSize: UInt64

    /// The windows of the working-set table.
    public static let windows: [Double] = [1, 5, 30]
    /// At most this many rounds are modelled.
    public static let maxRounds = 30
    /// At most this many windows are measured per length (evenly spread).
    static let maxWindowsMeasured = 256

    public init(_ report: ProcessReport, _ settings: Settings = .standard, windows: [Double] = PreCopyPlan.windows) {
        let link = settings.link, downtimeTarget = settings.downtimeTarget
        self.link = link
        self.downtimeTarget = downtimeTarget
        pageSize = report.log.pageSize
        let sweeps = report.sweeps
        var rates: [Rate] = []
        for i in sweeps.indices.dropFirst() where sweeps[i].timeNs > sweeps[i - 1].timeNs {
            let seconds = Double(sweeps[i].timeNs - sweeps[i - 1].timeNs) / 1e9
            rates.append(Rate(seq: sweeps[i].seq, pagesPerSecond: Double(sweeps[i].dirtyPages) / seconds))
        }
        self.rates = rates
        steadyRate = Self.median(rates.map(\.pagesPerSecond))
        let sets = WindowedUnion(sweeps: sweeps)
        workingSets = windows.map { w in
            let counts = sets.unions(seconds: w)
            return WorkingSet(
                seconds: w, medianPages: Self.median(counts.map { Double($0) }).map { UInt64($0) },
                maxPages: counts.max())
        }
        guard let first = sweeps.first, let rate = steadyRate else {
            rounds = []
            outcome = .unknown
            return
        }
        // Round 1 sends the image; each later round what the program dirtied
        // while the round before was sent.
        let bytesPerPage = Double(pageSize)
        var rounds = [
            Round(pages: first.dirtyPages, seconds: Double(first.dirtyPages) * bytesPerPage / link.bytesPerSecond)
        ]
        var outcome = Outcome.unknown
        while outcome == .unknown {
            let previous = rounds[rounds.count - 1]
            let pages = sets.dirtied(seconds: previous.seconds, rate: rate)
            let seconds = Double(pages) * bytesPerPage / link.bytesPerSecond
            if seconds <= downtimeTarget {
                outcome = .converges(rounds: rounds.count, downtimeSeconds: seconds)
            } else if pages >= previous.pages || rounds.count == Self.maxRounds {
                outcome = .stalls(rounds: rounds.count, downtimeSeconds: seconds)
            } else {
                rounds.append(Round(pages: pages, seconds: seconds))
            }
        }
        self.rounds = rounds
        self.outcome = outcome
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }
}

/// Distinct pages written over windows of whole sweep intervals. A window
/// of `T` seconds ending at sweep j holds the sweeps whose whole interval
/// (from the sweep before them to them) lies within the `T` seconds before
/// sweep j, give or take a tenth (interval sweeps come a little late: a
/// `1s` interval's sweeps are 1.00 to 1.02 s apart). Sweep 1, the image, is
/// in none, and only windows that fit after it are measured: a log shorter
/// than `T` has none.
struct WindowedUnion {
    let sweeps: [LoggedSweep]

    /// The union's size for each window of `seconds`, at most
    /// `PreCopyPlan.maxWindowsMeasured` windows evenly spread.
    func unions(seconds: Double) -> [UInt64] {
        guard let first = sweeps.first else { return [] }
        let span = UInt64(max(0, seconds * 1.1e9)), least = UInt64(max(0, seconds * 0.9e9))
        let ends = sweeps.indices.dropFirst().filter { sweeps[$0].timeNs >= first.timeNs + least }
        let step = max(1, ends.count / PreCopyPlan.maxWindowsMeasured)
        var counts: [UInt64] = []
        for j in stride(from: 0, to: ends.count, by: step).map({ ends[$0] }) {
            var ranges: [AddressRange] = []
            var i = j
            while i >= 1, sweeps[i].timeNs > sweeps[i - 1].timeNs,
                sweeps[j].timeNs - sweeps[i - 1].timeNs <= span
            {
                ranges += sweeps[i].ranges
                i -= 1
            }
            if i < j { counts.append(Self.union(ranges)) }
        }
        return counts
    }

    /// Distinct pages of `ranges`: sorted first, so that the set is built
    /// by appending (sweeps' ranges one after another would each be
    /// spliced into the middle).
    static func union(_ ranges: [AddressRange]) -> UInt64 {
        PageSet(ranges.sorted { $0.start < $1.start }).pageCount
    }

    /// Pages a program dirties in `seconds`: the median union over windows
    /// that long; where the log has none (shorter than a sweep interval, or
    /// longer than the log), `rate` times it, but no more than every page
    /// the log reports (the image included).
    func dirtied(seconds: Double, rate: Double) -> UInt64 {
        let counts = unions(seconds: seconds)
        if let median = PreCopyPlan.median(counts.map { Double($0) }) { return UInt64(median.rounded()) }
        let all = Self.union(sweeps.flatMap(\.ranges))
        return min(all, UInt64((rate * seconds).rounded(.up)))
    }
}

extension PreCopyPlan {
    /// The text report's pre-copy section.
    public func textLines() -> [String] {
        let mib = { (pages: UInt64) in Format.fixed(Double(pages) * Double(self.pageSize) / 1_048_576, 1) + " MiB" }
        var out = [
            "pre-copy (a model, as QEMU's calc-dirty-rate: round 1 sends sweep 1's pages, each later round "
                + "what the program dirtied while the round before was sent; --link, --downtime)"
        ]
        guard let steady = steadyRate, let low = rates.map(\.pagesPerSecond).min(),
            let high = rates.map(\.pagesPerSecond).max()
        else {
            out.append("  n/a: it needs two sweeps at different times")
            return out
        }
        let perSecondMiB = Format.fixed(steady * Double(pageSize) / 1_048_576, 2)
        out.append(
            "  dirty rate   \(Format.fixed(steady, 1)) pages/s (\(perSecondMiB) MiB/s) steady: the median of sweeps "
                + "\(rates.first!.seq)-\(rates.last!.seq), each sweep's pages over its interval "
                + "(\(Format.fixed(low, 1)) to \(Format.fixed(high, 1)))")
        let sets = workingSets.map { w -> String in
            let name = Format.fixed(w.seconds, w.seconds == w.seconds.rounded() ? 0 : 1) + " s"
            guard let median = w.medianPages, let max = w.maxPages else { return name + ": n/a" }
            return name + ": \(median) pages (\(mib(median))) median, \(max) (\(mib(max))) at most"
        }
        let unmeasured = workingSets.contains { $0.medianPages == nil }
        out.append(
            "  working set  " + sets.joined(separator: "; ")
                + (unmeasured
                    ? " (n/a where the log has no window of whole sweep intervals that long after sweep 1)" : ""))
        out.append(
            "  link \(link), downtime target \(Format.duration(ns: UInt64(downtimeTarget * 1e9)))")
        for (i, r) in rounds.enumerated() {
            out.append(
                "  round " + Format.padLeft(String(i + 1), 2) + Format.padLeft(String(r.pages), 10) + " pages "
                    + Format.padLeft("(" + mib(r.pages) + ")", 14)
                    + " in \(Format.duration(ns: UInt64(r.seconds * 1e9)))"
                    + (i == 0 ? " (the image)" : ""))
        }
        switch outcome {
        case .converges(let n, let downtime):
            out.append(
                "  converges after \(n) round(s): the process stopped for \(Format.duration(ns: UInt64(downtime * 1e9))) "
                    + "to send the rest")
        case .stalls(let n, let downtime):
            out.append(
                "  does not converge: after \(n) round(s) a round would send no fewer pages than the one before"
                    + (n == PreCopyPlan.maxRounds ? " (or \(n) rounds were modelled)" : "")
                    + "; stopping then takes \(Format.duration(ns: UInt64(downtime * 1e9))) of downtime")
        case .unknown:
            out.append("  n/a: it needs two sweeps at different times")
        }
        return out
    }
}
