import PageWatchLog

/// The HTML report's per-sweep writer view: who dirtied the pages of one
/// sweep. Every sweep's biggest writers are embedded as JSON (names once,
/// in a table, then indices: a 3,600-sweep log repeats the same few
/// stacks); the page's script shows the sweep picked, and the page itself
/// shows one sweep's for a reader without script.
enum SweepWritersView {
    /// Writers listed per sweep; the rest are counted.
    static let cap = 10

    struct Name: Equatable {
        var function: String
        var location: String?
        var callers: String
    }

    struct Entry: Equatable {
        var name: Int
        var pages: UInt64
        var faults: Int
    }

    struct Sweep: Equatable {
        var entries: [Entry]
        /// Writers past the cap, and their pages.
        var moreStacks: Int
        var morePages: UInt64
    }

    struct Model: Equatable {
        var names: [Name] = []
        var sweeps: [Sweep] = []
    }

    /// Each sweep's sites summed by stack and merged as the text report's
    /// rows are (`TextReport.rows`), biggest first, at most `cap`.
    static func model(_ report: ProcessReport, cap: Int = cap) -> Model {
        var model = Model()
        var index: [String: Int] = [:]
        for s in report.sweeps {
            let rows = TextReport.rows(Writer.summed([s.sites ?? []]))
            var sweep = Sweep(entries: [], moreStacks: max(0, rows.count - cap), morePages: 0)
            for row in rows.dropFirst(cap) { sweep.morePages += row.pages }
            for row in rows.prefix(cap) {
                let name =
                    index[row.key]
                    ?? {
                        model.names.append(Name(function: row.function, location: row.location, callers: row.callers))
                        index[row.key] = model.names.count - 1
                        return model.names.count - 1
                    }()
                sweep.entries.append(Entry(name: name, pages: row.pages, faults: row.faults))
            }
            model.sweeps.append(sweep)
        }
        return model
    }

    /// `{"cap":N,"names":[[function,location,callers],…],"sweeps":[[[name,pages,faults],…],moreStacks,morePages],…]}`,
    /// `sweeps` in the order of the process's sweeps; a location is null when unknown.
    static func json(_ model: Model, cap: Int = cap) -> String {
        var out = "{\"cap\":\(cap),\"names\":["
        out += model.names.map {
            "[\(jsonString($0.function)),\($0.location.map(jsonString) ?? "null"),\(jsonString($0.callers))]"
        }.joined(separator: ",")
        out += "],\"sweeps\":[\n"
        out += model.sweeps.map { s in
            "[[" + s.entries.map { "[\($0.name),\($0.pages),\($0.faults)]" }.joined(separator: ",")
                + "],\(s.moreStacks),\(s.morePages)]"
        }.joined(separator: ",\n")
        return out + "]}"
    }

    /// A JSON string that is also safe inside a `<script>` element: the
    /// log's JSON string with `<`, `>`, `&` (no `</script>` can end it
    /// early) and the two line separators JavaScript once rejected escaped.
    static func jsonString(_ s: String) -> String {
        var out = ""
        for scalar in JSONLines.string(s).unicodeScalars {
            switch scalar {
            case "<", ">", "&", "\u{2028}", "\u{2029}":
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// The sweep shown first: the one that reported most after sweep 1
    /// (which reports everything tracked).
    static func firstShown(_ report: ProcessReport) -> Int {
        let sweeps = report.sweeps
        guard sweeps.count > 1 else { return 0 }
        return sweeps.indices.dropFirst().max { a, b in
            sweeps[a].dirtyPages != sweeps[b].dirtyPages ? sweeps[a].dirtyPages < sweeps[b].dirtyPages : a > b
        }!
    }

    static func html(_ report: ProcessReport, prefix: String) -> String {
        guard !report.sweeps.isEmpty else { return "<p class=\"note\">No sweeps in this log.</p>\n" }
        guard report.hasSites else {
            return "<p class=\"note\">None in this log: it was written with --stack-depth 0.</p>\n"
        }
        let model = model(report)
        let shown = firstShown(report)
        var out =
            "<div class=\"sweep-view\">\n<p><label>Sweep <select id=\"\(prefix)sweep-select\" class=\"sweep-select\">\n"
        for (i, s) in report.sweeps.enumerated() {
            out +=
                "<option value=\"\(i)\"\(i == shown ? " selected" : "")>\(s.seq) at \(HTMLReport.seconds(report, s.timeNs)) s: "
                + "\(s.dirtyPages) pages, \(s.faults) faults (\(HTMLReport.escape(s.reason)))</option>\n"
        }
        out +=
            "</select></label> <span class=\"note\">or click a sweep's row in the table above, or its bar in the chart.</span></p>\n"
        out += "<script type=\"application/json\" class=\"sweep-data\">" + json(model) + "</script>\n"
        out +=
            "<div class=\"scroll\"><table class=\"rows sweep-table\" id=\"\(prefix)sweep-table\">\n"
            + "<tr><th class=\"num\">pages</th><th class=\"num\">faults</th><th>function</th><th>file:line</th></tr>\n"
        let sweep = model.sweeps[shown]
        for e in sweep.entries {
            let name = model.names[e.name]
            out +=
                "<tr><td class=\"num\">\(e.pages)</td><td class=\"num\">\(e.faults)</td>"
                + "<td><span class=\"mono\">\(HTMLReport.escape(name.function))</span>"
                + (name.callers.isEmpty ? "" : "<div class=\"callers\">\(HTMLReport.escape(name.callers))</div>")
                + "</td><td class=\"mono\">\(HTMLReport.escape(name.location ?? "-"))</td></tr>\n"
        }
        out += "</table></div>\n<p class=\"note sweep-more\">\(HTMLReport.escape(moreNote(sweep)))</p>\n"
        out +=
            "<noscript><p class=\"note\">Without JavaScript this shows the busiest sweep after sweep 1 only.</p></noscript>\n"
        out +=
            "<p class=\"note\">The page keeps each sweep's \(cap) biggest writers (its sites summed by call stack); "
            + "the others are counted under the table.</p>\n</div>\n"
        return out
    }

    /// What the script writes under the table too (the page's script has the same words).
    static func moreNote(_ sweep: Sweep) -> String {
        if sweep.entries.isEmpty && sweep.moreStacks == 0 { return "No writer in this sweep." }
        guard sweep.moreStacks > 0 else { return "" }
        return "\(sweep.moreStacks) smaller stacks, \(sweep.morePages) pages, not listed."
    }

    /// Fills the table from the JSON when a sweep is picked.
    static let script = """
        function pagewatchCell(row, text, cls) {
          var td = row.insertCell(-1);
          td.textContent = text;
          if (cls) td.className = cls;
          return td;
        }
        function pagewatchShowSweep(view, index) {
          if (!view.pagewatchData) view.pagewatchData = JSON.parse(view.querySelector('.sweep-data').textContent);
          var data = view.pagewatchData, sweep = data.sweeps[index];
          if (!sweep) return;
          var table = view.querySelector('.sweep-table');
          while (table.rows.length > 1) table.deleteRow(1);
          sweep[0].forEach(function (w) {
            var name = data.names[w[0]], row = table.insertRow(-1);
            pagewatchCell(row, String(w[1]), 'num');
            pagewatchCell(row, String(w[2]), 'num');
            var f = pagewatchCell(row, '', '');
            var span = document.createElement('span');
            span.className = 'mono';
            span.textContent = name[0];
            f.appendChild(span);
            if (name[2]) {
              var callers = document.createElement('div');
              callers.className = 'callers';
              callers.textContent = name[2];
              f.appendChild(callers);
            }
            pagewatchCell(row, name[1] === null ? '-' : name[1], 'mono');
          });
          view.querySelector('.sweep-more').textContent = sweep[0].length === 0 && sweep[1] === 0
            ? 'No writer in this sweep.'
            : (sweep[1] > 0 ? sweep[1] + ' smaller stacks, ' + sweep[2] + ' pages, not listed.' : '');
          view.querySelector('.sweep-select').value = String(index);
          var process = view.closest('.process');
          process.querySelectorAll('tr.picked').forEach(function (row) { row.classList.remove('picked'); });
          var row = process.querySelector('tr[data-sweep="' + index + '"]');
          if (row) row.classList.add('picked');
        }
        document.querySelectorAll('.sweep-view').forEach(function (view) {
          var select = view.querySelector('.sweep-select');
          select.addEventListener('change', function () { pagewatchShowSweep(view, Number(select.value)); });
        });
        // A sweep's row or bar picks it in its process's view.
        document.querySelectorAll('[data-sweep]').forEach(function (el) {
          el.addEventListener('click', function () {
            var process = el.closest('.process');
            var view = process && process.querySelector('.sweep-view');
            if (!view) return;
            pagewatchShowSweep(view, Number(el.getAttribute('data-sweep')));
            view.scrollIntoView({ block: 'nearest' });
          });
        });

        """
}
