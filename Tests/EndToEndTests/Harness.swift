import Foundation
import Testing

/// Runs built binaries the way a user would and reads what they print.
enum Harness {
    /// SwiftPM puts the products (pagewatch, the fixtures) beside the test binary.
    static let products: URL = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent()
    }()

    static var pagewatch: String { products.appendingPathComponent("pagewatch").path }

    /// A fixture's binary. Only fixtures of fixtures/fixtures.txt (the list
    /// Package.swift builds) are run, so a test cannot use an unlisted one.
    static func fixture(_ name: String) -> String {
        precondition(fixtureList.contains { $0.name == name }, "\(name) is not in fixtures/fixtures.txt")
        return products.appendingPathComponent(name).path
    }

    /// The source tree's fixtures/ folder, found from this file.
    static let fixturesFolder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fixtures")

    /// fixtures/fixtures.txt: each fixture's name and language (c, cxx, swift).
    static let fixtureList: [(name: String, language: String)] = {
        let path = fixturesFolder.appendingPathComponent("fixtures.txt").path
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard let name = words.first, !name.hasPrefix("#") else { return nil }
            let language = words.first { $0.hasPrefix("lang=") }.map { String($0.dropFirst(5)) } ?? "c"
            return (String(name), language)
        }
    }()

    struct Result: Equatable {
        var stdout: String
        var stderr: String
        /// The shell's view: the exit code, or 128 + the signal.
        var status: Int32
    }

    /// `environment`: variables set besides this process's own.
    static func run(
        _ argv: [String], stdin: String? = nil, timeout: TimeInterval = 120, environment extra: [String: String] = [:]
    ) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        // SwiftPM links the C fixtures with the Swift runtime, whose crash
        // handler spawns a backtracer that wants to ptrace the crashed
        // program: impossible under any tracer. Off in both runs alike.
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        environment.merge(extra) { $1 }
        p.environment = environment
        // Output goes to files: no pipe can fill up and block the child.
        let outPath = temporaryPath("out-\(UUID().uuidString)"), errPath = temporaryPath("err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: outPath); try? FileManager.default.removeItem(atPath: errPath)
        }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        let input = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input
        // Children inherit the signal mask of the spawning thread, and test
        // threads block signals: run the program as from a shell, with none blocked.
        var none = sigset_t(), saved = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try p.run()
        try out.close(); try err.close()
        if let stdin { input.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
        try input.fileHandleForWriting.close()
        if !finish(p, timeout: timeout) { Issue.record("\(argv) timed out") }
        let outData = FileManager.default.contents(atPath: outPath) ?? Data()
        let errData = FileManager.default.contents(atPath: errPath) ?? Data()
        // -1: still there after SIGKILL (a test that gets it fails anyway).
        let status =
            p.isRunning ? -1 : p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        return Result(
            stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self),
            status: status)
    }

    /// Waits for `p` to end; whether it did within `timeout` seconds. One
    /// that did not gets SIGTERM (PageWatch detaches), then, 10 seconds
    /// later, SIGKILL with all its descendants: a hung run fails its test,
    /// never the whole suite. (Foundation sees a child end only once every
    /// process that inherited its watch descriptor has: PageWatch's tracer
    /// child and guardian too.)
    @discardableResult
    static func finish(_ p: Process, timeout: TimeInterval) -> Bool {
        func wait(_ seconds: TimeInterval) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while p.isRunning && Date() < deadline { usleep(1000) }
            return !p.isRunning
        }
        if wait(timeout) {
            p.waitUntilExit()
            return true
        }
        p.terminate()
        if !wait(10) {
            for pid in [p.processIdentifier] + descendants(of: p.processIdentifier) { kill(pid, SIGKILL) }
            if !wait(10) { return false }  // not waited for: the run goes on without it
        }
        p.waitUntilExit()
        return false
    }

    /// Every process below `pid`, from /proc/PID/task/TID/children.
    static func descendants(of pid: Int32) -> [Int32] {
        var found: [Int32] = []
        var queue = [pid]
        while let next = queue.popLast() {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(next)/task")) ?? []
            for tid in tasks {
                guard let text = try? String(contentsOfFile: "/proc/\(next)/task/\(tid)/children", encoding: .utf8)
                else { continue }
                let children = text.split(separator: " ").compactMap { Int32($0) }
                found += children
                queue += children
            }
        }
        return found
    }

    /// `stderr` without PageWatch's warning that its own work starves the
    /// program (a busy fixture at a short interval may get it, by design):
    /// what is left must be the program's own.
    static func withoutStarvationWarning(_ stderr: String) -> String {
        stderr.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !($0.hasPrefix("pagewatch: warning: pid ") && $0.contains("PageWatch's work took")) }
            .joined(separator: "\n")
    }

    /// Whether the machine has swap on (`/proc/swaps` lists more than its header).
    static var swapIsActive: Bool {
        ((try? String(contentsOfFile: "/proc/swaps", encoding: .utf8)) ?? "").split(separator: "\n").count > 1
    }

    static func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pagewatch-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    /// The JSON Lines log, one dictionary per line.
    static func readLog(_ path: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let obj = try JSONSerialization.jsonObject(with: Data(line.utf8))
            guard let dict = obj as? [String: Any] else { throw HarnessError.notAnObject(String(line)) }
            return dict
        }
    }

    enum HarnessError: Error { case notAnObject(String), badTruth(String) }
}

/// What a fixture says about itself (fixtures/README.md): its region and the
/// pages (relative to the region) it wrote in each phase. A fixture that
/// execs prints a second `region` line: each image is a segment, and the
/// phases of all segments follow each other, one sweep each.
struct FixtureTruth {
    struct Segment {
        var region: (start: UInt64, end: UInt64)
        var phases: [Int: Set<UInt64>]
        /// `phase K zero <list>` and `phase K file <list>` (fx_zero): the
        /// pages of phase K a `pagewatch/2` sweep reports in `zero_ranges`
        /// and `file_ranges`.
        var zero: [Int: Set<UInt64>] = [:]
        var file: [Int: Set<UInt64>] = [:]
        /// `phase K swapped <list>`: pages of phase K the fixture saw in swap.
        var swapped: [Int: Set<UInt64>] = [:]
    }
    var segments: [Segment] = []

    /// `prefix`: read the lines of a forked child that prints its own truth
    /// ("child phase K pages ..."), under the one region line.
    init(stdout: String, prefix: String = "") throws {
        for line in stdout.split(separator: "\n") {
            var f = line.split(separator: " ", omittingEmptySubsequences: false)
            if !prefix.isEmpty, f.first != "region" {
                guard line.hasPrefix(prefix) else { continue }
                f = line.dropFirst(prefix.count).split(separator: " ", omittingEmptySubsequences: false)
            }
            if f.first == "region", f.count == 3 {
                segments.append(
                    Segment(
                        region: (UInt64(f[1].dropFirst(2), radix: 16)!, UInt64(f[2].dropFirst(2), radix: 16)!),
                        phases: [:]))
            } else if f.first == "phase", f.count >= 3, let k = Int(f[1]), !segments.isEmpty,
                ["pages", "zero", "file", "swapped"].contains(f[2])
            {
                var pages = Set<UInt64>()
                if f.count == 4 && !f[3].isEmpty {
                    for item in f[3].split(separator: ",") {
                        let bounds = item.split(separator: "-").map { UInt64($0)! }
                        pages.formUnion(bounds[0]...(bounds.count == 2 ? bounds[1] : bounds[0]))
                    }
                }
                switch f[2] {
                case "zero": segments[segments.count - 1].zero[k] = pages
                case "file": segments[segments.count - 1].file[k] = pages
                case "swapped": segments[segments.count - 1].swapped[k] = pages
                default: segments[segments.count - 1].phases[k] = pages
                }
            }
        }
        guard !segments.isEmpty else { throw Harness.HarnessError.badTruth(stdout) }
    }

    /// Sweep by sweep: the segment's region and the pages expected in it.
    var expectedSweeps: [(region: (start: UInt64, end: UInt64), pages: Set<UInt64>)] {
        segments.flatMap { seg in
            (1...(seg.phases.keys.max() ?? 0)).map { (seg.region, seg.phases[$0] ?? []) }
        }
    }

    /// Sweep by sweep, as `expectedSweeps`: the pages the fixture says read
    /// as zeros and hold their file's contents, when it says so (fx_zero).
    var expectedUnseen: [(zero: Set<UInt64>, file: Set<UInt64>)?] {
        segments.flatMap { seg in
            (1...(seg.phases.keys.max() ?? 0)).map { k in
                seg.zero[k].map { ($0, seg.file[k] ?? []) }
            }
        }
    }

    /// The pages of one sweep inside `region`, relative to it: every page
    /// whose contents it says may have changed (`ranges`, and in
    /// `pagewatch/2` `zero_ranges` and `file_ranges`). For a site (or any
    /// object with `ranges` alone), its `ranges`.
    static func pages(in region: (start: UInt64, end: UInt64), of sweep: [String: Any]) -> Set<UInt64> {
        pages(in: region, of: sweep, fields: ["ranges", "zero_ranges", "file_ranges"])
    }

    /// The pages of the sweep's `fields` inside `region`, relative to it.
    static func pages(in region: (start: UInt64, end: UInt64), of sweep: [String: Any], fields: [String])
        -> Set<UInt64>
    {
        var pages = Set<UInt64>()
        for pair in fields.flatMap({ sweep[$0] as? [[String]] ?? [] }) {
            let a = UInt64(pair[0].dropFirst(2), radix: 16)!, b = UInt64(pair[1].dropFirst(2), radix: 16)!
            var p = max(a, region.start)
            while p < min(b, region.end) { pages.insert((p - region.start) / 4096); p += 4096 }
        }
        return pages
    }
}
