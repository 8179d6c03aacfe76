import PageWatchLog

/// `pagewatch report --format text`: the run's summary, a table of sweeps,
/// the dirty rate, and the top writers in the manner of `perf report --stdio`.
public enum TextReport {
    /// Which rows of the top writers a text report lists.
    public struct WriterLimits: Sendable {
        /// At most this many rows; nil for all.
        public var top: Int?
        /// Rows below this share of the pages are left out.
        public var minPercent: Double
        /// Rows of call stacks with no page (their writes all counted elsewhere).
        public var emptyRows: Bool

        public init(top: Int? = nil, minPercent: Double = 0, emptyRows: Bool = true) {
            self.top = top
            self.minPercent = minPercent
            self.emptyRows = emptyRows
        }

        /// Everything, one row per call stack as logged.
        public static let all = WriterLimits()
    }

    /// `preCopy`: what the pre-copy model is asked about (`PreCopyPlan`).
    public static func render(
        _ report: ProcessReport, writers limits: WriterLimits = .all, preCopy: PreCopyPlan.Settings = .standard
    ) -> String {
        var out: [String] = []
        let log = report.log, process = report.process
        let isProgram = process.pid == log.pid
        out.append("program   \(log.command.joined(separator: " "))")
        if !isProgram {
            // A followed child: its own command since its exec, else the image it was forked with.
            out.append(
                "command   "
                    + (process.command?.joined(separator: " ") ?? "(no exec: the image of the process that forked it)"))
        }
        if isProgram {
            out.append("pid       \(process.pid), \(Format.ending(process.ending))")
        } else {
            out.append(
                "pid       \(process.pid), forked by \(process.parent.map(String.init) ?? "?"), \(Format.ending(process.ending))"
            )
        }
        out.append("log       \(log.source), schema \(log.schema.name), page size \(log.pageSize)")
        out.append("tracked   \(log.tracked.joined(separator: " "))")
        if let d = report.durationNs {
            out.append(
                "duration  \(Format.duration(ns: d)) (from \(isProgram ? "the start record" : "its fork record") to \(process.ending == nil ? "its last sweep" : "its end"))"
            )
        }
        for path in process.execs { out.append("exec      \(path) (tracking restarted)") }
        for reason in process.untracked { out.append("untracked \(reason): later writes are not in the log") }
        for m in process.missed {
            out.append(
                "missed    \(m.pages) page(s) changed with no write seen before sweep \(m.seq) (--verify-contents: a write PageWatch missed)"
            )
        }
        let mib = { (pages: UInt64) in Format.fixed(report.mib(pages), 2) }
        out.append("sweeps    \(report.sweeps.count)")
        out.append(
            "dirty     \(report.totalPages) pages (\(mib(report.totalPages)) MiB) over all sweeps, \(report.totalFaults) write faults"
        )
        out.append("rate      " + rateLine(report))
        if let note = reportedAgainLine(report) { out.append("again     " + note) }
        if let note = presumedLine(report) { out.append("presumed  " + note) }
        if let note = unseenLine(report) { out.append("unwritten " + note) }
        let others = log.processes.filter { $0.pid != process.pid }
        if !others.isEmpty {
            let list = others.map { p in
                let name = p.command.flatMap { ProcessNaming.name(command: $0, path: "") }.map { " " + $0 } ?? ""
                return p.pid == log.pid
                    ? "\(p.pid) (the program)"
                    : p.parent.map { "\(p.pid)\(name) (forked by \($0))" } ?? "\(p.pid)\(name)"
            }
            out.append("processes also in the log: \(list.joined(separator: ", ")); --pid PID reports one of them")
            let pages = log.processes.reduce(UInt64(0)) { $0 + $1.totalPages }
            let faults = log.processes.reduce(0) { $0 + $1.totalFaults }
            out.append(
                "all       \(log.processes.count) processes: \(pages) pages (\(mib(pages)) MiB) over all their sweeps, \(faults) write faults"
            )
        }

        out.append("")
        out.append("  seq  reason       at (ms)  dirty pages       MiB   faults")
        for s in report.sweeps {
            let at = s.timeNs >= process.beginNs ? Format.fixed(Double(s.timeNs - process.beginNs) / 1e6, 1) : "-"
            out.append(
                Format.padLeft(String(s.seq), 5) + "  " + Format.padRight(s.reason, 10)
                    + Format.padLeft(at, 10) + Format.padLeft(String(s.dirtyPages), 13)
                    + Format.padLeft(mib(s.dirtyPages), 10) + Format.padLeft(String(s.faults), 9)
                    + sweepNote(s))
        }

        out.append("")
        out += writersTable(report, limits: limits)
        if let rows = report.mappingsDirtied {
            out.append("")
            out += mappingsTable(rows, total: report.totalPages, top: limits.top)
        }
        out.append("")
        out += PreCopyPlan(report, preCopy).textLines()
        return out.joined(separator: "\n") + "\n"
    }

    /// Which mappings the sweeps dirtied, most pages first (`--top` rows),
    /// for a log that names its mappings.
    static func mappingsTable(_ rows: [MappingDirtied], total: UInt64, top: Int?) -> [String] {
        guard !rows.isEmpty else { return ["mappings dirtied: none (no sweep reported a page)"] }
        let shown = top.map { Array(rows.prefix($0)) } ?? rows
        let share = { (pages: UInt64) in total == 0 ? 0 : Double(pages) * 100 / Double(total) }
        var out = ["mappings dirtied: \(rows.count) mapping name(s), \(total) pages over all sweeps"]
        out.append("     pages    share   sweeps  mapping")
        for row in shown {
            out.append(
                Format.padLeft(String(row.pages), 10) + Format.padLeft(Format.fixed(share(row.pages), 2) + "%", 9)
                    + Format.padLeft(String(row.sweeps), 9) + "  " + row.name)
        }
        if rows.count > shown.count {
            let pages = rows.dropFirst(shown.count).reduce(UInt64(0)) { $0 + $1.pages }
            out.append(
                "     \(rows.count - shown.count) more row(s), \(pages) pages (\(Format.fixed(share(pages), 2))%): --top 0 lists them all"
            )
        }
        return out
    }

    /// Pages reported again because sweeps could not re-arm them, when any
    /// (those presumption left writable are `presumedLine`'s).
    static func reportedAgainLine(_ report: ProcessReport) -> String? {
        let again = report.reportedAgainPages - min(report.reportedAgainPages, report.presumedPages)
        guard again > 0 || report.reportOnlySweeps > 0 else { return nil }
        return "\(again) pages reported again (a sweep before could not re-arm them; "
            + "not in the rate), \(report.reportOnlySweeps) sweeps re-armed nothing"
    }

    /// Pages reported without a fault because they were rewritten at every sweep, when any.
    static func presumedLine(_ report: ProcessReport) -> String? {
        guard report.presumedPages > 0 else { return nil }
        return "\(report.presumedPages) pages reported presumed written (rewritten at every sweep before, "
            + "left writable: --presume; not in the rate)"
    }

    /// Pages new to PageWatch (or discarded) that hold nothing of the
    /// process's own, when any (`pagewatch/2`).
    static func unseenLine(_ report: ProcessReport) -> String? {
        guard report.zeroPages > 0 || report.filePages > 0 else { return nil }
        return "\(report.zeroPages) pages read as zeros, \(report.filePages) hold their file's contents "
            + "(new to PageWatch or discarded, never written: zero_ranges, file_ranges; not in the pages above)"
    }

    /// After a sweep's row: what it could not re-arm, and what it reported again.
    static func sweepNote(_ s: LoggedSweep) -> String {
        var notes: [String] = []
        if !s.rearmed { notes.append("not re-armed") }
        let again = s.reportedAgainPages - min(s.reportedAgainPages, s.presumedPages)
        if again > 0 { notes.append("\(again) again") }
        if s.presumedPages > 0 { notes.append("\(s.presumedPages) presumed") }
        if s.zeroPages > 0 { notes.append("\(s.zeroPages) zero") }
        if s.filePages > 0 { notes.append("\(s.filePages) file") }
        return notes.isEmpty ? "" : "  (" + notes.joined(separator: ", ") + ")"
    }

    static func rateLine(_ report: ProcessReport) -> String {
        guard let r = report.dirtyRate else {
            return
                "n/a: it needs two sweeps at different times (the rate is measured between the first and the last sweep)"
        }
        let mibPerSecond = report.mib(r.pages) / r.seconds
        let last = report.sweeps.count
        return "\(Format.fixed(r.pagesPerSecond, 1)) pages/s, \(Format.fixed(mibPerSecond, 2)) MiB/s: "
            + "the \(r.pages) pages of sweeps 2-\(last) over the \(Format.duration(ns: UInt64(r.seconds * 1e9))) "
            + "from sweep 1 to sweep \(last) (sweep 1 reports what tracked memory held when tracking began, so it is left out"
            + (report.reportedAgainPages > 0 ? "; so are \(report.reportedAgainPages) pages reported again)" : ")")
    }

    /// One row of the writers table: call stacks that print alike (the
    /// same function, line and callers as far as the row shows them)
    /// summed into one.
    struct WriterRow: Equatable {
        var function: String
        var location: String?
        var callers: String
        var pages: UInt64
        var faults: Int

        /// What a row shows of its stack: rows alike in it are one.
        var key: String { function + "\u{0}" + (location ?? "") + "\u{0}" + callers }
    }

    static func rows(_ writers: [Writer]) -> [WriterRow] {
        var rows: [WriterRow] = []
        var index: [String: Int] = [:]
        for w in writers {
            let name = FrameNaming.writer(w.frames)
            let row = WriterRow(
                function: name.function + writerOrigin(w.frames), location: name.location,
                callers: callerChain(w.frames), pages: w.pages,
                faults: w.faults)
            if let i = index[row.key] {
                rows[i].pages += w.pages
                rows[i].faults += w.faults
            } else {
                index[row.key] = rows.count
                rows.append(row)
            }
        }
        // Stable: ties keep the order in which the stacks were first seen.
        return rows.enumerated().sorted { a, b in
            if a.element.pages != b.element.pages { return a.element.pages > b.element.pages }
            if a.element.faults != b.element.faults { return a.element.faults > b.element.faults }
            return a.offset < b.offset
        }.map(\.element)
    }

    static func writersTable(_ report: ProcessReport, limits: WriterLimits = .all) -> [String] {
        guard !report.sweeps.isEmpty else { return ["top writers: none (no sweeps in this log)"] }
        guard report.hasSites else {
            return ["top writers: none in this log (it was written with --stack-depth 0)"]
        }
        let writers = report.writers
        let total = writers.reduce(UInt64(0)) { $0 + $1.pages }
        let all = rows(writers)
        let share = { (pages: UInt64) in total == 0 ? 0 : Double(pages) * 100 / Double(total) }
        var shown = all.filter { (limits.emptyRows || $0.pages > 0) && share($0.pages) >= limits.minPercent }
        if let top = limits.top { shown = Array(shown.prefix(top)) }
        var out = [
            "top writers: \(writers.count) call stacks, \(total) pages (each sweep's sites summed by call stack)"
        ]
        let width = min(60, max(8, shown.map(\.function.count).max() ?? 0))
        out.append("     pages    share   faults  " + Format.padRight("function", width) + "  file:line")
        for row in shown {
            out.append(
                Format.padLeft(String(row.pages), 10) + Format.padLeft(Format.fixed(share(row.pages), 2) + "%", 9)
                    + Format.padLeft(String(row.faults), 9) + "  " + Format.padRight(row.function, width)
                    + "  " + (row.location ?? "-"))
            if !row.callers.isEmpty { out.append(String(repeating: " ", count: 30) + row.callers) }
        }
        let left = all.count - shown.count
        if left > 0 {
            let pages = total - shown.reduce(UInt64(0)) { $0 + $1.pages }
            out.append(
                "     \(left) more row(s), \(pages) pages (\(Format.fixed(share(pages), 2))%): --top 0 --min-percent 0 --empty-rows lists them all"
            )
        }
        return out
    }

    /// ` [jit]`: named by a JIT's perf map (format rule 14). Frames found
    /// by frame pointer are not marked: all of Go's are.
    static func origin(_ f: Frame) -> String { f.jit ? " [jit]" : "" }

    /// The mark of the frame a writer row is named by (after a kernel pseudo-frame, the next).
    static func writerOrigin(_ frames: [Frame]) -> String {
        let own = frames.first.map(FrameNaming.isKernel) == true ? frames.dropFirst().first : frames.first
        return own.map(origin) ?? ""
    }

    /// `<- main (fx_writers.c:71) <- __libc_start_main <- _start`: who called
    /// the writer, so that two rows with the same function are told apart.
    /// A recursion's repeated frames are folded into one `×N`.
    static func callerChain(_ frames: [Frame], limit: Int = 6) -> String {
        let skip = frames.first.map(FrameNaming.isKernel) == true ? 2 : 1
        var groups: [(name: String, count: Int)] = []
        for (i, f) in frames.dropFirst(skip).enumerated() {
            var name = FrameNaming.name(f) + origin(f)
            // Only the immediate caller's line: where the writer was called from.
            if i == 0, let loc = FrameNaming.location(f) { name += " (\(loc))" }
            if groups.last?.name == name { groups[groups.count - 1].count += 1 } else { groups.append((name, 1)) }
        }
        guard !groups.isEmpty else { return "" }
        var parts = groups.prefix(limit).map { "<- " + $0.name + ($0.count > 1 ? " ×\($0.count)" : "") }
        if groups.count > limit { parts.append("<- …") }
        return parts.joined(separator: " ")
    }
}
