import Foundation
import Testing

/// `--dump DIR` and `pagewatch image`: `fx_dump` writes a copy of its region
/// at the end of each phase; the memory image rebuilt at each sweep must
/// equal it byte for byte, with threads, the kernel (`read()`),
/// `MADV_DONTNEED` and `munmap` among the changes, and `--verify-contents`
/// watching the run.
@Suite(.serialized) struct DumpTests {
    static let region = (start: UInt64(0x2a00_0000_0000), end: UInt64(0x2a00_0002_0000))

    struct Dumped {
        var image: String
        var copies: String
        var log: String
        var stdout: String
    }

    /// fx_dump untracked and under `pagewatch run --dump`: the same output,
    /// status and copies.
    func dump(_ extra: [String] = []) throws -> Dumped {
        let base = Harness.temporaryPath("dump-\(UUID().uuidString)")
        let untracked = base + "/untracked", copies = base + "/copies", image = base + "/image"
        for dir in [untracked, copies] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        let plain = try Harness.run([Harness.fixture("fx_dump"), untracked])
        #expect(plain.status == 0, "\(plain.stderr)")
        let log = base + "/log.jsonl"
        let run = try Harness.run(
            [
                Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0", "--verify-contents", "-o", log,
                "--dump", image,
            ] + extra + [Harness.fixture("fx_dump"), copies])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout == plain.stdout.replacingOccurrences(of: untracked, with: copies))
        #expect(run.stderr == "", "\(run.stderr)")
        for phase in 1...5 {
            #expect(
                FileManager.default.contents(atPath: "\(copies)/phase-\(phase).bin")
                    == FileManager.default.contents(atPath: "\(untracked)/phase-\(phase).bin"), "phase \(phase)")
        }
        return Dumped(image: image, copies: copies, log: log, stdout: run.stdout)
    }

    func image(_ arguments: [String]) throws -> Harness.Result {
        try Harness.run([Harness.pagewatch, "image"] + arguments)
    }

    /// On either backend: the userfaultfd one's sweeps copy the same pages.
    @Test(arguments: [[], ["--backend", "uffd", "--stack-depth", "0"]])
    func eachSweepRebuildsThePhaseByteForByte(_ backend: [String]) throws {
        let d = try dump(backend)
        // The log reports exactly the fixture's pages, phase by phase.
        let truth = try FixtureTruth(stdout: d.stdout)
        let sweeps = try Harness.readLog(d.log).filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.count == 5)
        for (sweep, expected) in zip(sweeps, truth.expectedSweeps) {
            #expect(FixtureTruth.pages(in: Self.region, of: sweep) == expected.pages, "sweep \(sweep["seq"] ?? "?")")
        }
        for phase in 1...5 {
            let copy = try #require(FileManager.default.contents(atPath: "\(d.copies)/phase-\(phase).bin"))
            let end = Self.region.start + UInt64(copy.count)
            let range = "0x" + String(Self.region.start, radix: 16) + "-0x" + String(end, radix: 16)
            let read = try Harness.run([
                Harness.pagewatch, "image", "read", d.image, "--at", "\(phase)", range, "-o", d.image + "/read.bin",
            ])
            #expect(read.status == 0, "\(read.stderr)")
            #expect(FileManager.default.contents(atPath: d.image + "/read.bin") == copy, "image read at \(phase)")

            // The whole memory at that sweep: the region's runs in it equal the copy too.
            let built = d.image + "/built-\(phase).bin"
            let build = try image(["build", d.image, "--at", "\(phase)", "-o", built])
            #expect(build.status == 0, "\(build.stderr)")
            #expect(try regionBytes(fromBuilt: built, length: copy.count) == copy, "image build at \(phase)")
        }
        // Phase 5 unmapped pages 28-31: sweep 5 does not hold them.
        let gone = try image(["read", d.image, "--at", "5", "0x2a000001b000-0x2a000001d000"])
        #expect(gone.status == 1)
        #expect(gone.stderr.hasPrefix("pagewatch: the image does not hold page 0x2a000001c000 of pid "))
        let verify = try image(["verify", d.image])
        #expect(verify.status == 0 && verify.stdout.hasSuffix(": sound (1 process(es), 5 sweep(s))\n"), "\(verify)")
    }

    /// The region's bytes from `image build`'s file: its index places each run.
    func regionBytes(fromBuilt file: String, length: Int) throws -> Data {
        let index = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file + ".index.json")))
                as? [String: Any])
        let data = try Data(contentsOf: URL(fileURLWithPath: file))
        var out = Data(count: length)
        var covered = 0
        for run in index["runs"] as? [[String: Any]] ?? [] {
            let bounds = (run["range"] as? [String] ?? []).map { UInt64($0.dropFirst(2), radix: 16)! }
            let offset = try #require(run["offset"] as? Int)
            let start = max(bounds[0], Self.region.start), end = min(bounds[1], Self.region.start + UInt64(length))
            guard start < end else { continue }
            let from = offset + Int(start - bounds[0])
            out.replaceSubrange(
                Int(start - Self.region.start)..<Int(end - Self.region.start),
                with: data[from..<from + Int(end - start)])
            covered += Int(end - start)
        }
        #expect(covered == length, "the built memory holds \(covered) of the region's \(length) bytes")
        return out
    }

    /// Zero pages are recorded as zero, not copied; unmapped pages as gone.
    @Test func zeroPagesAreNotCopied() throws {
        let d = try dump()
        let pid = try #require(try Harness.readLog(d.log).first?["pid"] as? Int)
        func index(_ seq: Int) throws -> [String: Any] {
            let url = URL(fileURLWithPath: "\(d.image)/\(pid)/sweep-\(seq).json")
            return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        }
        func regionRanges(_ sweep: [String: Any], kind: String) -> [[String]] {
            (sweep["ranges"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == kind }
                .compactMap { $0["range"] as? [String] }
                .filter {
                    UInt64($0[0].dropFirst(2), radix: 16)! >= Self.region.start
                        && UInt64($0[1].dropFirst(2), radix: 16)! <= Self.region.end
                }
        }
        let sweep1Index = try index(1)
        // Sweep 1: pages 0-23 hold data, 24-31 are zero; sweep 4: 2-3 discarded.
        #expect(regionRanges(try index(1), kind: "data") == [["0x2a0000000000", "0x2a0000018000"]])
        #expect(regionRanges(try index(1), kind: "zero") == [["0x2a0000018000", "0x2a0000020000"]])
        #expect(regionRanges(try index(4), kind: "zero") == [["0x2a0000002000", "0x2a0000004000"]])
        let gone = try index(5)["gone"] as? [[String]]
        #expect(gone?.contains(["0x2a000001c000", "0x2a0000020000"]) == true, "\(gone ?? [])")
        // Ranges are named as the log names mappings: the region is
        // anonymous, and the main stack, split by arming, is `[stack]` whole.
        let named = (sweep1Index["ranges"] as? [[String: Any]] ?? []).map {
            ($0["range"] as? [String] ?? [], $0["mapping"] as? String ?? "")
        }
        #expect(named.filter { $0.0.first?.hasPrefix("0x2a00000") == true }.allSatisfy { $0.1 == "[anon]" })
        #expect(named.contains { $0.1 == "[stack]" } && named.contains { $0.1 == "[heap]" })
        let maps = try Harness.readLog(d.log).first?["mappings"] as? [[String: Any]] ?? []
        let stackInLog = maps.filter { $0["name"] as? String == "[stack]" }.compactMap { $0["range"] as? [String] }
        for (range, name) in named where stackInLog.contains(where: { $0[0] <= range[0] && range[1] <= $0[1] }) {
            #expect(name == "[stack]", "\(range)")
        }
        // The pages file holds only data and file pages.
        let sweep1 = sweep1Index
        let stored = (sweep1["ranges"] as? [[String: Any]] ?? []).filter {
            ["data", "file"].contains($0["kind"] as? String)
        }
        .reduce(0) { total, r in
            let b = (r["range"] as? [String] ?? []).map { Int($0.dropFirst(2), radix: 16)! }
            return total + b[1] - b[0]
        }
        #expect(sweep1["pages_bytes"] as? Int == stored)
        let size = try FileManager.default.attributesOfItem(atPath: "\(d.image)/\(pid)/sweep-1.pages")[.size] as? Int
        #expect(size == stored)
    }

    @Test func verifyFindsAChangedByteAndABrokenChain() throws {
        let d = try dump()
        let pid = try #require(try Harness.readLog(d.log).first?["pid"] as? Int)
        let pages = "\(d.image)/\(pid)/sweep-2.pages"
        let handle = try #require(FileHandle(forUpdatingAtPath: pages))
        try handle.seek(toOffset: 100)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data([byte ^ 0xff]))
        try handle.close()
        let changed = try image(["verify", d.image])
        #expect(changed.status == 1)
        #expect(
            changed.stderr.contains("\(pages): 0x") && changed.stderr.contains(" does not match its checksum"),
            "\(changed.stderr)")
        // build and read refuse it, naming the file, and overwrite nothing.
        let output = d.image + "/kept.bin"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: output))
        let build = try image(["build", d.image, "--at", "2", "-o", output])
        #expect(build.status == 1)
        #expect(
            build.stderr.hasPrefix("pagewatch: \(pages): 0x") && build.stderr.contains("does not match its checksum"),
            "\(build.stderr)")
        #expect(FileManager.default.contents(atPath: output) == Data("keep me".utf8))
        #expect(!FileManager.default.fileExists(atPath: output + ".tmp"))
        let read = try image(["read", d.image, "--at", "2", "0x2a0000000000-0x2a0000020000"])
        #expect(read.status == 1 && read.stdout.isEmpty && read.stderr.contains("does not match its checksum"))
        #expect(try image(["build", d.image, "--at", "1", "-o", d.image + "/one.bin"]).status == 0)
        // A pages file cut short.
        let cut = "\(d.image)/\(pid)/sweep-1.pages"
        let size = try #require(try FileManager.default.attributesOfItem(atPath: cut)[.size] as? Int)
        #expect(truncate(cut, off_t(size - 4096)) == 0)
        let short = try image(["build", d.image, "--at", "1", "-o", output])
        #expect(short.status == 1)
        #expect(
            short.stderr.hasPrefix(
                "pagewatch: \(cut) has \(size - 4096) bytes, its index (sweep 1 of pid \(pid)) says \(size)"),
            "\(short.stderr)")
        #expect(FileManager.default.contents(atPath: output) == Data("keep me".utf8))
        try FileManager.default.removeItem(atPath: "\(d.image)/\(pid)/sweep-3.json")
        let broken = try image(["verify", d.image])
        #expect(broken.stderr.contains("sweep 3 is missing (the next is 4)"), "\(broken.stderr)")
    }

    @Test func refusesAnExistingImageAndShowsOne() throws {
        let d = try dump()
        let before = try FileManager.default.contentsOfDirectory(atPath: d.image).sorted()
        let again = try Harness.run([Harness.pagewatch, "run", "--dump", d.image, "/bin/true"])
        #expect(again.status == 1)
        #expect(
            again.stderr
                == "pagewatch: --dump: \(d.image) already holds a memory image (image.json); remove it or name another directory\n"
        )
        #expect(try FileManager.default.contentsOfDirectory(atPath: d.image).sorted() == before)
        let show = try image(["show", d.image])
        #expect(show.status == 0)
        let rows = show.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(rows.contains { $0.hasPrefix("5 exit ") }, "\(show.stdout)")
        let missing = try image(["show", "/nonexistent"])
        #expect(missing.status == 1 && missing.stderr.hasPrefix("pagewatch: cannot read /nonexistent/image.json"))
    }

    /// `attach --dump` on a program nobody here wrote: python, blocked in a
    /// read of stdin after building its data. The memory at the detach
    /// sweep, rebuilt from the image, equals the process's memory read
    /// through /proc/PID/mem after the detach, run by run.
    @Test func attachDumpEqualsTheMemoryAfterTheDetach() throws {
        let program = try Background([
            "/usr/bin/python3", "-c",
            "import sys; d = [bytes([i % 251]) * 4096 for i in range(3000)]; print('ready', flush=True); sys.stdin.read(); print(len(d))",
        ])
        #expect(program.waitFor("ready"))
        let base = Harness.temporaryPath("attach-dump-\(UUID().uuidString)")
        let image = base + "/image", log = base + ".jsonl", built = base + ".bin"
        let attach = try Harness.run([
            Harness.pagewatch, "attach", "--interval", "100ms", "--sweeps", "3", "--verify-contents", "-o", log,
            "--dump", image, "\(program.pid)",
        ])
        #expect(attach.status == 0, "\(attach.stderr)")
        let build = try Harness.run([Harness.pagewatch, "image", "build", image, "--at", "3", "-o", built])
        #expect(build.status == 0, "\(build.stderr)")
        let index = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: built + ".index.json")))
                as? [String: Any])
        let runs = index["runs"] as? [[String: Any]] ?? []
        #expect(runs.count > 10)
        // Pages the kernel writes behind the program's back (its rseq area)
        // are pinned: reported by every sweep. Only they may differ after
        // the detach (the thread's interrupted read restarts, and the
        // kernel refreshes the area on its way back to user space).
        // The attach's start record names the mappings it tracks.
        let start = try #require(try Harness.readLog(log).first { $0["type"] as? String == "start" })
        let names = Set((start["mappings"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String })
        #expect(names.isSuperset(of: ["[heap]", "[stack]", "[anon]"]), "\(names)")
        #expect(names.contains { $0.hasSuffix(".so") || $0.contains(".so.") }, "\(names)")
        let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
        var pinned: Set<UInt64>? = nil
        for sweep in sweeps.dropFirst() {
            let pages = FixtureTruth.pages(in: (0, UInt64.max), of: sweep, fields: ["ranges"])
            pinned = pinned.map { $0.intersection(pages) } ?? pages
        }
        let memory = try #require(FileHandle(forReadingAtPath: "/proc/\(program.pid)/mem"))
        let image_ = try #require(FileHandle(forReadingAtPath: built))
        var compared = 0
        var differing: [UInt64] = []
        for run in runs {
            let bounds = (run["range"] as? [String] ?? []).map { UInt64($0.dropFirst(2), radix: 16)! }
            let length = Int(bounds[1] - bounds[0])
            try memory.seek(toOffset: bounds[0])
            try image_.seek(toOffset: UInt64(run["offset"] as? Int ?? 0))
            let now = try #require(try memory.read(upToCount: length))
            let then = try #require(try image_.read(upToCount: length))
            for page in stride(from: 0, to: length, by: 4096) where now[page..<page + 4096] != then[page..<page + 4096]
            {
                differing.append(bounds[0] + UInt64(page))
            }
            compared += length
        }
        #expect(
            differing.allSatisfy { pinned?.contains($0 / 4096) == true }, "\(differing.map { String($0, radix: 16) })")
        // The program's 3,000 pages of data among them.
        #expect(compared > 3000 * 4096)
        let verify = try Harness.run([Harness.pagewatch, "image", "verify", image])
        #expect(verify.status == 0, "\(verify.stderr)")
        program.send("\n")
        #expect(program.finish() == 0)
        #expect(program.stdout == "ready\n3000\n")
    }

    /// `--follow-forks`: a directory per process, as many sweeps as the log
    /// has for it, and the chain of each sound.
    @Test func followedChildrenHaveImagesOfTheirOwn() throws {
        let base = Harness.temporaryPath("fork-dump-\(UUID().uuidString)")
        let run = try Harness.run([
            Harness.pagewatch, "run", "--follow-forks", "--sweep-signal", "USR2", "--interval", "0", "-o",
            base + ".jsonl", "--dump", base, Harness.fixture("fx_fork"),
        ])
        #expect(run.status == 0, "\(run.stderr)")
        var logged: [Int: Int] = [:]
        for sweep in try Harness.readLog(base + ".jsonl") where sweep["type"] as? String == "sweep" {
            logged[sweep["pid"] as? Int ?? 0, default: 0] += 1
        }
        #expect(logged.count >= 2)
        for (pid, count) in logged {
            let names = try FileManager.default.contentsOfDirectory(atPath: "\(base)/\(pid)")
            #expect(names.filter { $0.hasSuffix(".json") }.count == count, "pid \(pid): \(names.sorted())")
        }
        let verify = try Harness.run([Harness.pagewatch, "image", "verify", base])
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(
            verify.stdout.hasSuffix("sound (\(logged.count) process(es), \(logged.values.reduce(0, +)) sweep(s))\n"))
    }

    /// A directory that cannot be written is refused before the program
    /// starts (a read-only tmpfs in a mount namespace of its own: root only).
    @Test(.enabled(if: getuid() == 0)) func aReadOnlyDirectoryIsRefusedAtOnce() throws {
        let mount = Harness.temporaryPath("ro-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let run = try Harness.run([
            "/usr/bin/unshare", "-m", "/bin/sh", "-c",
            "mount -t tmpfs -o ro,size=64k none \(mount) && exec \(Harness.pagewatch) run --dump \(mount)/image /bin/echo ran",
        ])
        #expect(run.status == 1)
        #expect(run.stdout == "", "the program must not start")
        #expect(
            run.stderr == "pagewatch: --dump: cannot write \(mount)/image: Read-only file system\n", "\(run.stderr)")
    }

    /// A full disk stops the dump with one line and exit status 1; the
    /// program runs on untracked, its output unchanged. (A 64 KiB tmpfs in a
    /// mount namespace of its own: root only.)
    @Test(.enabled(if: getuid() == 0)) func aFullDiskStopsTheDumpWithAnError() throws {
        let mount = Harness.temporaryPath("full-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let run = try Harness.run([
            "/usr/bin/unshare", "-m", "/bin/sh", "-c",
            "mount -t tmpfs -o size=64k none \(mount) && exec \(Harness.pagewatch) run --sweep-signal USR2 --interval 0 --verify-contents -o /dev/null --dump \(mount)/image \(Harness.fixture("fx_dump"))",
        ])
        let plain = try Harness.run([Harness.fixture("fx_dump")])
        #expect(run.status == 1)
        #expect(run.stdout == plain.stdout)
        let lines = run.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(run.stderr)")
        #expect(
            run.stderr.contains("the memory image could not be written (cannot write \(mount)/image/")
                && run.stderr.contains("No space left on device"), "\(run.stderr)")
    }
}
