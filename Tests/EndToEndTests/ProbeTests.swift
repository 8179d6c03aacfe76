import Foundation
import Testing

/// `pagewatch probe` against what the test finds out by its own means:
/// python's own soft-dirty experiment, uname, /proc/sys, and the kernel
/// version for what came with which release.
@Suite struct ProbeTests {
    static func kernelVersion() -> (Int, Int) {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return (parts[0], parts[1])
    }

    static func sysctl(_ path: String) -> Int? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    @Test func answersAgreeWithTheKernel() throws {
        let run = try Harness.run([Harness.pagewatch, "probe", "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let p = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(p["architecture"] as? String == "x86_64")
        #expect(p["tracks"] as? Bool == true)
        #expect(p["max_map_count"] as? Int == Self.sysctl("/proc/sys/vm/max_map_count"))
        #expect(p["ptrace_scope"] as? Int == Self.sysctl("/proc/sys/kernel/yama/ptrace_scope"))
        #expect(p["unprivileged_userfaultfd"] as? Int == Self.sysctl("/proc/sys/vm/unprivileged_userfaultfd"))
        let actions = (try? String(contentsOfFile: "/proc/sys/kernel/seccomp/actions_avail", encoding: .utf8)) ?? ""
        #expect(p["seccomp_trace"] as? Bool == actions.split(separator: " ").contains { $0.hasPrefix("trace") })
        // PAGEMAP_SCAN and asynchronous write-protection came with 6.7.
        let (major, minor) = Self.kernelVersion()
        let since67 = major > 6 || (major == 6 && minor >= 7)
        #expect(p["pagemap_scan"] as? Bool == since67)
        if p["userfaultfd_features"] != nil {
            #expect(p["uffd_wp_async"] as? Bool == since67)
            #expect(p["uffd_wp"] as? Bool == true)
        } else {
            #expect(p["userfaultfd_error"] is String)
        }
        // Soft-dirty, found by python's own experiment: a page written
        // after clear_refs 4 has pagemap bit 55 set where the kernel has it.
        let python = try Harness.run([
            "/usr/bin/python3", "-c",
            """
            import ctypes, mmap, struct
            m = mmap.mmap(-1, 4096); m[0:1] = b'\\1'
            address = ctypes.addressof(ctypes.c_char.from_buffer(m))
            open('/proc/self/clear_refs', 'w').write('4')
            m[0:1] = b'\\2'
            f = open('/proc/self/pagemap', 'rb'); f.seek(address // 4096 * 8)
            print('yes' if struct.unpack('Q', f.read(8))[0] >> 55 & 1 else 'no')
            """,
        ])
        #expect(python.status == 0, "\(python.stderr)")
        #expect(p["soft_dirty"] as? Bool == (python.stdout == "yes\n"), "python: \(python.stdout)")
    }

    /// The text form says the same, and says whether PageWatch works here.
    @Test func textSaysTheSame() throws {
        let json = try Harness.run([Harness.pagewatch, "probe", "--json"])
        let p = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let text = try Harness.run([Harness.pagewatch, "probe"])
        #expect(text.status == 0)
        let rows = text.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(rows.contains("soft-dirty \(p["soft_dirty"] as? Bool == true ? "yes" : "no")"))
        #expect(rows.contains("PAGEMAP_SCAN \(p["pagemap_scan"] as? Bool == true ? "yes" : "no")"))
        #expect(rows.contains("max_map_count \(p["max_map_count"] as? Int ?? -1)"))
        #expect(rows.contains("write tracking by ptrace and mprotect works here (PageWatch's path on every kernel)"))
    }
}
