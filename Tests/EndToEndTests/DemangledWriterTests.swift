import Foundation
import Testing

/// Attribution end to end, beyond C: the writers of a C++ program and of a Swift
/// program are named as their demanglers print them, with file and line; a
/// stripped program's own frames are `module+0xOFFSET` at the same offsets.
@Suite(.serialized) struct DemangledWriterTests {
    /// One store a fixture reported: `site <phase> <writer> <page> <line>`.
    struct Store {
        var phase: Int, writer: String, page: UInt64, line: Int
    }

    static func stores(_ stdout: String) -> [Store] {
        stdout.split(separator: "\n").filter { $0.hasPrefix("site ") }.map { line in
            let f = line.split(separator: " ").map(String.init)
            return Store(phase: Int(f[1])!, writer: f[2], page: UInt64(f[3])!, line: Int(f[4])!)
        }
    }

    static func sites(_ sweep: [String: Any]) -> [[String: Any]] { sweep["sites"] as? [[String: Any]] ?? [] }
    static func frames(_ site: [String: Any]) -> [[String: Any]] { site["frames"] as? [[String: Any]] ?? [] }

    /// The fixture untracked, then under `pagewatch run` tracking only its
    /// region: the same stdout and status, and the log's sweeps.
    static func run(_ program: String, region: (start: UInt64, end: UInt64))
        throws -> (untracked: Harness.Result, sweeps: [[String: Any]])
    {
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("\(URL(fileURLWithPath: program).lastPathComponent)-sites.jsonl")
        let track = "0x\(String(region.start, radix: 16))-0x\(String(region.end, radix: 16))"
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--track", track, "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status)
        return (untracked, try Harness.readLog(log).filter { $0["type"] as? String == "sweep" })
    }

    /// Every store the fixture reported is in the sweep of its phase, in sites
    /// whose innermost frame is `names[writer]` at the store's line of a file
    /// ending in `file`; those sites hold exactly that writer's pages of the
    /// phase, one fault each; and all sites together are the phase's truth.
    static func checkWriters(
        fixture: String, region: (start: UInt64, end: UInt64), file: String,
        names: [String: String]
    ) throws {
        let (untracked, sweeps) = try run(Harness.fixture(fixture), region: region)
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        let stores = stores(untracked.stdout)
        #expect(Set(stores.map(\.writer)) == Set(names.keys), "every writer stores, and only those")
        #expect(sweeps.count == truth.count)

        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            let phase = k + 1
            var covered: [UInt64] = []
            for s in sites(sweep) { covered += FixtureTruth.pages(in: region, of: s) }
            #expect(
                covered.sorted() == truth[k].pages.sorted(),
                "phase \(phase): the sites are the sweep's pages, each once")

            let byWriter = Dictionary(grouping: stores.filter { $0.phase == phase }, by: \.writer)
            for (writer, writes) in byWriter {
                let name = try #require(names[writer])
                let lines = Set(writes.map(\.line))
                #expect(lines.count == 1, "\(writer) stores from one line")
                let mine = sites(sweep).filter { s in
                    let top = frames(s).first
                    return top?["function"] as? String == name && (top?["file"] as? String)?.hasSuffix(file) == true
                        && top?["line"] as? Int == lines.first
                }
                var pages = Set<UInt64>()
                for s in mine { pages.formUnion(FixtureTruth.pages(in: region, of: s)) }
                #expect(pages == Set(writes.map(\.page)), "phase \(phase): \(name) in \(sites(sweep))")
                #expect(mine.reduce(0) { $0 + ($1["faults"] as? Int ?? 0) } == writes.count, "phase \(phase): \(name)")
                // Its caller is the program's top level, in the same file.
                for s in mine {
                    let caller = frames(s).dropFirst().first
                    #expect(
                        (caller?["file"] as? String)?.hasSuffix(file) == true,
                        "\(name)'s caller: \(String(describing: caller))")
                }
            }
        }
        // No name of the program's own frames is left mangled.
        for sweep in sweeps {
            for s in sites(sweep) {
                for f in frames(s) where (f["module"] as? String)?.hasSuffix("/\(fixture)") == true {
                    let function = f["function"] as? String ?? ""
                    #expect(!function.hasPrefix("_Z") && !function.hasPrefix("$s"), "mangled: \(function)")
                }
            }
        }
    }

    @Test func cxxWritersAreDemangled() throws {
        try Self.checkWriters(
            fixture: "fx_cxx_writer", region: (0x2a00_0000_0000, 0x2a00_0000_8000), file: "fixtures/fx_cxx_writer.cpp",
            // What __cxa_demangle prints: a template instance's name carries its return type.
            names: [
                "fill": "pw::Writer::fill(int)",
                "stamp5": "int pw::stamp<5>(unsigned char*)",
                "stamp7": "int pw::stamp<7>(unsigned char*)",
            ])
    }

    @Test func swiftWritersAreDemangled() throws {
        try Self.checkWriters(
            fixture: "fx_swift_writer", region: (0x2b00_0000_0000, 0x2b00_0000_8000),
            file: "fixtures/fx_swift_writer/main.swift",
            // What swift_demangle prints with no flags: module-qualified, argument labels and types, result type.
            names: [
                "fill": "fx_swift_writer.SwiftWriter.fill(page: Swift.Int) -> Swift.Int",
                "stamp": "fx_swift_writer.PageStamper.stamp(Swift.Int) -> Swift.Int",
            ])
    }

    /// A copy of fx_writers without symbols or DWARF: its own frames keep
    /// `module` and `offset` (the same offsets as in the original, so
    /// `module+0xOFFSET` finds the code), and lose `function`, `file` and
    /// `line`; libc's frames keep their names. The sweeps are unchanged.
    @Test func strippedProgramFramesAreModulePlusOffset() throws {
        let original = Harness.fixture("fx_writers")
        let copy = Harness.temporaryPath("stripped-fx_writers")
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: original, toPath: copy)
        let strip = try Harness.run(["/usr/bin/strip", copy])
        #expect(strip.status == 0, "strip: \(strip.stderr)")

        let region = (start: UInt64(0x2700_0000_0000), end: UInt64(0x2700_0000_8000))
        let named = try Self.run(original, region: region)
        let stripped = try Self.run(copy, region: region)
        #expect(stripped.untracked.stdout == named.untracked.stdout)
        let truth = try FixtureTruth(stdout: stripped.untracked.stdout).expectedSweeps
        try #require(stripped.sweeps.count == truth.count && named.sweeps.count == truth.count)

        var programFrames = 0
        for k in truth.indices {
            // The same writers, keyed by their pages.
            func byPages(_ sweep: [String: Any]) -> [[UInt64]: [[String: Any]]] {
                var out: [[UInt64]: [[String: Any]]] = [:]
                for s in Self.sites(sweep) { out[FixtureTruth.pages(in: region, of: s).sorted()] = Self.frames(s) }
                return out
            }
            let before = byPages(named.sweeps[k]), after = byPages(stripped.sweeps[k])
            #expect(Set(after.keys.flatMap { $0 }) == truth[k].pages, "sweep \(k + 1): the right pages")
            #expect(Set(after.keys) == Set(before.keys), "sweep \(k + 1): the same writers")
            for (pages, framesAfter) in after {
                guard let framesBefore = before[pages] else { continue }
                #expect(framesAfter.count == framesBefore.count, "pages \(pages)")
                for (a, b) in zip(framesAfter, framesBefore) {
                    if (b["module"] as? String) == original {
                        programFrames += 1
                        #expect(b["function"] != nil)  // named before stripping
                        #expect(a["module"] as? String == copy)
                        #expect(a["offset"] as? String == b["offset"] as? String, "pages \(pages): \(a) vs \(b)")
                        #expect(a["function"] == nil && a["file"] == nil && a["line"] == nil, "pages \(pages): \(a)")
                    } else {
                        #expect(a["function"] as? String == b["function"] as? String)
                    }
                }
            }
        }
        // fill_two, poke_five, main (three times), descend (16): the program's own frames were checked.
        #expect(programFrames >= 20)
    }
}
