import Foundation
import Testing

/// Stacks through the unwinder's own module table: `fx_lld_callsites` is
/// linked by lld (`.eh_frame_hdr` in a read-only segment of its own, before
/// the code) and has no frame pointers, so only its `.eh_frame`, found
/// through that segment, gives the chains it prints; every frame is checked:
/// function, file and line, and libc in between where the chain says so.
@Suite(.serialized) struct UnwindTableTests {
    static let region = (start: UInt64(0x3300_0000_0000), end: UInt64(0x3300_0000_8000))
    static let program = Harness.fixture("fx_lld_callsites")

    /// The fixture's chains by page, and its call and store lines by "CALLER>CALLEE".
    static func truth(_ stdout: String) -> (chains: [UInt64: [String]], lines: [String: Int]) {
        var chains: [UInt64: [String]] = [:], lines: [String: Int] = [:]
        for line in stdout.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            if f.count == 3, f[0] == "chain", let page = UInt64(f[1]) {
                chains[page] = f[2].split(separator: ",").map(String.init)
            } else if f.count == 3, f[0] == "site", let n = Int(f[2]) {
                lines[f[1]] = n
            }
        }
        return (chains, lines)
    }

    /// Whether `frames` (innermost first) are `chain` exactly: each of the
    /// fixture's functions on its line in fx_lld_callsites.c (a return
    /// address on its call's), each "libc" one or more frames in libc.
    static func matches(_ frames: [[String: Any]], _ chain: [String], lines: [String: Int]) -> Bool {
        var i = 0
        for (k, name) in chain.enumerated() {
            guard i < frames.count else { return false }
            if name == "libc" {
                guard (frames[i]["module"] as? String)?.contains("/libc.so") == true else { return false }
                while i < frames.count, (frames[i]["module"] as? String)?.contains("/libc.so") == true { i += 1 }
                continue
            }
            let callee = k == 0 ? "store" : chain[k - 1]
            guard frames[i]["function"] as? String == name,
                (frames[i]["file"] as? String)?.hasSuffix("fx_lld_callsites.c") == true,
                let line = lines["\(name)>\(callee)"], frames[i]["line"] as? Int == line
            else { return false }
            i += 1
        }
        return true
    }

    /// The fixture is laid out as lld does it: the first PT_LOAD is not
    /// executable and holds PT_GNU_EH_FRAME (else the test proves less).
    @Test func theFixtureHasLldsLayout() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.program)))
        func u(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }
        let phoff = Int(u(0x20, 8)), phentsize = Int(u(0x36, 2)), phnum = Int(u(0x38, 2))
        var loads: [(flags: UInt64, vaddr: UInt64, size: UInt64)] = [], ehFrameHeader: UInt64?
        for i in 0..<phnum {
            let at = phoff + i * phentsize
            switch u(at, 4) {
            case 1: loads.append((u(at + 4, 4), u(at + 16, 8), u(at + 40, 8)))
            case 0x6474_e550: ehFrameHeader = u(at + 16, 8)
            default: break
            }
        }
        let first = try #require(loads.first)
        let header = try #require(ehFrameHeader)
        #expect(first.flags & 1 == 0, "first PT_LOAD flags \(first.flags)")
        #expect(header >= first.vaddr && header < first.vaddr + first.size)
        #expect(loads.contains { $0.flags & 1 != 0 })
    }

    @Test(arguments: [["--stack-depth", "16"], []])
    func everyChainIsExact(_ depth: [String]) throws {
        let untracked = try Harness.run([Self.program])
        #expect(untracked.status == 0)
        let (chains, lines) = Self.truth(untracked.stdout)
        #expect(chains.count == 4)
        let log = Harness.temporaryPath("lld-callsites.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--track", "0x330000000000-0x330000008000",
                "--sweep-signal", "USR2", "--interval", "0", "--output", log,
            ] + depth
                + ["--", Self.program])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status, "pagewatch's stderr: \(tracked.stderr.suffix(2000))")
        let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        #expect(sweeps.count == truth.count)
        guard sweeps.count == truth.count else { return }
        for (n, expected) in truth.enumerated() {
            #expect(FixtureTruth.pages(in: Self.region, of: sweeps[n]) == expected.pages, "sweep \(n + 1)")
        }
        for (page, chain) in chains.sorted(by: { $0.key < $1.key }) {
            let sweep = page == 4 ? sweeps[2] : sweeps[1]
            let sites = (sweep["sites"] as? [[String: Any]] ?? []).filter {
                FixtureTruth.pages(in: Self.region, of: $0).contains(page)
            }
            #expect(sites.count == 1, "page \(page)")
            guard let site = sites.first else { continue }
            let frames = site["frames"] as? [[String: Any]] ?? []
            let shown = frames.map { ($0["function"] as? String ?? "?") + ":" + String($0["line"] as? Int ?? 0) }
            #expect(Self.matches(frames, chain, lines: lines), "page \(page): \(shown), want \(chain) \(lines)")
            if chain.last == "main" {
                // Beneath main: libc's start code.
                let main = frames.lastIndex { $0["function"] as? String == "main" } ?? frames.count
                #expect(
                    main + 1 < frames.count
                        && (frames[main + 1]["module"] as? String)?.contains("/libc.so") == true, "\(shown)")
            } else {
                #expect(frames.count == 16, "\(shown)")
            }
        }
    }
}

/// A Go program at the default depth: Go's linker writes no `.eh_frame_hdr`,
/// so its frames come from frame pointers (libunwind's fallback when the
/// module table has no table for the IP), and quickly (the unwinder opens no
/// file per fault). Its stacks name the writer and its callers up to the
/// goroutine's root.
@Suite(.serialized) struct GoStackTests {
    static let source = """
        package main

        import "fmt"

        //go:noinline
        func fill(m map[int][]int, round int) int {
        	sum := 0
        	for i := 0; i < 500; i++ {
        		v := make([]int, 512)
        		for j := range v {
        			v[j] = i*j + round
        		}
        		m[(i*7919+round)%5000] = v
        		sum += v[511]
        	}
        	return sum
        }

        func main() {
        	m := map[int][]int{}
        	total := 0
        	for round := 0; round < 20; round++ {
        		total += fill(m, round)
        	}
        	fmt.Println("total", total, "entries", len(m))
        }
        """

    @Test func stacksThroughFramePointers() throws {
        let go = ["/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        let compiler = try #require(go, "Go is installed by scripts/install-deps.sh (golang-go)")
        let directory = Harness.temporaryPath("go-stacks")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.source.write(toFile: directory + "/main.go", atomically: true, encoding: .utf8)
        let program = directory + "/churn"
        let build = try Harness.run(
            [
                "/usr/bin/env", "GOCACHE=\(directory)/cache", "GOPATH=\(directory)/gopath",
                "GO111MODULE=off", compiler, "build", "-o", program, directory + "/main.go",
            ],
            timeout: 300)
        #expect(build.status == 0, "\(build.stderr)")
        guard build.status == 0 else { return }

        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("go-stacks.jsonl")
        let tracked = try Harness.run([Harness.pagewatch, "run", "--output", log, "--", program], timeout: 300)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status, "pagewatch's stderr: \(tracked.stderr.suffix(2000))")
        let stacks = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
            .flatMap { $0["sites"] as? [[String: Any]] ?? [] }
            .map { ($0["frames"] as? [[String: Any]] ?? []).map { $0["function"] as? String ?? "?" } }
        // fill's own stores, and the runtime's work for it (makeslice, map
        // growth), each with fill's callers beneath it, in order.
        let throughFill = stacks.filter { $0.contains("main.fill") }
        #expect(!throughFill.isEmpty, "\(stacks.prefix(10))")
        for frames in throughFill {
            let at = frames.firstIndex(of: "main.fill")!
            let chain = Array(frames[at...].prefix(4))
            #expect(
                chain.prefix(3) == ["main.fill", "main.main", "runtime.main"]
                    && chain.count == 4 && chain[3].hasPrefix("runtime.goexit"), "\(frames)")
        }
        #expect(throughFill.contains { $0.first == "main.fill" })
    }
}
