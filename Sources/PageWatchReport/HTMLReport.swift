import PageWatchAddressSpace
import PageWatchLog

/// `pagewatch report --format html`: one self-contained page (inline CSS,
/// inline SVG, a few lines of script, nothing fetched) with the dirty rate
/// per sweep, a map of which pages each sweep dirtied, and the top writers.
public enum HTMLReport {
    /// The rate bars' fill. Used nowhere else on the page, so a test can
    /// count its pixels in a screenshot to see the chart was drawn.
    public static let barColour = "#d6336c"
    /// Sweep 1's bar: it reports everything tracked, not an interval's writes.
    static let firstBarColour = "#e8a0bb"

    public static func render(_ report: ProcessReport) -> String {
        let log = report.log
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
            body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
            h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
            table { border-collapse: collapse; }
            td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
            td.num, th.num { text-align: right; }
            table.rows td, table.rows th { border-bottom: 1px solid #ddd; }
            .callers { color: #666; font-size: 12px; }
            .note { color: #555; font-size: 13px; max-width: 900px; }
            code, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
            svg text { font: 11px system-ui, sans-serif; fill: #333; }
            </style>
            </head>
            <body>
            <h1>PageWatch report</h1>

            """
        html += summary(report)
        html += "<h2>Dirty rate per sweep</h2>\n" + rateChart(report)
        html += "<h2>Pages dirtied, sweep by sweep</h2>\n" + pageMap(report)
        html += "<h2>Top writers</h2>\n" + writersTable(report)
        html += "<h2>Sweeps</h2>\n" + sweepsTable(report)
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
        let others = log.processes.filter { $0.pid != process.pid }.map(\.pid)
        if !others.isEmpty {
            rows.append(
                ("other processes", others.map(String.init).joined(separator: ", ") + " (pagewatch report --pid PID)"))
        }
        return "<table class=\"summary\">\n"
            + rows.map { "<tr><th>\(escape($0.0))</th><td>\(escape($0.1))</td></tr>\n" }.joined() + "</table>\n"
    }

    // MARK: the rate chart

    static func rateChart(_ report: ProcessReport) -> String {
        let sweeps = report.sweeps
        let width = 900.0, height = 300.0
        let left = 70.0, right = 20.0, top = 16.0, bottom = 46.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let rates = sweeps.indices.map { report.sweepRate($0) }
        let maxRate = niceCeiling(rates.compactMap { $0 }.max() ?? 0)
        var svg =
            "<svg id=\"rate-chart\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"dirty pages per second, per sweep\">\n"
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
        svg +=
            "<text x=\"\(n(left + plotWidth / 2))\" y=\"\(n(height - 6))\" text-anchor=\"middle\">sweep (seq)</text>\n"
        let slot = sweeps.isEmpty ? plotWidth : plotWidth / Double(sweeps.count)
        let barWidth = max(1, slot * (sweeps.count < 60 ? 0.8 : 1.0))
        let labelEvery = max(1, sweeps.count / 15)
        for (i, s) in sweeps.enumerated() {
            let rate = rates[i] ?? 0
            let h = maxRate > 0 ? plotHeight * rate / maxRate : 0
            let x = left + slot * Double(i) + (slot - barWidth) / 2
            let tip =
                "sweep \(s.seq) (\(s.reason)): \(s.dirtyPages) pages\(TextReport.sweepNote(s)), "
                + (rates[i].map { Format.fixed($0, 1) + " pages/s" } ?? "no time since the previous sweep")
            svg +=
                "<rect class=\"rate-bar\" x=\"\(n(x))\" y=\"\(n(top + plotHeight - h))\" width=\"\(n(barWidth))\" height=\"\(n(h))\" "
                + "fill=\"\(i == 0 ? firstBarColour : barColour)\"><title>\(escape(tip))</title></rect>\n"
            if i % labelEvery == 0 {
                svg +=
                    "<text x=\"\(n(left + slot * (Double(i) + 0.5)))\" y=\"\(n(top + plotHeight + 16))\" text-anchor=\"middle\">\(s.seq)</text>\n"
            }
        }
        svg +=
            "<line x1=\"\(n(left))\" x2=\"\(n(left + plotWidth))\" y1=\"\(n(top + plotHeight))\" y2=\"\(n(top + plotHeight))\" stroke=\"#333\"/>"
        svg +=
            "<line x1=\"\(n(left))\" x2=\"\(n(left))\" y1=\"\(n(top))\" y2=\"\(n(top + plotHeight))\" stroke=\"#333\"/>\n</svg>\n"
        svg +=
            "<p class=\"note\">Each bar is the pages a sweep reported divided by the time since the previous sweep. "
            + "Sweep 1 (lighter) reports everything tracked, since tracking begins there, and is measured from the start.</p>\n"
        return svg
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

    static func pageMap(_ report: ProcessReport) -> String {
        let sweeps = report.sweeps
        let pageSize = report.log.pageSize
        let map = AddressMap(sweeps, pageSize: pageSize)
        guard map.columns > 0 else { return "<p class=\"note\">No dirty pages in this log.</p>\n" }
        let left = 60.0, top = 24.0, plotWidth = 820.0
        let cellWidth = plotWidth / Double(map.columns)
        let rowHeight = min(16, max(2, (600 / Double(sweeps.count)).rounded(.down)))
        let gridBottom = top + rowHeight * Double(sweeps.count)
        // Room under the grid for the blocks' first addresses.
        let height = gridBottom + 22
        var svg =
            "<svg id=\"page-map\" width=\"\(Int(left + plotWidth + 20))\" height=\"\(Int(height))\" "
            + "role=\"img\" aria-label=\"dirty pages per sweep and address\">\n"
        svg +=
            "<rect x=\"\(n(left))\" y=\"\(n(top))\" width=\"\(n(plotWidth))\" height=\"\(n(gridBottom - top))\" fill=\"#f4f4f4\"/>\n"
        var lastLabelEnd = -Double.infinity
        for (i, b) in map.blocks.enumerated() {
            let x = left + cellWidth * Double(b.firstColumn)
            svg +=
                "<text x=\"\(n(x + cellWidth * Double(b.columns) / 2))\" y=\"\(n(top - 8))\" text-anchor=\"middle\">\(label(i))</text>"
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
        for (row, s) in sweeps.enumerated() {
            let y = top + rowHeight * Double(row)
            if row % labelEvery == 0 {
                svg +=
                    "<text x=\"\(n(left - 6))\" y=\"\(n(y + min(rowHeight, 12) - 1))\" text-anchor=\"end\">\(s.seq)</text>\n"
            }
            for (column, dirty) in map.dirtyPerColumn(s.ranges).sorted(by: { $0.key < $1.key }) {
                let bucket = map.bucket(column)
                let tip =
                    "sweep \(s.seq): \(dirty) of \(bucket.pages) pages dirty in 0x\(String(bucket.start, radix: 16))-0x\(String(bucket.end, radix: 16))"
                svg +=
                    "<rect class=\"map-cell\" x=\"\(n(left + cellWidth * Double(column)))\" y=\"\(n(y))\" width=\"\(n(cellWidth))\" "
                    + "height=\"\(n(rowHeight))\" fill=\"\(heat(Double(dirty) / Double(max(1, bucket.pages))))\"><title>\(escape(tip))</title></rect>\n"
            }
        }
        svg += "</svg>\n"
        var legend =
            "<p class=\"note\">Rows are sweeps, columns hold \(map.pagesPerColumn) page\(map.pagesPerColumn == 1 ? "" : "s") each; "
            + "the darker a cell, the more of its pages the sweep reported dirty (hover for counts). "
            + "The columns are every page some sweep reported (sweep 1 reports all that is tracked), side by side: "
            + "the gaps between mappings are left out, and the blocks are cut at the widest of them.</p>\n<table class=\"rows mono\">\n"
            + "<tr><th>block</th><th>from</th><th>to</th><th class=\"num\">pages reported</th></tr>\n"
        for (i, b) in map.blocks.enumerated() {
            legend +=
                "<tr><td>\(label(i))</td><td>\(b.span.start.hex)</td><td>\(b.span.end.hex)</td><td class=\"num\">\(b.pages)</td></tr>\n"
        }
        return svg + legend + "</table>\n"
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

    static func writersTable(_ report: ProcessReport) -> String {
        guard report.hasSites else {
            return "<p class=\"note\">None in this log: it was written with --stack-depth 0.</p>\n"
        }
        let writers = report.writers
        let total = writers.reduce(UInt64(0)) { $0 + $1.pages }
        var t =
            "<p class=\"note\">Each sweep's sites summed by call stack: \(writers.count) stacks, \(total) pages.</p>\n"
            + "<table id=\"writers\" class=\"rows\">\n<tr><th class=\"num\">pages</th><th class=\"num\">share</th>"
            + "<th class=\"num\">faults</th><th>function</th><th>file:line</th></tr>\n"
        // A long-running program can have thousands of stacks: the page shows the
        // biggest; the text and folded formats have them all.
        for w in writers.prefix(maxWriterRows) {
            let name = FrameNaming.writer(w.frames)
            let share = total == 0 ? 0 : Double(w.pages) * 100 / Double(total)
            let callers = TextReport.callerChain(w.frames)
            t +=
                "<tr><td class=\"num\">\(w.pages)</td><td class=\"num\">\(Format.fixed(share, 2))%</td><td class=\"num\">\(w.faults)</td>"
                + "<td><span class=\"mono\">\(escape(name.function))</span>"
                + (callers.isEmpty ? "" : "<div class=\"callers\">\(escape(callers))</div>")
                + "</td><td class=\"mono\">\(escape(name.location ?? "-"))</td></tr>\n"
        }
        t += "</table>\n"
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
            "<table class=\"rows\">\n<tr><th class=\"num\">seq</th><th>reason</th><th class=\"num\">at (ms)</th>"
            + "<th class=\"num\">dirty pages</th><th class=\"num\">MiB</th><th class=\"num\">faults</th><th class=\"num\">pages/s</th></tr>\n"
        for (i, s) in report.sweeps.enumerated() {
            let at =
                s.timeNs >= report.process.beginNs
                ? Format.fixed(Double(s.timeNs - report.process.beginNs) / 1e6, 1) : "-"
            t +=
                "<tr><td class=\"num\">\(s.seq)</td><td>\(escape(s.reason))</td><td class=\"num\">\(at)</td>"
                + "<td class=\"num\">\(s.dirtyPages)\(escape(TextReport.sweepNote(s)))</td><td class=\"num\">\(Format.fixed(report.mib(s.dirtyPages), 2))</td>"
                + "<td class=\"num\">\(s.faults)</td><td class=\"num\">\(report.sweepRate(i).map { Format.fixed($0, 1) } ?? "-")</td></tr>\n"
        }
        return t + "</table>\n"
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
