import Foundation
import Testing

/// `pagewatch report` on a real log: `fx_writers` run under `pagewatch run`,
/// then reported in the three formats; the HTML page opened in a real
/// headless Chromium (scripts/install-deps.sh installs it).
@Suite(.serialized) struct ReportCommandTests {
    /// The log of one fx_writers run, and what the fixture said it wrote.
    struct Run {
        var log: String
        /// `site` lines: function → (pages, line in fx_writers.c).
        var sites: [String: (pages: Int, line: Int)]
        /// Every page the sweeps report: the fixture's phases, summed.
        var totalPages: Int
    }

    func record() throws -> Run {
        let program = Harness.fixture("fx_writers")
        let log = Harness.temporaryPath("report-\(UUID().uuidString).jsonl")
        let run = try Harness.run([
            Harness.pagewatch, "run", "--track", "0x270000000000-0x270000008000",
            "--sweep-signal", "USR2", "--interval", "0", "--output", log, "--", program,
        ])
        #expect(run.status == 0, "\(run.stderr)")
        var sites: [String: (pages: Int, line: Int)] = [:]
        for line in run.stdout.split(separator: "\n") where line.hasPrefix("site ") {
            let f = line.split(separator: " ").map(String.init)
            sites[f[2], default: (0, Int(f[5])!)].pages += 1
        }
        let truth = try FixtureTruth(stdout: run.stdout)
        return Run(log: log, sites: sites, totalPages: truth.expectedSweeps.reduce(0) { $0 + $1.pages.count })
    }

    func report(_ arguments: [String], stdin: String? = nil) throws -> Harness.Result {
        try Harness.run([Harness.pagewatch, "report"] + arguments, stdin: stdin)
    }

    /// A table row with its runs of spaces squeezed to one.
    static func rows(_ text: String) -> [String] {
        text.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
    }

    static func percent(_ part: Int, _ whole: Int) -> String {
        let hundredths = (part * 10_000 + whole / 2) / whole
        return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)%"
    }

    @Test func textListsEachWriterWithPagesShareAndLine() throws {
        let run = try record()
        #expect(run.totalPages == 14)
        let result = try report([run.log])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.isEmpty)
        let rows = Self.rows(result.stdout)
        #expect(rows.contains("program \(Harness.fixture("fx_writers"))"))
        #expect(rows.contains("sweeps 4"))
        #expect(rows.contains { $0.hasPrefix("dirty 14 pages (0.05 MiB) over all sweeps, ") })
        #expect(
            rows.contains {
                $0.hasPrefix("rate ") && $0.contains("pages/s") && $0.contains("the 6 pages of sweeps 2-4")
            })
        #expect(rows.contains("top writers: 6 call stacks, 14 pages (each sweep's sites summed by call stack)"))
        for name in ["fill_two", "poke_five", "descend"] {
            let (pages, line) = try #require(run.sites[name])
            #expect(
                rows.contains("\(pages) \(Self.percent(pages, 14)) \(pages) \(name) fixtures/fx_writers.c:\(line)"),
                "\(name) in \(result.stdout)")
        }
        #expect(run.sites["fill_two"]?.pages == 2)
        // The kernel's write for read(): no fault, named with the libc function that made the call,
        // and main's line of the call under it.
        let kernel = try #require(rows.firstIndex { $0.hasPrefix("1 7.14% 0 [kernel] read <- ") })
        #expect(rows[kernel + 1].hasPrefix("<- main (fixtures/fx_writers.c:\(run.sites["[kernel]read"]!.line))"))
        // Most pages first: sweep 1 reports all 8 pages, written by main's region setup.
        // The writers table ends where the mappings table (or the pre-copy plan) begins.
        let writerRows = rows.drop { !$0.hasPrefix("pages share") }.dropFirst().prefix {
            !$0.hasPrefix("mappings dirtied:") && !$0.hasPrefix("pre-copy ")
        }
        let pageColumn = writerRows.filter { !$0.hasPrefix("<-") }.map {
            Int($0.split(separator: " ")[0])!
        }
        #expect(pageColumn == [8, 2, 1, 1, 1, 1])
    }

    /// pprof, decoded by Go's own pprof (not by our writer's code): the
    /// same writers, pages and faults as the text report.
    @Test func pprofIsReadByGoToolPprof() throws {
        let run = try record()
        let profile = Harness.temporaryPath("report-\(UUID().uuidString).pb.gz")
        let written = try report(["--format", "pprof", "-o", profile, run.log])
        #expect(written.status == 0, "\(written.stderr)")
        let bytes = try #require(FileManager.default.contents(atPath: profile))
        #expect(bytes.prefix(2) == Data([0x1f, 0x8b]))  // gzip
        let traces = try Harness.run(["/usr/bin/env", "go", "tool", "pprof", "-traces", profile], timeout: 300)
        #expect(traces.status == 0, "\(traces.stderr)")
        // Each trace: "VALUE LEAF" then its callers, one per line.
        let blocks = traces.stdout.components(separatedBy: "-----------+").dropFirst().map {
            $0.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }.filter {
                !$0.isEmpty && !$0.hasPrefix("-")
            }
        }
        func pages(leaf: String) -> Int {
            blocks.filter { $0.first?.hasSuffix(" " + leaf) == true }.compactMap {
                Int($0.first!.split(separator: " ")[0])
            }
            .reduce(0, +)
        }
        for (function, site) in run.sites where !function.hasPrefix("[") && function != "libc" {
            #expect(pages(leaf: function) == site.pages, "\(function)")
        }
        #expect(blocks.contains { $0.first?.hasSuffix(" fill_two") == true && $0.dropFirst().first == "main" })
        // The total: every page of every site, as the text report counts them.
        let top = try Harness.run(
            ["/usr/bin/env", "go", "tool", "pprof", "-top", "-sample_index=pages", profile], timeout: 300)
        let text = try report(["--top", "0", "--empty-rows", run.log]).stdout
        let total = try #require(
            Self.rows(text).first { $0.hasPrefix("top writers: ") }?.split(separator: ",").last?.split(separator: " ")
                .first)
        #expect(top.stdout.contains("of \(total) total"), "\(top.stdout.prefix(400))")
        let faults = try Harness.run(
            ["/usr/bin/env", "go", "tool", "pprof", "-top", "-sample_index=faults", profile], timeout: 300)
        #expect(faults.stdout.contains("Type: faults"))
    }

    @Test func topAndMinPercentChooseTheRows() throws {
        let run = try record()
        let all = Self.rows(try report(["--top", "0", "--empty-rows", run.log]).stdout)
        let one = try report(["--top", "1", run.log])
        #expect(one.status == 0)
        let rows = Self.rows(one.stdout)
        let table = { (rows: [String]) in
            rows.drop { !$0.hasPrefix("pages share faults") }.dropFirst().prefix {
                !$0.hasPrefix("mappings dirtied:") && !$0.hasPrefix("pre-copy ")
            }
        }
        // The first row (and its callers' line) is the same; the rest is one line saying what is left out.
        #expect(table(rows).first == table(all).first)
        #expect(table(rows).last?.contains("more row(s)") == true && table(rows).last?.contains("--top 0") == true)
        #expect(!all.contains { $0.contains("more row(s)") })
        let bad = try report(["--top", "-1", run.log])
        #expect(bad.status == 2 && bad.stderr.contains("invalid --top -1"))
        let badShare = try report(["--min-percent", "101", run.log])
        #expect(badShare.status == 2 && badShare.stderr.contains("invalid --min-percent"))
    }

    /// A followed child is named by the command its exec gave it, in the
    /// log, the summary and the report, with a total across processes.
    @Test func followedChildrenAreNamedByTheirCommand() throws {
        let log = Harness.temporaryPath("named-\(UUID().uuidString).jsonl")
        let command = ["sh", "-c", "/bin/echo hi; true"]
        let run = try Harness.run(
            [Harness.pagewatch, "run", "--follow-forks", "--interval", "0", "--output", log] + command)
        #expect(run.status == 0 && run.stdout == "hi\n")
        let records = try Harness.readLog(log)
        let exec = try #require(records.first { $0["type"] as? String == "exec" })
        #expect(exec["command"] as? [String] == ["/bin/echo", "hi"])
        let child = try #require(exec["pid"] as? Int)
        let summary = try Harness.run(
            [Harness.pagewatch, "run", "--follow-forks", "--interval", "0"] + command)
        #expect(summary.stderr.contains(" echo (forked by "))
        #expect(summary.stderr.contains("  all 2 processes: "))
        let program = try report([log])
        #expect(program.stdout.contains("processes also in the log: \(child) echo (forked by "))
        #expect(Self.rows(program.stdout).contains { $0.hasPrefix("all 2 processes: ") })
        let echo = try report(["--pid", String(child), log])
        #expect(echo.stdout.contains("command   /bin/echo hi\n"))
    }

    @Test func foldedHasOneStackPerWriterOutermostFirst() throws {
        let run = try record()
        let result = try report(["--format", "folded", run.log])
        #expect(result.status == 0, "\(result.stderr)")
        var total = 0
        var stacks: [[String]: Int] = [:]
        for line in result.stdout.split(separator: "\n") {
            let m = try #require(line.wholeMatch(of: /(.+) (\d+)/), "not a folded line: \(line)")
            let frames = m.1.split(separator: ";").map(String.init)
            #expect(frames.allSatisfy { !$0.isEmpty })
            total += Int(m.2)!
            stacks[frames] = Int(m.2)!
        }
        #expect(total == run.totalPages)
        #expect(stacks[["_start", "__libc_start_main", "__libc_start_call_main", "main", "fill_two"]] == 2)
        #expect(stacks[["_start", "__libc_start_main", "__libc_start_call_main", "main", "poke_five"]] == 1)
        let kernel = try #require(stacks.first { $0.key.last == "[kernel] read" })
        #expect(kernel.value == 1)
        #expect(Array(kernel.key.prefix(4)) == ["_start", "__libc_start_main", "__libc_start_call_main", "main"])
        // 16 frames by default, all of the recursion.
        #expect(stacks[Array(repeating: "descend", count: 16)] == 1)
        #expect(result.stdout.contains("_start;__libc_start_main;__libc_start_call_main;main;fill_two 2\n"))
    }

    @Test func htmlRendersInHeadlessChromium() throws {
        let run = try record()
        let html = Harness.temporaryPath("report.html")
        let result = try report(["--format", "html", "--output", html, run.log])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.isEmpty)
        let page = try String(contentsOfFile: html, encoding: .utf8)
        #expect(!page.contains("http://") && !page.contains("https://"))
        #expect(page.contains("fill_two"))

        let chromium = try #require(
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            },
            "chromium is missing: scripts/install-deps.sh installs it")
        let profile = Harness.temporaryPath("chromium-profile-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(atPath: profile) }
        let common = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(profile)",
            "--enable-logging=stderr", "--v=0", "--window-size=1200,900",
        ]
        // Headless Chromium on two busy cores can take tens of seconds to start: 120 s each.
        // The DOM after the page's script ran: it writes whether any script error happened.
        let dom = try Harness.run(common + ["--dump-dom", "file://\(html)"], timeout: 120)
        #expect(dom.status == 0, "\(dom.stderr)")
        #expect(
            dom.stdout.contains(
                "<p id=\"render-check\" hidden=\"\" class=\"ok\">rendered: 4 bars, 14 map cells, chart 900x300</p>"),
            "\(dom.stdout.suffix(600))")
        let consoleErrors = dom.stderr.split(separator: "\n").filter {
            $0.contains("CONSOLE") || $0.contains("Uncaught")
        }
        #expect(consoleErrors.isEmpty, "\(consoleErrors)")

        let png = Harness.temporaryPath("report.png")
        try? FileManager.default.removeItem(atPath: png)
        let shot = try Harness.run(common + ["--screenshot=\(png)", "file://\(html)"], timeout: 120)
        #expect(shot.status == 0, "\(shot.stderr)")
        // The bars' colour is used nowhere else: its pixels are the chart, drawn. The bars
        // are as wide as the time between sweeps, and sweeps 2-4 come within a few
        // milliseconds of a run of a few hundred: the fastest of them is at least 2 px wide
        // and half the plot's 238 px high (the axis is rounded up to 1, 2 or 5 times ten to the N).
        let pixels = try Self.countPixels(png, colour: "d6336c")
        #expect(pixels.width == 1200 && pixels.height == 900)
        #expect(pixels.matching > 200, "only \(pixels.matching) bar pixels in \(png)")
    }

    @Test func refusesWhatItCannotRead() throws {
        let missing = try report(["/nonexistent/log.jsonl"])
        #expect(missing.status == 1)
        #expect(missing.stderr == "pagewatch: cannot read /nonexistent/log.jsonl: No such file or directory\n")
        let schema = try report(["-"], stdin: #"{"type":"start","schema":"pagewatch/9","pid":1}"# + "\n")
        #expect(schema.status == 1)
        #expect(
            schema.stderr
                == "pagewatch: <stdin>:1: schema 'pagewatch/9' is not supported: this pagewatch reads pagewatch/2 and pagewatch/1 only\n"
        )
        let run = try record()
        let lines = try String(contentsOfFile: run.log, encoding: .utf8).split(separator: "\n")
        let broken = lines.prefix(2).joined(separator: "\n") + "\n{\"type\": \"sweep\", oops\n"
        let bad = try report(["-"], stdin: broken)
        #expect(bad.status == 1)
        #expect(bad.stderr.hasPrefix("pagewatch: <stdin>:3: not a JSON object"))
        #expect(bad.stderr.split(separator: "\n").count == 1)
        let pid = try report(["--pid", "1", run.log])
        #expect(pid.status == 1)
        #expect(pid.stderr.hasPrefix("pagewatch: \(run.log) has no process 1 (processes: "))
        let usage = try report(["--format", "pdf", run.log])
        #expect(usage.status == 2)
    }

    /// The text report's pre-copy section follows `--link` and `--downtime`;
    /// its round 1 is sweep 1's pages of data (the model itself:
    /// PreCopyPlanTests).
    @Test func preCopyFollowsLinkAndDowntime() throws {
        let run = try record()
        let sweep1 = try #require(try Harness.readLog(run.log).first { $0["type"] as? String == "sweep" })
        let imagePages = (sweep1["ranges"] as? [[String]] ?? []).reduce(0) { total, range in
            let ends = range.map { UInt64($0.dropFirst(2), radix: 16)! }
            return total + Int((ends[1] - ends[0]) / 4096)
        }
        #expect(imagePages == 8)
        let text = try report(["--link", "100MB/s", "--downtime", "50ms", run.log])
        #expect(text.status == 0, "\(text.stderr)")
        let rows = Self.rows(text.stdout)
        #expect(rows.contains("link 95.4 MiB/s, downtime target 50.0 ms"), "\(text.stdout)")
        #expect(rows.contains { $0.hasPrefix("round 1 \(imagePages) pages (") && $0.hasSuffix("(the image)") })
        #expect(rows.contains { $0.hasPrefix("converges after") || $0.hasPrefix("does not converge") })
        let link = try report(["--link", "fast", run.log])
        #expect(link.status == 2)
        #expect(link.stderr.hasPrefix("pagewatch: invalid --link 'fast' (expected a positive rate"))
        let downtime = try report(["--downtime", "0", run.log])
        #expect(downtime.status == 2)
        #expect(downtime.stderr.hasPrefix("pagewatch: invalid --downtime '0'"))
    }

    @Test func readsStdinAndWritesWhereTold() throws {
        let run = try record()
        let text = try String(contentsOfFile: run.log, encoding: .utf8)
        let fromStdin = try report(["--format", "folded", "-"], stdin: text)
        let fromFile = try report(["--format", "folded", run.log])
        #expect(fromStdin.status == 0)
        #expect(fromStdin.stdout == fromFile.stdout)
        let out = Harness.temporaryPath("report.txt")
        let toFile = try report(["--output", out, run.log])
        #expect(toFile.status == 0 && toFile.stdout.isEmpty)
        #expect(try String(contentsOfFile: out, encoding: .utf8).contains("fill_two"))
    }

    /// Decodes a PNG (8-bit RGB or RGBA, not interlaced, as Chromium writes
    /// them) with python3's zlib and counts the pixels of one colour.
    static func countPixels(_ png: String, colour: String) throws -> (width: Int, height: Int, matching: Int) {
        let script = """
            import struct, sys, zlib
            data = open(sys.argv[1], 'rb').read()
            assert data[:8] == b'\\x89PNG\\r\\n\\x1a\\n', 'not a PNG'
            pos, idat = 8, b''
            while pos < len(data):
                size, kind = struct.unpack('>I4s', data[pos:pos + 8])
                body = data[pos + 8:pos + 8 + size]
                pos += 12 + size
                if kind == b'IHDR':
                    width, height, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', body)
                elif kind == b'IDAT':
                    idat += body
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
            raw, stride, target = zlib.decompress(idat), width * bpp, bytes.fromhex(sys.argv[2])
            prev, at, count = bytearray(stride), 0, 0
            for y in range(height):
                kind, row = raw[at], bytearray(raw[at + 1:at + 1 + stride])
                at += 1 + stride
                if kind:
                    for x in range(stride):
                        a = row[x - bpp] if x >= bpp else 0
                        b = prev[x]
                        c = prev[x - bpp] if x >= bpp else 0
                        if kind == 1: row[x] = (row[x] + a) & 255
                        elif kind == 2: row[x] = (row[x] + b) & 255
                        elif kind == 3: row[x] = (row[x] + (a + b) // 2) & 255
                        else:
                            p = a + b - c
                            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                            row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
                count += sum(1 for x in range(0, stride, bpp) if row[x:x + 3] == target)
                prev = row
            print(width, height, count)
            """
        let result = try Harness.run(["/usr/bin/python3", "-c", script, png, colour], timeout: 120)
        let numbers = result.stdout.split(separator: " ").compactMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard result.status == 0, numbers.count == 3 else {
            throw Harness.HarnessError.badTruth("PNG decoding failed: \(result.stderr)")
        }
        return (numbers[0], numbers[1], numbers[2])
    }
}
