import Foundation
import Testing

/// Attribution end to end: every dirty page of `fx_writers` is attributed to the
/// function, file and line the fixture names, the kernel's writes to
/// `[kernel] read` above its caller, and `--stack-depth` caps the stacks.
@Suite(.serialized) struct WriterAttributionTests {
    static let region = (start: UInt64(0x2700_0000_0000), end: UInt64(0x2700_0000_8000))

    struct ExpectedSite: Hashable {
        var phase: Int, function: String, caller: String, line: Int
    }

    /// The fixture's `site` lines, pages grouped per writer.
    static func expectedSites(_ stdout: String) -> [ExpectedSite: Set<UInt64>] {
        var sites: [ExpectedSite: Set<UInt64>] = [:]
        for line in stdout.split(separator: "\n") where line.hasPrefix("site ") {
            let f = line.split(separator: " ").map(String.init)
            let key = ExpectedSite(phase: Int(f[1])!, function: f[2], caller: f[3], line: Int(f[5])!)
            sites[key, default: []].insert(UInt64(f[4])!)
        }
        return sites
    }

    static func frames(_ site: [String: Any]) -> [[String: Any]] { site["frames"] as? [[String: Any]] ?? [] }

    /// Whether a log site is the fixture's expected writer.
    static func matches(_ site: [String: Any], _ e: ExpectedSite) -> Bool {
        let f = frames(site)
        func function(_ i: Int) -> String? { i < f.count ? f[i]["function"] as? String : nil }
        func inFixture(_ i: Int, line: Int) -> Bool {
            i < f.count && (f[i]["file"] as? String)?.hasSuffix("fx_writers.c") == true && f[i]["line"] as? Int == line
        }
        switch e.function {
        case "[kernel]read":
            return function(0) == "[kernel] read" && ["read", "__libc_read", "__read"].contains(function(1) ?? "")
                && function(2) == e.caller && inFixture(2, line: e.line)
        case "libc":
            return (f.first?["module"] as? String)?.hasSuffix("libc.so.6") == true
                && function(1) == e.caller && inFixture(1, line: e.line)
        default:
            return function(0) == e.function && inFixture(0, line: e.line)
                && (e.caller == "-" || function(1) == e.caller)
        }
    }

    func run(_ extra: [String]) throws -> (untracked: Harness.Result, sweeps: [[String: Any]]) {
        let program = Harness.fixture("fx_writers")
        let untracked = try Harness.run([program])
        let log = Harness.temporaryPath("writers.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--track", "0x270000000000-0x270000008000",
                "--sweep-signal", "USR2", "--interval", "0", "--output", log,
            ] + extra + ["--", program])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status)
        #expect(tracked.status == 0)
        return (untracked, try Harness.readLog(log).filter { $0["type"] as? String == "sweep" })
    }

    @Test func everyPageHasItsWriterWithFileAndLine() throws {
        let (untracked, sweeps) = try run([])
        let expected = Self.expectedSites(untracked.stdout)
        #expect(expected.count == 5)
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        for phase in [2, 3] {
            let sites = sweeps[phase - 1]["sites"] as? [[String: Any]] ?? []
            // The sites' pages are the sweep's, each page once.
            var covered: [UInt64] = []
            for s in sites { covered += FixtureTruth.pages(in: Self.region, of: s) }
            #expect(covered.sorted() == truth[phase - 1].pages.sorted(), "phase \(phase)")
            for (e, pages) in expected where e.phase == phase {
                let found = sites.filter { Self.matches($0, e) }
                #expect(found.count == 1, "phase \(phase): \(e) in \(sites)")
                if let s = found.first {
                    #expect(FixtureTruth.pages(in: Self.region, of: s) == pages, "\(e)")
                    #expect(s["pages"] as? Int == pages.count)
                    // The program's own stores fault once a page; the kernel's do not fault.
                    #expect(s["faults"] as? Int == (e.function == "[kernel]read" ? 0 : pages.count))
                }
            }
        }
        // The recursion: 16 frames by default, all of them descend.
        let deep = try #require((sweeps[2]["sites"] as? [[String: Any]])?.first)
        #expect(Self.frames(deep).count == 16)
        #expect(Self.frames(deep).allSatisfy { $0["function"] as? String == "descend" })
        // Sweep 1: the region was mapped and written after tracking began: main wrote it all.
        let first = sweeps[0]["sites"] as? [[String: Any]] ?? []
        #expect(first.count == 1)
        #expect((Self.frames(first[0]).first?["function"] as? String) == "main")
    }

    @Test func stackDepthCapsTheStacks() throws {
        let (_, sweeps) = try run(["--stack-depth", "4"])
        let deep = try #require((sweeps[2]["sites"] as? [[String: Any]])?.first)
        #expect(Self.frames(deep).count == 4)
        let kernel = (sweeps[1]["sites"] as? [[String: Any]] ?? []).first {
            Self.frames($0).first?["function"] as? String == "[kernel] read"
        }
        #expect(kernel.map { Self.frames($0).count } == 5)  // the pseudo-frame, then 4
    }

    @Test func stackDepthZeroTurnsAttributionOff() throws {
        let (_, sweeps) = try run(["--stack-depth", "0"])
        #expect(sweeps.count == 4)
        #expect(sweeps.allSatisfy { $0["sites"] == nil })
    }
}

/// Past code without unwind information: `fx_fp_asm`'s writer is called from
/// assembly without CFI, and its callers above are found by frame pointer.
@Suite struct FramePointerFallbackTests {
    @Test func callersAboveAssemblyWithoutCFIAreFoundByFramePointer() throws {
        let program = Harness.fixture("fx_fp_asm")
        let untracked = try Harness.run([program])
        let log = Harness.temporaryPath("fp-asm.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--track", "0x2b0000000000-0x2b0000004000", "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == 0)
        let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
        let sites = try #require(sweeps.count == 3 ? sweeps[1]["sites"] as? [[String: Any]] : nil)
        #expect(sites.count == 1)
        let frames = try #require(sites.first?["frames"] as? [[String: Any]])
        let names = frames.prefix(4).map { $0["function"] as? String ?? "?" }
        #expect(names == ["fp_writer", "asm_bridge", "outer_caller", "main"])
        // Only the step from asm_bridge, which has no FDE, followed a frame pointer.
        #expect(frames.prefix(4).map { $0["found_by"] as? String } == [nil, nil, "fp", nil])
        #expect((frames[2]["file"] as? String)?.hasSuffix("fx_fp_asm.c") == true)
    }
}
