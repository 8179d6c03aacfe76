import Foundation
import Testing

/// The writers of programs on real runtimes named in `pagewatch report` as
/// the runtimes' own tools name them, at the default depth: a JS function
/// V8 compiled and a Java method HotSpot compiled (from their perf maps,
/// marked `jit`), and a Rust function under both manglings (no hash).
@Suite(.serialized) struct RuntimeWriterNamesTests {
    /// `pagewatch run` at 100 ms sweeps, every write seen (`--presume never`:
    /// pages left writable would hide the compiled code's stores), then the
    /// text report of the log.
    static func runAndReport(_ name: String, _ command: [String]) throws -> (log: [[String: Any]], report: String) {
        let log = Harness.temporaryPath("names-\(name).jsonl")
        let run = try Harness.run(
            [Harness.pagewatch, "run", "--presume", "never", "--interval", "100ms", "--output", log, "--"]
                + command, timeout: 300)
        #expect(run.status == 0, "\(run.stderr.suffix(2000))")
        let records = try Harness.readLog(log)
        let report = try Harness.run([Harness.pagewatch, "report", "--top", "0", log])
        #expect(report.status == 0, "\(report.stderr)")
        return (records, report.stdout)
    }

    static func sites(_ records: [[String: Any]]) -> [[String: Any]] {
        records.filter { $0["type"] as? String == "sweep" }.flatMap { $0["sites"] as? [[String: Any]] ?? [] }
    }

    static func frames(_ site: [String: Any]) -> [[String: Any]] { site["frames"] as? [[String: Any]] ?? [] }

    /// The function column of the text report's writer rows
    /// (`pages share% faults  function  file:line`).
    static func writerRows(_ report: String) -> [String] {
        report.split(separator: "\n").compactMap { line in
            (try? /^ +\d+ +[0-9.]+% +\d+  (.+?) {2,}\S+$/.wholeMatch(in: line))?.output.1
        }.map(String.init)
    }

    static func removePerfMap(_ records: [[String: Any]]) {
        if let pid = records.first?["pid"] as? Int {
            try? FileManager.default.removeItem(atPath: "/tmp/perf-\(pid).map")
        }
    }

    @Test func nodeNamesItsCompiledFunctionFromItsPerfMap() throws {
        let script = "\(Runtime.sources)/jitwrite.js"
        // From a directory of its own: with the flag V8 also writes its log (isolate-*-v8.log) there.
        let directory = Harness.temporaryPath("node-perf")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let (log, report) = try Self.runAndReport(
            "node", ["/usr/bin/env", "-C", directory, "node", "--perf-basic-prof", script])
        defer { Self.removePerfMap(log) }
        // V8 names code `JS:` + its tier (`*` optimized, `^` baseline, `+` Maglev) + name and position.
        let ownName = "fillPages \(script):5:19"
        let jitWriters = Set(
            Self.sites(log).compactMap { Self.frames($0).first }.filter { $0["jit"] as? Bool == true }
                .compactMap { $0["function"] as? String }.filter { $0.contains("fillPages") })
        #expect(!jitWriters.isEmpty, "no JIT frame names fillPages: \(report.prefix(3000))")
        let tiers = ["JS:*", "JS:^", "JS:+"]
        #expect(jitWriters.isSubset(of: Set(tiers.map { $0 + ownName })), "\(jitWriters)")
        let rows = Set(Self.writerRows(report))
        #expect(!rows.isDisjoint(with: tiers.map { $0 + ownName + " [jit]" }), "\(rows.prefix(20))")
    }

    @Test func theJVMsMethodIsNamedFromTheMapItWritesAtExit() throws {
        let dir = Runtime.directory
        try Runtime.once("jitwrite-java") {
            try Runtime.build(["javac", "-d", "\(dir)/jitwrite", "\(Runtime.sources)/JitWrite.java"])
        }
        let (log, report) = try Self.runAndReport(
            "java",
            [
                "/usr/bin/env", "java", "-XX:+UseSerialGC", "-Xmx64m", "-XX:TieredStopAtLevel=1",
                "-XX:+UnlockDiagnosticVMOptions", "-XX:+DumpPerfMapAtExit", "-cp", "\(dir)/jitwrite", "JitWrite",
                "60",
            ])
        defer { Self.removePerfMap(log) }
        let method = "void JitWrite.fill(long[], long)"
        #expect(Self.writerRows(report).contains(method + " [jit]"), "\(report.prefix(3000))")
        // The map exists only from the exit on: the sweeps before it left the
        // method's frames unnamed, and the report named them from the map.
        let sweeps = log.filter { $0["type"] as? String == "sweep" }
        let inLog = sweeps.flatMap { Self.sites([$0]) }.filter {
            Self.frames($0).first?["function"] as? String == method
        }.reduce(0) { $0 + ($1["pages"] as? Int ?? 0) }
        let folded = try Harness.run([
            Harness.pagewatch, "report", "--format", "folded", Harness.temporaryPath("names-java.jsonl"),
        ])
        let inReport = folded.stdout.split(separator: "\n").filter {
            $0.contains(";\(method) ") || $0.hasPrefix("\(method) ")
        }
        .compactMap { Int($0.split(separator: " ").last ?? "") }.reduce(0, +)
        #expect(inReport > inLog, "pages named: \(inReport) by the report, \(inLog) in the log")
    }

    @Test(arguments: ["legacy", "v0"])
    func rustWritersAreNamedWithoutHash(mangling: String) throws {
        let binary = "\(Runtime.directory)/rswriter-\(mangling)"
        try Runtime.once("rswriter-\(mangling)") {
            // Legacy is stable rustc's default (its std is v0 all the same).
            let v0 = mangling == "v0" ? ["-C", "symbol-mangling-version=v0"] : []
            try Runtime.build([Runtime.rustc, "-O"] + v0 + ["-o", binary, "\(Runtime.sources)/writer.rs"])
        }
        let (log, report) = try Self.runAndReport("rust-\(mangling)", [binary, "10"])
        let rows = Self.writerRows(report)
        // Legacy names have no generic arguments; v0 names show them.
        let generic = mangling == "legacy" ? "writer::fill_every" : "writer::fill_every::<u64>"
        #expect(rows.contains("writer::fill_pages"), "\(rows.prefix(20))")
        #expect(rows.contains(generic), "\(rows.prefix(20))")
        let functions = Set(Self.sites(log).flatMap(Self.frames).compactMap { $0["function"] as? String })
        let raw = functions.filter { $0.hasPrefix("_R") || $0.hasPrefix("_ZN") || $0.contains(/::h[0-9a-f]{16}$/) }
        #expect(raw.isEmpty, "\(raw)")
    }
}
