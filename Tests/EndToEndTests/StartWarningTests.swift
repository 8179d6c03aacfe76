import Foundation
import Testing

/// Said at once rather than found out later: a selection that selects
/// nothing, and a privileged program that runs without its privileges
/// because PageWatch traces it. One warning line each; the program runs
/// as it would have (or, for the privileged one, as the kernel lets it).
@Suite(.serialized) struct StartWarningTests {
    static let exit3 = Harness.fixture("fx_exit3")

    func run(_ options: [String], _ program: [String]) throws -> (result: Harness.Result, start: [String: Any]?) {
        let log = Harness.temporaryPath("warn-\(UUID().uuidString).jsonl")
        let r = try Harness.run(
            [Harness.pagewatch, "run", "--output", log, "--sweep-signal", "USR2"] + options + ["--"] + program)
        return (r, try Harness.readLog(log).first)
    }

    @Test(arguments: [
        ("file:/nonexistent/lib.so", "no such file or directory"),
        ("file:lib/fx.so", "/proc/PID/maps names files by absolute path (file:/...)"),
    ])
    func fileSpecsThatCannotSelectAreOneWarningAtTheStart(_ spec: String, _ why: String) throws {
        let untracked = try Harness.run([Self.exit3])
        let (r, start) = try run(["--track", spec], [Self.exit3])
        #expect(r.status == untracked.status)
        #expect(r.stdout == untracked.stdout)
        #expect(r.stderr == "pagewatch: warning: --track \(spec) selects nothing: \(why)\n")
        #expect(start?["selected_pages"] as? Int == 0)
    }

    @Test func aRangeWithNothingEverMappedIsOneWarningAtTheEnd() throws {
        let untracked = try Harness.run([Self.exit3])
        let (r, start) = try run(["--track", "0x7e0000000000-0x7e0000001000"], [Self.exit3])
        #expect(r.status == untracked.status)
        #expect(r.stdout == untracked.stdout)
        #expect(
            r.stderr
                == "pagewatch: warning: --track 0x7e0000000000-0x7e0000001000 selected no page of the program during the run: nothing was tracked\n"
        )
        #expect(start?["selected_pages"] as? Int == 0)
    }

    /// fx_exit3 maps its region after the start: nothing selected then, but
    /// its pages are tracked later, so no warning.
    @Test func aRangeMappedLaterIsNoWarning() throws {
        let (r, start) = try run(["--track", "0x140000000000-0x140000004000"], [Self.exit3])
        #expect(r.status == 3)
        #expect(r.stderr == "")
        #expect(start?["selected_pages"] as? Int == 0)
        let (all, allStart) = try run([], [Self.exit3])
        #expect(all.stderr == "")
        #expect((allStart?["selected_pages"] as? Int ?? 0) > 0)
    }

    /// attach: `selected_pages` is the selection in the process at the
    /// attach, exactly; an empty one is a warning at once.
    @Test(arguments: [
        ("0x340100000000-0x340100008000", 8), ("0x340100000000-0x340100002000", 2),
        ("0x7e0000000000-0x7e0000001000", 0),
    ])
    func attachCountsTheSelectionAndWarnsWhenEmpty(_ range: String, _ pages: Int) throws {
        let fixture = try Background([Harness.fixture("fx_term")])
        #expect(fixture.waitFor("waiting\n"))
        let log = Harness.temporaryPath("attach-warn-\(UUID().uuidString).jsonl")
        let r = try Harness.run([
            Harness.pagewatch, "attach", "--output", log, "--track", range, "--interval", "0", "--sweeps", "1",
            String(fixture.pid),
        ])
        kill(fixture.pid, SIGTERM)
        #expect(fixture.finish() == 43)
        #expect(r.status == 0)
        #expect(
            r.stderr
                == (pages == 0
                    ? "pagewatch: warning: --track \(range) selects no page of pid \(fixture.pid): nothing is tracked unless such memory appears\n"
                    : ""))
        let records = try Harness.readLog(log)
        #expect(records.first?["selected_pages"] as? Int == pages)
        // The attach sweep reports every selected page: the same count.
        #expect(records.first { $0["type"] as? String == "sweep" }?["dirty_pages"] as? Int == pages)
    }

    // MARK: - Privileged programs

    static let canDropPrivileges = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
    static let canSetCapabilities =
        canDropPrivileges && FileManager.default.isExecutableFile(atPath: "/usr/sbin/setcap")

    /// A copy of `tool` in a directory everyone can read, setuid root or
    /// with `capabilities` (setcap syntax).
    static func privilegedCopy(of tool: String, capabilities: String? = nil) throws -> String {
        let dir = "/tmp/pagewatch-privileged-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(
            atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        let copy = dir + "/" + URL(fileURLWithPath: tool).lastPathComponent
        try FileManager.default.copyItem(atPath: tool, toPath: copy)
        if let capabilities {
            #expect(try Harness.run(["/usr/sbin/setcap", capabilities, copy]).status == 0)
            chmod(copy, 0o755)
        } else {
            chown(copy, 0, 0)
            chmod(copy, 0o4755)
        }
        return copy
    }

    static func remove(_ copy: String) {
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: copy).deletingLastPathComponent().path)
    }

    /// As user nobody: `pagewatch ARGS` or the program alone.
    static func asNobody(_ argv: [String]) throws -> Harness.Result {
        try Harness.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv)
    }

    /// `id -u` prints the effective uid: 0 from a setuid-root copy run by
    /// nobody, 65534 when the kernel gave it no privilege.
    @Test(.enabled(if: canDropPrivileges)) func setuidProgramWithoutItsPrivilegeIsOneWarning() throws {
        let id = try Self.privilegedCopy(of: "/usr/bin/id")
        defer { Self.remove(id) }
        let untracked = try Self.asNobody([id, "-u"])
        #expect(untracked.stdout == "0\n")
        for program in [[id, "-u"], ["/bin/sh", "-c", "\"$0\" -u", id]] {  // the first exec, and a child's
            let tracked = try Self.asNobody([Harness.pagewatch, "run", "--output", "/dev/null", "--"] + program)
            #expect(tracked.status == 0)
            #expect(tracked.stdout == "65534\n")
            let lines = tracked.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(tracked.stderr)")
            #expect(lines.first?.hasPrefix("pagewatch: warning: \(id) (pid ") == true)
            #expect(lines.first?.contains("runs without its privileges (setuid root)") == true)
        }
        // Root's PageWatch (CAP_SYS_PTRACE) keeps them: no warning.
        let asRoot = try Harness.run([Harness.pagewatch, "run", "--output", "/dev/null", "--", id, "-u"])
        #expect(asRoot.stdout == "0\n")
        #expect(asRoot.stderr == "")
    }

    @Test(.enabled(if: canSetCapabilities)) func fileCapabilityProgramWithoutItsCapabilitiesIsOneWarning() throws {
        let grep = try Self.privilegedCopy(of: "/usr/bin/grep", capabilities: "cap_net_raw+ep")
        defer { Self.remove(grep) }
        let untracked = try Self.asNobody([grep, "CapPrm", "/proc/self/status"])
        #expect(untracked.stdout == "CapPrm:\t0000000000002000\n")
        let tracked = try Self.asNobody([
            Harness.pagewatch, "run", "--output", "/dev/null", "--", grep, "CapPrm", "/proc/self/status",
        ])
        #expect(tracked.stdout == "CapPrm:\t0000000000000000\n")
        let lines = tracked.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(tracked.stderr)")
        #expect(lines.first?.contains("\(grep) (pid ") == true)
        #expect(lines.first?.contains("runs without its privileges (file capabilities 0x2000)") == true)
    }
}
