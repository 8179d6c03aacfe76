import PageWatchAddressSpace
import PageWatchLog

/// `pagewatch report --format html`: one self-contained page (inline CSS,
/// inline SVG, a few lines of script, nothing fetched) with the dirty rate
/// over time, the sweeps and who wrote in each, the top writers as a table
/// and a flame graph, and a map of which pages each sweep dirtied. A log of
/// several processes (`--follow-forks`) gets them all, one after the other,
/// and a picker that shows one at a time.
public enum HTMLReport {
    /// The rate bars' fill. Used nowhere else on the page, so a test can
    /// count its pixels in a screenshot to see the chart was drawn.
    public static let barColour = "#d6336c"
    /// Sweep 1's bar: it reports everything tracked, not an interval's writes.
    static let firstBarColour = "#e8a0bb"

    /// One section of a process: its id (after the process's prefix), its
    /// name in the table of contents, its heading and what is under it.
    struct Section {
        var id: String
        var link: String
        var title: String
        var body: String
    }

    /// The sections of one process, in the page's order. Ids start with
    /// `prefix`: empty for the process reported first, `pPID-` for the others.
    /// A new section is one more entry: the table of contents follows.
    static func sections(_ report: ProcessReport, prefix: String, preCopy: PreCopyPlan.Settings) -> [Section] {
        // Summed once: the table and the flame graph both need them.
        let writers = report.writers
        return [
            Section(id: "summary", link: "Summary", title: "Summary", body: summary(report)),
            Section(
                id: "chart", link: "Dirty rate", title: "Dirty rate over time", body: rateChart(report, prefix: prefix)),
            Section(id: "sweeps", link: "Sweeps", title: "Sweeps", body: sweepsTable(report)),
            Section(
                id: "sweep-writers", link: "Sweep writers", title: "Writers of one sweep",
                body: SweepWritersView.html(report, prefix: prefix)),
            Section(
                id: "top-writers", link: "Top writers", title: "Top writers",
                body: writersTable(report, writers: writers, prefix: prefix)
            ),
            Section(
                id: "flame", link: "Flame graph", title: "Flame graph of the writers",
                body: flameGraph(report, writers: writers, prefix: prefix)),
            Section(
                id: "map", link: "Page map", title: "Pages dirtied, sweep by sweep",
                body: scrolling(pageMap(report, prefix: prefix), tall: true)),
            Section(
                id: "mappings", link: "Mappings", title: "Mappings dirtied", body: mappingsSection(report)),
            Section(
                id: "pre-copy", link: "Pre-copy", title: "Pre-copy planning",
                body: "<pre>" + escape(PreCopyPlan(report, preCopy).textLines().joined(separator: "\n")) + "</pre>"),
        ].filter { !$0.body.isEmpty }  // A section with nothing to show for this log (none yet) is left out.
    }

    /// `preCopy`: what the pre-copy section's model is asked about.
    public static func render(_ report: ProcessReport, preCopy: PreCopyPlan.Settings = .standard) -> String {
        let log = report.log
        // The process asked for first, then the others in the log's order.
        let reports =
            [report]
            + log.processes.filter { $0.pid != report.process.pid }.compactMap {
                try? ProcessReport(log: log, pid: $0.pid)
            }
        let several = reports.count > 1
        // A build's log can hold thousands of processes: the biggest are drawn, all are listed.
        let drawnPids = Set(
            [report.process.pid]
                + reports.dropFirst().enumerated().sorted { a, b in
                    let pa = a.element.process.totalPages, pb = b.element.process.totalPages
                    return pa != pb ? pa > pb : a.offset < b.offset
                }.prefix(maxProcessesDrawn - 1).map(\.element.process.pid))
        let drawn = reports.filter { drawnPids.contains($0.process.pid) }
        let firstSections = sections(report, prefix: "", preCopy: preCopy)
        var html = """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <title>PageWatch report: \(escape(log.command.joined(separator: " ")))</title>
            <script>
            // Installed first so that any later script error is recorded; the check at the end reports it.
            window.pagewatchErrors = [];
            window.addEventListener('error', function (e) { window.pagewatchErrors.push(String(e.message)); });
            </script>
            <style>
            body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 24px; color: #222; background: #fff; }
            h1 { font-size: 20px; margin: 16px 0 8px; } h2 { font-size: 16px; margin-top: 28px; }
            h2.process-title { font-size: 18px; border-top: 2px solid #888; padding-top: 12px; margin-top: 36px; }
            nav#toc { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ccc; padding: 6px 0; }
            nav#toc a { margin-right: 14px; }
            section { scroll-margin-top: 48px; }
            table { border-collapse: collapse; }
            td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
            td.num, th.num { text-align: right; }
            table.rows td, table.rows th { border-bottom: 1px solid #ddd; }
            .scroll { max-height: 420px; overflow: auto; border: 1px solid #ddd; padding: 0 4px; width: fit-content; max-width: 1100px; }
            .scroll.tall { max-height: 640px; }
            .scroll th { position: sticky; top: 0; background: #fff; }
            tr[data-sweep] { cursor: pointer; } tr[data-sweep]:hover { background: #f0f4fa; } tr.picked { background: #dde8f6; }
            td.end { white-space: nowrap; }
            .rate-bar { cursor: pointer; }
            .callers { color: #666; font-size: 12px; }
            .note { color: #555; font-size: 13px; max-width: 900px; }
            code, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
            svg text { font: 11px system-ui, sans-serif; fill: #333; }
            svg.flame text { pointer-events: none; fill: #000; }
            </style>
            </head>
            <body>
            <h1>PageWatch report</h1>

            """
        // The table of contents links the first process's sections; the picker's script points it at the one shown.
        html += "<nav id=\"toc\">"
        if several { html += "<a href=\"#processes\">Processes</a>" }
        for s in firstSections {
            html += "<a data-section=\"\(s.id)\" href=\"#\(s.id)\">\(escape(s.link))</a>"
        }
        if several { html += processPicker(drawn) }
        html += "</nav>\n"
        if several { html += processesSection(reports, drawn: drawnPids) }
        for (i, r) in drawn.enumerated() {
            let prefix = i == 0 ? "" : idPrefix(r.process.pid)
            html += "<div class=\"process\" id=\"process-\(r.process.pid)\" data-pid=\"\(r.process.pid)\">\n"
            if several {
                html +=
                    "<h2 class=\"process-title\">Process \(r.process.pid): \(escape(processName(r.process, log: log)))</h2>\n"
            }
            for s in i == 0 ? firstSections : sections(r, prefix: prefix, preCopy: preCopy) {
                html += "<section id=\"\(prefix)\(s.id)\">\n<h2>\(escape(s.title))</h2>\n\(s.body)</section>\n"
            }
            html += "</div>\n"
        }
        html +=
            "<script>\n" + SweepWritersView.script + FlameGraph.script + (several ? pickerScript : "") + "</script>\n"
        html += """
            <!-- Hidden: what the page's script drew, for a test to read from the DOM (never shown). -->
            <p id="render-check" hidden>the page's script did not run</p>
            <script>
            (function () {
              var bars = document.querySelectorAll('#rate-chart .rate-bar').length;
              var cells = document.querySelectorAll('#page-map .map-cell').length;
              var box = document.getElementById('rate-chart').getBoundingClientRect();
              var errors = window.pagewatchErrors;
              var check = document.getElementById('render-check');
              check.className = errors.length ? 'failed' : 'ok';
              check.textContent = (errors.length ? 'script errors: ' + errors.join('; ') : 'rendered') + ': ' + bars + ' bars, '
                + cells + ' map cells, chart ' + Math.round(box.width) + 'x' + Math.round(box.height);
            })();
            </script>
            </body>
            </html>

            """
        return html
    }

    static func idPrefix(_ pid: Int32) -> String { "p\(pid)-" }

    /// Processes drawn in full on one page; the others are listed with their totals.
    static let maxProcessesDrawn = 40

    /// A long table or map in a box of its own height, so that the sections after it are a screenful away.
    static func scrolling(_ body: String, tall: Bool = false) -> String {
        "<div class=\"scroll\(tall ? " tall" : "")\">\n" + body + "</div>\n"
    }

    /// Seconds from the start of the process's tracking (its fork for a followed process).
    static func seconds(_ report: ProcessReport, _ timeNs: UInt64) -> String {
        timeNs >= report.process.beginNs ? Format.fixed(Double(timeNs - report.process.beginNs) / 1e9, 3) : "-"
    }

    static func summary(_ report: ProcessReport) -> String {
        let log = report.log, process = report.process
        var rows: [(String, String)] = [
            ("program", log.command.joined(separator: " ")),
            (
                "pid",
                "\(process.pid)" + (process.parent.map { ", forked by \($0)" } ?? "") + ", "
                    + Format.ending(process.ending)
            ),
            ("log", "\(log.source), schema \(log.schema.name)"),
            ("tracked", log.tracked.joined(separator: " ")),
        ]
        if process.pid != log.pid {
            rows.insert(
                (
                    "command",
                    process.command?.joined(separator: " ") ?? "(no exec: the image of the process that forked it)"
                ),
                at: 1)
        }
        if let d = report.durationNs { rows.append(("duration", Format.duration(ns: d))) }
        rows.append(("sweeps", "\(report.sweeps.count)"))
        rows.append(
            (
                "dirty",
                "\(report.totalPages) pages (\(Format.fixed(report.mib(report.totalPages), 2)) MiB), \(report.totalFaults) write faults"
            ))
        rows.append(("dirty rate", TextReport.rateLine(report)))
        if let note = TextReport.reportedAgainLine(report) { rows.append(("reported again", note)) }
        if let note = TextReport.presumedLine(report) { rows.append(("presumed", note)) }
        for path in process.execs { rows.append(("exec", path)) }
        for reason in process.untracked { rows.append(("untracked", reason)) }
        if log.processes.count > 1 {
            rows.append(("processes", "\(log.processes.count) in this log: see Processes at the top"))
        }
        return "<table class=\"summary\">\n"
            + rows.map { "<tr><th>\(escape($0.0))</th><td>\(escape($0.1))</td></tr>\n" }.joined() + "</table>\n"
    }

    // MARK: processes

    /// What a process is called: its command's program name as the text
    /// report names it; for a process that never called exec, the pid that forked it.
    static func processName(_ process: LoggedProcess, log: ParsedLog) -> String {
        let command = process.command ?? (process.pid == log.pid ? log.command : nil)
        if let name = command.flatMap({ ProcessNaming.name(command: $0, path: "") }) { return name }
        return process.parent.map { "(no exec, forked by \($0))" } ?? "(no command)"
    }

    /// The picker in the table of contents: hidden until the script runs
    /// (without it, the processes table's links lead to each process).
    static func processPicker(_ reports: [ProcessReport]) -> String {
        var out = "<label id=\"process-picker-label\" hidden>process <select id=\"process-picker\">"
        for (i, r) in reports.enumerated() {
            out +=
                "<option value=\"\(r.process.pid)\" data-prefix=\"\(i == 0 ? "" : idPrefix(r.process.pid))\">"
                + "\(r.process.pid) \(escape(processName(r.process, log: r.log))): \(r.process.totalPages) pages</option>"
        }
        return out + "</select></label>"
    }

    static func processesSection(_ reports: [ProcessReport], drawn: Set<Int32>) -> String {
        let log = reports[0].log
        var out =
            "<section id=\"processes\">\n<h2>Processes</h2>\n<p class=\"note\">This log holds \(reports.count) processes "
            + "(--follow-forks), each followed by its sections: click one to go to it (the picker at the top shows "
            + "one at a time). A process that never called exec is named by the pid that forked it."
        if drawn.count < reports.count {
            out +=
                " The page draws the \(drawn.count) that dirtied most pages; "
                + "pagewatch report --format html --pid PID draws any other."
        }
        out += "</p>\n"
        var rows =
            "<table class=\"rows\" id=\"process-table\">\n<tr><th class=\"num\">pid</th><th>command</th><th class=\"num\">forked by</th>"
            + "<th class=\"num\">sweeps</th><th class=\"num\">dirty pages</th><th class=\"num\">MiB</th><th class=\"num\">faults</th><th>end</th></tr>\n"
        var all: (pages: UInt64, faults: Int, sweeps: Int) = (0, 0, 0)
        // In the log's order, the program first.
        for p in log.processes {
            let t = (pages: p.totalPages, faults: p.totalFaults)
            all.pages += t.pages
            all.faults += t.faults
            all.sweeps += p.sweeps.count
            let command = p.command ?? (p.pid == log.pid ? log.command : nil)
            let link = { (text: String) in
                drawn.contains(p.pid) ? "<a href=\"#process-\(p.pid)\" data-pick=\"\(p.pid)\">\(text)</a>" : text
            }
            rows +=
                "<tr><td class=\"num\">\(link(String(p.pid)))</td><td>\(link(escape(processName(p, log: log))))"
                + (command.map { "<div class=\"callers\">\(escape($0.joined(separator: " ")))</div>" } ?? "") + "</td>"
                + "<td class=\"num\">\(p.parent.map(String.init) ?? "-")</td><td class=\"num\">\(p.sweeps.count)</td>"
                + "<td class=\"num\">\(t.pages)</td><td class=\"num\">\(Format.fixed(reports[0].mib(t.pages), 2))</td>"
                + "<td class=\"num\">\(t.faults)</td><td class=\"end\">\(escape(Format.ending(p.ending)))</td></tr>\n"
        }
        rows +=
            "<tr class=\"total\"><th></th><th>all \(reports.count) processes</th><th></th><th class=\"num\">\(all.sweeps)</th>"
            + "<th class=\"num\">\(all.pages)</th><th class=\"num\">\(Format.fixed(reports[0].mib(all.pages), 2))</th>"
            + "<th class=\"num\">\(all.faults)</th><th></th></tr>\n</table>\n"
        return out + scrolling(rows) + "</section>\n"
    }

    /// Shows the process picked, hides the others, and points the table of contents at its sections.
    static let pickerScript = """
        (function () {
          var picker = document.getElementById('process-picker');
          function show(pid) {
            var option = null;
            for (var i = 0; i < picker.options.length; i++) if (picker.options[i].value === pid) option = picker.options[i];
            if (!option) return false;
            picker.value = pid;
            document.querySelectorAll('.process').forEach(function (p) { p.hidden = p.getAttribute('data-pid') !== pid; });
            var prefix = option.getAttribute('data-prefix');
            document.querySelectorAll('#toc a[data-section]').forEach(function (a) {
              a.setAttribute('href', '#' + prefix + a.getAttribute('data-section'));
            });
            return true;
          }
          document.getElementById('process-picker-label').hidden = false;
          picker.addEventListener('change', function () { show(picker.value); });
          document.querySelectorAll('a[data-pick]').forEach(function (a) {
            a.addEventListener('click', function () { show(a.getAttribute('data-pick')); });
          });
          // A link to one process's section (#p101-flame, #process-101) shows that process.
          var hash = location.hash.slice(1), match = /^(?:p|process-)(\\d+)/.exec(hash);
          if (!(match && show(match[1]))) show(picker.options[0].value);
          if (match) { var target = document.getElementById(hash); if (target) target.scrollIntoView(); }
        })();

        """

    // MARK: the rate chart

    /// Bars over time: each sweep's bar spans the time since the sweep
    /// before (for sweep 1, since tracking began) and is as high as its
    /// rate, so that its area is its pages.
    static func rateChart(_ report: ProcessReport, prefix: String = "") -> String {
        let sweeps = report.sweeps
        let width = 900.0, height = 300.0
        let left = 70.0, right = 20.0, top = 16.0, bottom = 46.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let rates = sweeps.indices.map { report.sweepRate($0) }
        let maxRate = niceCeiling(rates.compactMap { $0 }.max() ?? 0)
        let axis = timeAxis(report)
        let xOf = { (t: Double) in left + plotWidth * t / axis.span }
        var svg =
            "<svg id=\"\(prefix)rate-chart\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"dirty pages per second over time\">\n"
        // Y axis: five ticks from 0 to a round maximum.
        for i in 0...5 {
            let value = maxRate * Double(i) / 5
            let y = top + plotHeight - plotHeight * Double(i) / 5
            svg +=
                "<line x1=\"\(n(left))\" x2=\"\(n(left + plotWidth))\" y1=\"\(n(y))\" y2=\"\(n(y))\" stroke=\"#e4e4e4\"/>"
            svg += "<text x=\"\(n(left - 6))\" y=\"\(n(y + 4))\" text-anchor=\"end\">\(escape(compact(value)))</text>\n"
        }
        svg +=
            "<text transform=\"translate(16 \(n(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">dirty pages / s</text>\n"
        // X axis: time, round steps.
        for tick in axis.ticks {
            let x = xOf(tick.seconds)
            svg +=
                "<line class=\"time-tick\" x1=\"\(n(x))\" x2=\"\(n(x))\" y1=\"\(n(top + plotHeight))\" y2=\"\(n(top + plotHeight + 5))\" stroke=\"#333\"/>"
                + "<text class=\"time-label\" x=\"\(n(x))\" y=\"\(n(top + plotHeight + 18))\" text-anchor=\"middle\">\(tick.label)</text>\n"
        }
        svg +=
            "<text x=\"\(n(left + plotWidth / 2))\" y=\"\(n(height - 6))\" text-anchor=\"middle\">"
            + "\(report.process.parent == nil ? "seconds since start" : "seconds since its fork")</text>\n"
        for (i, s) in sweeps.enumerated() {
            let rate = rates[i] ?? 0
            let h = maxRate > 0 ? plotHeight * rate / maxRate : 0
            let from = i == 0 ? report.process.beginNs : sweeps[i - 1].timeNs
            let x0 = xOf(axis.seconds(from)), x1 = xOf(axis.seconds(s.timeNs))
            // At least two pixels: sweeps close together stay visible.
            let barWidth = max(2, x1 - x0)
            let tip =
                "sweep \(s.seq) (\(s.reason)) at \(seconds(report, s.timeNs)) s: \(s.dirtyPages) pages\(TextReport.sweepNote(s)), "
                + (rates[i].map { Format.fixed($0, 1) + " pages/s" } ?? "no time since the previous sweep")
            svg +=
                "<rect class=\"rate-bar\" data-sweep=\"\(i)\" x=\"\(n(x1 - barWidth))\" y=\"\(n(top + plotHeight - h))\" width=\"\(n(barWidth))\" height=\"\(n(h))\" "
                + "fill=\"\(i == 0 ? firstBarColour : barColour)\" shape-rendering=\"crispEdges\"><title>\(escape(tip))</title></rect>\n"
        }
        svg +=
            "<line x1=\"\(n(left))\" x2=\"\(n(left + plotWidth))\" y1=\"\(n(top + plotHeight))\" y2=\"\(n(top + plotHeight))\" stroke=\"#333\"/>"
        svg +=
            "<line x1=\"\(n(left))\" x2=\"\(n(left))\" y1=\"\(n(top))\" y2=\"\(n(top + plotHeight))\" stroke=\"#333\"/>\n</svg>\n"
        svg +=
            "<p class=\"note\">Each bar spans the time from the sweep before to its sweep, and is as high as the pages "
            + "the sweep reported divided by that time: its area is its pages. Sweep 1 (lighter) reports everything "
            + "tracked, since tracking begins there, and spans the time from the start. Click a bar for its writers.</p>\n"
        return svg
    }

    /// The chart's time axis: from the start of the process's tracking to
    /// its end (or last sweep), with ticks at round seconds.
    struct TimeAxis {
        var beginNs: UInt64
        /// Seconds from `beginNs` to the right edge; never 0.
        var span: Double
        var ticks: [(seconds: Double, label: String)]

        func seconds(_ ns: UInt64) -> Double { ns >= beginNs ? Double(ns - beginNs) / 1e9 : 0 }
    }

    static func timeAxis(_ report: ProcessReport) -> TimeAxis {
        let begin = report.process.beginNs
        return timeAxis(
            beginNs: begin, endNs: max(report.sweeps.last?.timeNs ?? begin, report.process.ending?.timeNs ?? begin))
    }

    static func timeAxis(beginNs begin: UInt64, endNs last: UInt64) -> TimeAxis {
        let span = last > begin ? Double(last - begin) / 1e9 : 1e-3
        // Four to seven steps of 1, 2 or 5 times a power of ten.
        let step = niceCeiling(span / 6)
        var decimals = 0
        var scaled = step
        while decimals < 9 && abs(scaled - scaled.rounded()) > 1e-6 * max(1, scaled) {
            scaled *= 10
            decimals += 1
        }
        var ticks: [(Double, String)] = []
        var i = 0
        while Double(i) * step <= span * (1 + 1e-9) {
            let t = Double(i) * step
            ticks.append((t, i == 0 ? "0" : Format.fixed(t, decimals)))
            i += 1
        }
        return TimeAxis(beginNs: begin, span: span, ticks: ticks)
    }

    /// 1, 2 or 5 times a power of ten, at least `v`: round numbers on the axis.
    static func niceCeiling(_ v: Double) -> Double {
        guard v > 0 else { return 1 }
        var power = 1.0
        while power * 10 <= v { power *= 10 }
        while power > v { power /= 10 }
        for step in [1.0, 2.0, 5.0, 10.0] where step * power >= v { return step * power }
        return 10 * power
    }

    /// Axis labels: 1500 → 1.5k.
    static func compact(_ v: Double) -> String {
        if v >= 1e6 { return Format.fixed(v / 1e6, v.truncatingRemainder(dividingBy: 1e6) == 0 ? 0 : 1) + "M" }
        if v >= 1e3 { return Format.fixed(v / 1e3, v.truncatingRemainder(dividingBy: 1e3) == 0 ? 0 : 1) + "k" }
        return Format.fixed(v, v.rounded() == v ? 0 : 1)
    }

    // MARK: the page map

    /// The page map's most rows: a longer log's consecutive sweeps share a
    /// row. One row per sweep made an hour of 1 s sweeps 165,000 cells,
    /// 27 MB of a 30 MB page.
    static let pageMapRows = 240

    /// The page map's rows: runs of consecutive sweeps, at most `pageMapRows`
    /// of them, each of the same number of sweeps (the last one fewer).
    static func pageMapRowSweeps(_ sweeps: [LoggedSweep]) -> [ArraySlice<LoggedSweep>] {
        let perRow = max(1, (sweeps.count + pageMapRows - 1) / pageMapRows)
        return stride(from: 0, to: sweeps.count, by: perRow).map { sweeps[$0..<min($0 + perRow, sweeps.count)] }
    }

    static func pageMap(_ report: ProcessReport, prefix: String = "") -> String {
        let sweeps = report.sweeps
        let pageSize = report.log.pageSize
        let map = AddressMap(sweeps, pageSize: pageSize)
        guard map.columns > 0 else { return "<p class=\"note\">No dirty pages in this log.</p>\n" }
        let rows = pageMapRowSweeps(sweeps)
        let perRow = rows.first?.count ?? 1
        let left = 60.0, top = 24.0, plotWidth = 820.0
        let cellWidth = plotWidth / Double(map.columns)
        let rowHeight = min(16, max(2, (600 / Double(rows.count)).rounded(.down)))
        let gridBottom = top + rowHeight * Double(rows.count)
        // Room under the grid for the blocks' first addresses.
        let height = gridBottom + 22
        var svg =
            "<svg id=\"\(prefix)page-map\" width=\"\(Int(left + plotWidth + 20))\" height=\"\(Int(height))\" "
            + "role=\"img\" aria-label=\"dirty pages per sweep and address\">\n"
        svg +=
            "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(plotWidth))\" height=\"\(n(gridBottom - top))\" fill=\"#f4f4f4\"/>\n"
        var lastLabelEnd = -Double.infinity
        // Logs that name their mappings: each block's names, most pages first.
        let names = report.log.namesMappings ? report.process.allMappingNames() : nil
        let blockNames = map.blocks.map { b in names.map { blockMappings(b, of: map, names: $0) } ?? "" }
        for (i, b) in map.blocks.enumerated() {
            let x = left + cellWidth * Double(b.firstColumn)
            let title = blockNames[i].isEmpty ? "" : "<title>\(escape(label(i) + ": " + blockNames[i]))</title>"
            svg +=
                "<text x=\"\(n(x + cellWidth * Double(b.columns) / 2))\" y=\"\(n(top - 8))\" text-anchor=\"middle\">\(label(i))\(title)</text>"
            if i > 0 {
                svg +=
                    "<line x1=\"\(n(x))\" x2=\"\(n(x))\" y1=\"\(n(top - 4))\" y2=\"\(n(gridBottom + 4))\" stroke=\"#888\"/>"
            }
            // An address under a block where it does not run into the previous one (the legend lists them all).
            if x >= lastLabelEnd {
                svg += "<text x=\"\(n(x + 2))\" y=\"\(n(gridBottom + 16))\">\(b.span.start.hex)</text>"
                lastLabelEnd = x + 100
            }
            svg += "\n"
        }
        svg += "<text x=\"4\" y=\"\(n(top - 8))\">sweep</text>\n"
        let labelEvery = max(1, Int((12 / rowHeight).rounded(.up)))
        for (row, group) in rows.enumerated() {
            let y = top + rowHeight * Double(row)
            guard let first = group.first, let last = group.last else { continue }
            if row % labelEvery == 0 {
                svg +=
                    "<text x=\"\(n(left - 6))\" y=\"\(n(y + min(rowHeight, 12) - 1))\" text-anchor=\"end\">\(first.seq)</text>\n"
            }
            // A row of several sweeps: the pages any of them reported.
            let ranges: [AddressRange]
            if group.count == 1 {
                ranges = first.ranges
            } else {
                var union = PageSet()
                for s in group { for r in s.ranges { union.insert(r) } }
                ranges = union.ranges
            }
            let sweepsLabel = group.count == 1 ? "sweep \(first.seq)" : "sweeps \(first.seq)-\(last.seq)"
            for (column, dirty) in map.dirtyPerColumn(ranges).sorted(by: { $0.key < $1.key }) {
                let bucket = map.bucket(column)
                let tip =
                    "\(sweepsLabel): \(dirty) of \(bucket.pages) pages dirty in 0x\(String(bucket.start, radix: 16))-0x\(String(bucket.end, radix: 16))"
                    + (names?.name(of: RemoteAddress(bucket.start)).map { " (\($0))" } ?? "")
                svg +=
                    "<rect class=\"map-cell\" x=\"\(n(left + cellWidth * Double(column)))\" y=\"\(n(y))\" width=\"\(n(cellWidth))\" "
                    + "height=\"\(n(rowHeight))\" fill=\"\(heat(Double(dirty) / Double(max(1, bucket.pages))))\"><title>\(escape(tip))</title></rect>\n"
            }
        }
        svg += "</svg>\n"
        var legend =
            "<p class=\"note\">"
            + (perRow == 1
                ? "Rows are sweeps"
                : "Rows are \(perRow) sweeps each (the log has \(sweeps.count), the map at most \(pageMapRows) rows), "
                    + "labelled with the first; a cell counts the pages any of them reported")
            + ", columns hold \(map.pagesPerColumn) page\(map.pagesPerColumn == 1 ? "" : "s") each; "
            + "the darker a cell, the more of its pages the sweep reported dirty (hover for counts). "
            + "The columns are every page some sweep reported (sweep 1 reports all that is tracked), side by side: "
            + "the gaps between mappings are left out, and the blocks are cut at the widest of them.</p>\n<table class=\"rows mono\">\n"
            + "<tr><th>block</th><th>from</th><th>to</th><th class=\"num\">pages reported</th>"
            + (names == nil ? "" : "<th>mappings (pages reported)</th>") + "</tr>\n"
        for (i, b) in map.blocks.enumerated() {
            legend +=
                "<tr><td>\(label(i))</td><td>\(b.span.start.hex)</td><td>\(b.span.end.hex)</td><td class=\"num\">\(b.pages)</td>"
                + (names == nil ? "" : "<td class=\"block-mappings\">\(escape(blockNames[i]))</td>") + "</tr>\n"
        }
        return svg + legend + "</table>\n"
    }

    /// The names of the mappings a block of the page map holds, most reported pages first.
    static func blockMappings(_ block: AddressMap.Block, of map: AddressMap, names: MappingNames) -> String {
        let pages = names.pages(in: Array(map.pieces[block.pieces]))
        return pages.sorted { a, b in a.value != b.value ? a.value > b.value : (a.key ?? "") < (b.key ?? "") }
            .map { "\($0.key ?? ProcessReport.unnamedMapping) (\($0.value))" }.joined(separator: ", ")
    }

    /// Which mappings the sweeps dirtied, for a log that names them: one
    /// self-contained section (empty for older logs).
    static func mappingsSection(_ report: ProcessReport) -> String {
        guard let rows = report.mappingsDirtied else { return "" }
        let total = report.totalPages
        var t =
            "<p class=\"note\">The pages the sweeps reported, by the mapping they lie in "
            + "(its path as /proc/PID/maps shows it, [heap], [stack], or [anon] for anonymous memory).</p>\n"
            + "<table class=\"rows mappings\">\n<tr><th class=\"num\">pages</th><th class=\"num\">share</th>"
            + "<th class=\"num\">sweeps</th><th>mapping</th></tr>\n"
        for row in rows.prefix(maxWriterRows) {
            let share = total == 0 ? 0 : Double(row.pages) * 100 / Double(total)
            t +=
                "<tr><td class=\"num\">\(row.pages)</td><td class=\"num\">\(Format.fixed(share, 2))%</td>"
                + "<td class=\"num\">\(row.sweeps)</td><td class=\"mono\">\(escape(row.name))</td></tr>\n"
        }
        t += "</table>\n"
        if rows.count > maxWriterRows {
            t +=
                "<p class=\"note\">\(rows.count - maxWriterRows) smaller rows not shown here: "
                + "pagewatch report --format text --top 0 lists them all.</p>\n"
        }
        return t
    }

    /// Light to dark blue by the share of the bucket's pages that are dirty.
    static func heat(_ fraction: Double) -> String {
        let steps = ["#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c"]
        return steps[min(steps.count - 1, Int(fraction * Double(steps.count - 1) + 0.5))]
    }

    static func label(_ i: Int) -> String {
        let letters = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        return i < letters.count ? String(letters[i]) : "\(i + 1)"
    }

    // MARK: tables

    static func writersTable(_ report: ProcessReport, writers: [Writer], prefix: String = "") -> String {
        guard report.hasSites else {
            return "<p class=\"note\">None in this log: it was written with --stack-depth 0.</p>\n"
        }
        let total = writers.reduce(UInt64(0)) { $0 + $1.pages }
        var t =
            "<p class=\"note\">Each sweep's sites summed by call stack: \(writers.count) stacks, \(total) pages.</p>\n"
            + "<div class=\"scroll\"><table id=\"\(prefix)writers\" class=\"rows\">\n<tr><th class=\"num\">pages</th><th class=\"num\">share</th>"
            + "<th class=\"num\">faults</th><th>function</th><th>file:line</th></tr>\n"
        // A long-running program can have thousands of stacks: the page shows the
        // biggest; the text and folded formats have them all.
        for w in writers.prefix(maxWriterRows) {
            let name = FrameNaming.writer(w.frames)
            let share = total == 0 ? 0 : Double(w.pages) * 100 / Double(total)
            let callers = TextReport.callerChain(w.frames)
            t +=
                "<tr><td class=\"num\">\(w.pages)</td><td class=\"num\">\(Format.fixed(share, 2))%</td><td class=\"num\">\(w.faults)</td>"
                + "<td><span class=\"mono\">\(escape(name.function + TextReport.writerOrigin(w.frames)))</span>"
                + (callers.isEmpty ? "" : "<div class=\"callers\">\(escape(callers))</div>")
                + "</td><td class=\"mono\">\(escape(name.location ?? "-"))</td></tr>\n"
        }
        t += "</table></div>\n"
        if writers.count > maxWriterRows {
            t +=
                "<p class=\"note\">\(writers.count - maxWriterRows) smaller stacks not shown here: "
                + "pagewatch report --format text lists them all.</p>\n"
        }
        return t
    }

    static let maxWriterRows = 300

    static func sweepsTable(_ report: ProcessReport) -> String {
        var t =
            "<div class=\"scroll\"><table class=\"rows\">\n<tr><th class=\"num\">seq</th><th>reason</th><th class=\"num\">at (s)</th>"
            + "<th class=\"num\">dirty pages</th><th class=\"num\">MiB</th><th class=\"num\">faults</th><th class=\"num\">pages/s</th></tr>\n"
        for (i, s) in report.sweeps.enumerated() {
            t +=
                "<tr data-sweep=\"\(i)\"><td class=\"num\">\(s.seq)</td><td>\(escape(s.reason))</td><td class=\"num\">\(seconds(report, s.timeNs))</td>"
                + "<td class=\"num\">\(s.dirtyPages)\(escape(TextReport.sweepNote(s)))</td><td class=\"num\">\(Format.fixed(report.mib(s.dirtyPages), 2))</td>"
                + "<td class=\"num\">\(s.faults)</td><td class=\"num\">\(report.sweepRate(i).map { Format.fixed($0, 1) } ?? "-")</td></tr>\n"
        }
        return t + "</table></div>\n<p class=\"note\">Click a sweep for its writers.</p>\n"
    }

    static func flameGraph(_ report: ProcessReport, writers: [Writer], prefix: String) -> String {
        guard report.hasSites else {
            return "<p class=\"note\">None in this log: it was written with --stack-depth 0.</p>\n"
        }
        let graph = FlameGraph(FoldedReport.stacks(writers))
        guard let drawn = graph.svg(id: "\(prefix)flame-graph") else {
            return "<p class=\"note\">No writer wrote a page in this log.</p>\n"
        }
        return "<div class=\"scroll tall\">\n" + drawn.svg + "</div>\n"
            + "<p class=\"note\">The stacks of pagewatch report --format folded: callers below, the writer on top, "
            + "each frame as wide as the pages written under it (hover for the stack and its pages; click a frame "
            + "to zoom in on it, the bottom row to zoom out). "
            + (drawn.omitted > 0
                ? "\(drawn.omitted) frames under 0.1% of the \(graph.total) pages are left out. " : "")
            + "</p>\n"
    }

    /// Text and attribute values: program arguments and paths can hold anything.
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    /// An SVG coordinate with at most one decimal.
    static func n(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : Format.fixed(r, 1)
    }
}
