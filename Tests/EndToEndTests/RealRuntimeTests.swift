import Foundation
import Testing

/// A program on one of the runtimes people run, built from its source in
/// fixtures/runtimes/ at the first test that needs it. `fixed` does a fixed
/// amount of work; `timed(seconds)` the same kind of work for that long, for
/// attaching; both print the same line.
struct Runtime: Sendable, CustomTestStringConvertible {
    let name: String
    let command: @Sendable (String) throws -> [String]
    let fixed: [String]
    var testDescription: String { name }

    func timed(_ seconds: Int) -> [String] { ["-t", String(seconds)] }

    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures/runtimes").path

    /// Runs a build step; a failure names the step and what it printed.
    static func build(_ argv: [String], environment: [String: String] = [:]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = environment.map { "\($0.key)=\($0.value)" } + argv
        // To a file: a daemon a build step leaves behind cannot hold it open.
        let outPath = Harness.temporaryPath("build-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: outPath) }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        p.standardError = out
        p.standardOutput = out
        try p.run()
        try out.close()
        let finished = Harness.finish(p, timeout: 900)
        let text = String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self)
        if !finished || p.terminationStatus != 0 {
            throw BuildError.failed(argv.joined(separator: " "), finished ? text : "timed out\n" + text)
        }
    }

    enum BuildError: Error { case failed(String, String) }

    /// Each runtime's program, built once into the test run's directory.
    static let all: [Runtime] = [
        Runtime(
            name: "java",
            command: { dir in
                try once("java") { try build(["javac", "-d", dir, "\(sources)/HashChurn.java"]) }
                return ["/usr/bin/env", "java", "-XX:+UseSerialGC", "-Xmx256m", "-cp", dir, "HashChurn"]
            }, fixed: ["6"]),
        Runtime(
            name: "go",
            command: { dir in
                try once("go") {
                    try build(
                        ["go", "build", "-o", "\(dir)/gochurn", "\(sources)/churn.go"],
                        environment: ["GOCACHE": "\(dir)/gocache", "GO111MODULE": "off", "GOFLAGS": ""])
                }
                return ["\(dir)/gochurn"]
                // 40 rounds: long enough for interval sweeps to arm what it
                // rewrites (at depth 0 its fresh heap waits for a sweep).
            }, fixed: ["40"]),
        Runtime(name: "node", command: { _ in ["/usr/bin/env", "node", "\(sources)/wasmtrap.js"] }, fixed: ["20"]),
        Runtime(
            name: "rust",
            command: { dir in
                try once("rust") { try build([rustc, "-O", "-o", "\(dir)/rschurn", "\(sources)/churn.rs"]) }
                return ["\(dir)/rschurn"]
            }, fixed: ["10"]),
    ]

    /// rustc from the PATH (Debian's package), else rustup's.
    static var rustc: String {
        let rustup = NSString(string: "~/.cargo/bin/rustc").expandingTildeInPath
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/rustc" }
        return path.first { FileManager.default.isExecutableFile(atPath: $0) } ?? rustup
    }

    nonisolated(unsafe) static var built: Set<String> = []
    static let lock = NSLock()
    static func once(_ name: String, _ body: () throws -> Void) throws {
        lock.lock()
        defer { lock.unlock() }
        guard !built.contains(name) else { return }
        try body()
        built.insert(name)
    }

    static let directory: String = {
        let dir = Harness.temporaryPath("runtimes")
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }()
}

/// The JVM (its own SIGSEGVs for null checks and safepoints), node (a
/// WebAssembly trap is a SIGSEGV V8 handles), Go (signal stacks on every
/// thread, SIGURG preemption) and Rust (eight threads) under `pagewatch run`
/// at depth 0 and at the default depth, and attached and detached three
/// times: the same output and status as untracked, pages really tracked, and
/// under `--verify-contents` no page changed with no write seen.
@Suite(.serialized) struct RealRuntimeTests {
    @Test(arguments: Runtime.all, [0, nil] as [Int?])
    func sameOutputUnderRun(_ runtime: Runtime, depth: Int?) throws {
        let command = try runtime.command(Runtime.directory) + runtime.fixed
        let untracked = try Harness.run(command)
        #expect(untracked.status == 0, "untracked: \(untracked.stderr.suffix(2000))")
        let log = Harness.temporaryPath("runtime-\(runtime.name).jsonl")
        let depthFlag = depth.map { ["--stack-depth", String($0)] } ?? []
        let tracked = try Harness.run(
            [Harness.pagewatch, "run", "--verify-contents", "--interval", "100ms", "--output", log] + depthFlag
                + ["--"] + command, timeout: 600)
        #expect(tracked.stdout == untracked.stdout)
        #expect(
            tracked.status == untracked.status,
            "pagewatch's stderr: \(tracked.stderr.prefix(2000)) … \(tracked.stderr.suffix(1000))")
        let records = try Harness.readLog(log)
        let end = records.last { $0["type"] as? String == "end" }
        #expect(end?["exit_status"] as? Int == 0)
        #expect(!records.contains { $0["type"] as? String == "missed" })
        // Tracked for real: write faults taken (on the ptrace path; at
        // depth 0 `auto` may track anonymous memory by userfaultfd, whose
        // faults stop nothing and are not counted), and pages reported.
        let backends = records.first?["backends"] as? [String: String]
        if backends?["anonymous"] != "uffd" { #expect((end?["faults"] as? Int ?? 0) > 100) }
        let dirty = records.filter { $0["type"] as? String == "sweep" }.map { $0["dirty_pages"] as? Int ?? 0 }.reduce(
            0, +)
        #expect(dirty > 100)
        // Each runtime maps far more than it writes: some of it reads as zeros.
        let zero = records.filter { $0["type"] as? String == "sweep" }.map { $0["zero_pages"] as? Int ?? 0 }.reduce(
            0, +)
        #expect(zero > 0)
        // Rust's writers are named as its own tools name them: legacy
        // names without their `::h<hash>` (rustc-demangle's display).
        if runtime.name == "rust" && depth != 0 {
            let functions = records.filter { $0["type"] as? String == "sweep" }
                .flatMap { $0["sites"] as? [[String: Any]] ?? [] }
                .flatMap { $0["frames"] as? [[String: Any]] ?? [] }.compactMap { $0["function"] as? String }
            #expect(functions.contains { $0.contains("::") }, "no Rust path among \(Set(functions))")
            let hashed = functions.filter { $0.contains(/::h[0-9a-f]{16}$/) }
            #expect(hashed.isEmpty, "\(Set(hashed))")
        }
    }

    /// Go ends with exit_group from any thread: by the exit sweep the main
    /// thread may have left the address space, and maps and pagemap must be
    /// read through another. Its only sweep then still tells zero pages apart.
    @Test func goExitSweepSortsUnseenPages() throws {
        let go = try #require(Runtime.all.first { $0.name == "go" })
        let command = try go.command(Runtime.directory) + go.fixed
        let log = Harness.temporaryPath("runtime-go-exit.jsonl")
        let tracked = try Harness.run(
            [Harness.pagewatch, "run", "--interval", "0", "--output", log, "--"] + command, timeout: 300)
        #expect(tracked.status == 0, "\(tracked.stderr.suffix(2000))")
        let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.count == 1 && sweeps.first?["reason"] as? String == "exit")
        let sweep = try #require(sweeps.first)
        let data = sweep["dirty_pages"] as? Int ?? 0
        let zero = sweep["zero_pages"] as? Int ?? 0
        // Go reserves its heap arenas and stacks whole and writes a little of them.
        #expect(zero > data, "exit sweep: \(data) pages in ranges, \(zero) in zero_ranges")
    }

    @Test(arguments: Runtime.all)
    func attachedAndDetachedThreeTimes(_ runtime: Runtime) throws {
        let command = try runtime.command(Runtime.directory)
        let untracked = try Harness.run(command + runtime.fixed)
        #expect(untracked.status == 0)
        // Long enough for three attach cycles on a loaded machine: at 8 s,
        // node ended before the third detach under CI's load.
        let program = try Background(command + runtime.timed(20))
        usleep(800_000)  // past the runtime's start
        for (k, depth) in ["0", "16", "0"].enumerated() {
            let log = Harness.temporaryPath("runtime-attach-\(runtime.name)-\(k).jsonl")
            let attached = try Harness.run(
                [
                    Harness.pagewatch, "attach", "--verify-contents", "--duration", "1s", "--interval", "200ms",
                    "--stack-depth", depth, "--output", log, String(program.pid),
                ], timeout: 120)
            #expect(attached.status == 0, "attach \(k + 1): \(attached.stderr.suffix(2000))")
            let records = try Harness.readLog(log)
            #expect(records.first?["type"] as? String == "start")
            #expect(records.last?["type"] as? String == "detach", "attach \(k + 1)")
            #expect(!records.contains { $0["type"] as? String == "missed" }, "attach \(k + 1)")
            let sweeps = records.filter { $0["type"] as? String == "sweep" }
            #expect(sweeps.count >= 2, "attach \(k + 1)")
            #expect(sweeps.map { $0["dirty_pages"] as? Int ?? 0 }.reduce(0, +) > 0, "attach \(k + 1)")
            usleep(300_000)
        }
        #expect(program.finish(timeout: 120) == 0, "\(program.stderr.suffix(2000))")
        #expect(program.stdout == untracked.stdout)
    }
}
