import ArgumentParser
import Glibc
import PageWatchEngine
import PageWatchLog
import PageWatchPtrace
import PageWatchReport

/// `pagewatch report`: reads a log written by `pagewatch run --output` and
/// presents it. Only parsing and I/O here; the reports are PageWatchReport's.
struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarize a pagewatch/2 or pagewatch/1 log: sweeps, dirty rate and the top writers.",
        discussion: """
            Formats: text (default) is a summary, a table of sweeps and the top writers (call \
            stacks that print alike summed into one row; --top, --min-percent and --empty-rows \
            choose the rows), and for logs that name their mappings the pages dirtied per mapping \
            (--top rows); \
            folded is one `outer;...;inner PAGES` line per call stack for flamegraph.pl, \
            inferno or speedscope; html is one self-contained page with a chart of the dirty \
            rate, a map of the pages each sweep dirtied (its blocks named by their mappings), \
            the mappings dirtied and the top writers; pprof is a gzipped \
            profile.proto (sample types pages and faults, one sample per call stack) for go tool \
            pprof, speedscope, Pyroscope, Parca or Grafana.

            With --follow-forks logs, the program is reported unless --pid names another process.

            A log whose last line was cut mid-record (a full disk) is read up to the line before, \
            with a warning.

            Exit status: 0; 1 when the log cannot be read or has no such process, or the report \
            cannot be written; 2 for a usage error.
            """
    )

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case text, folded, html, pprof
    }

    @Option(name: .long, help: ArgumentHelp("text, folded, html or pprof.", valueName: "FORMAT"))
    var format: OutputFormat = .text

    @Option(
        name: [.customShort("o"), .long],
        help: ArgumentHelp("Write the report here instead of stdout; - for stdout.", valueName: "PATH"))
    var output: String?

    @Option(name: .long, help: ArgumentHelp("Report this process of the log (default: the program).", valueName: "PID"))
    var pid: Int32?

    @Option(
        name: .long, parsing: .unconditional,
        help: ArgumentHelp("Text: list at most N top writers and mappings; 0 = all (default 20).", valueName: "N"))
    var top: Int = 20

    @Option(
        name: .long, parsing: .unconditional,
        help: ArgumentHelp(
            "Text: leave out writers below this share of the pages (default 0).", valueName: "P"))
    var minPercent: Double = 0

    @Flag(
        name: .long,
        help: "Text: list writers with no page of their own too (their writes counted in another row).")
    var emptyRows = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Text and html: the pre-copy model's link speed, e.g. 1GiB/s, 500MB/s, 10Gbit/s (default 1GiB/s).",
            valueName: "RATE"))
    var link: String = "1GiB/s"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Text and html: the pre-copy model's downtime target, e.g. 300ms (default), 1s.", valueName: "DURATION"))
    var downtime: String = "300ms"

    @Argument(help: ArgumentHelp("The JSON Lines log (pagewatch run --output); - for stdin.", valueName: "LOG.jsonl"))
    var log: String

    /// `--downtime` in seconds; nil when it is not a positive duration.
    var downtimeSeconds: Double? {
        IntervalParser.parse(downtime).flatMap { $0 > 0 ? Double($0) / 1e9 : nil }
    }

    /// `--link` and `--downtime`, validated.
    var preCopy: PreCopyPlan.Settings {
        PreCopyPlan.Settings(link: PreCopyPlan.Link(parsing: link) ?? .standard, downtimeTarget: downtimeSeconds ?? 0.3)
    }

    func validate() throws {
        if top < 0 { throw ValidationError("invalid --top \(top) (expected 0 for all, or a count)") }
        if !(0...100).contains(minPercent) {
            throw ValidationError("invalid --min-percent \(minPercent) (expected 0 to 100)")
        }
        if PreCopyPlan.Link(parsing: link) == nil {
            throw ValidationError(
                "invalid --link '\(link)' (expected a positive rate such as 1GiB/s, 500MB/s, 10Gbit/s)")
        }
        if downtimeSeconds == nil {
            throw ValidationError("invalid --downtime '\(downtime)' (expected a duration such as 300ms or 1s)")
        }
    }

    func run() throws {
        let report: ProcessReport
        do {
            report = try ProcessReport(log: JITNames.applied(to: try LogReader.read(path: log)), pid: pid)
        } catch let error as LogReadError {
            fail(error.description, status: 1)
        } catch let error as ProcessReport.SelectionError {
            fail(error.description, status: 1)
        }
        if let line = report.log.cutLine {
            writeAll(
                STDERR_FILENO,
                "pagewatch: warning: \(report.log.source):\(line): the last line is cut mid-record (no newline, not JSON); read up to line \(line - 1)\n"
            )
        }
        var text = ""
        var binary: [UInt8]? = nil
        switch format {
        case .text:
            text = TextReport.render(
                report,
                writers: TextReport.WriterLimits(
                    top: top == 0 ? nil : top, minPercent: minPercent, emptyRows: emptyRows),
                preCopy: preCopy)
        case .folded:
            text = FoldedReport.render(report)
            // An empty flame graph says nothing about why: say it once, off the data stream.
            if !report.hasSites && !report.sweeps.isEmpty {
                writeAll(
                    STDERR_FILENO,
                    "pagewatch: \(report.log.source) has no call sites (written with --stack-depth 0): no stacks to fold\n"
                )
            }
        case .html: text = HTMLReport.render(report, preCopy: preCopy)
        case .pprof: binary = PprofReport.render(report)
        }
        // A report that cannot be written is an error, never a silent empty file.
        writeOutput(binary ?? Array(text.utf8), to: output, what: "the report")
    }
}
