import ArgumentParser
import Glibc
import PageWatchLog
import PageWatchPtrace

/// `pagewatch probe`: what this kernel offers for write tracking, and
/// whether PageWatch works here. The asking is `KernelProbe`'s.
struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What this kernel offers for write tracking, and whether PageWatch works here.",
        discussion: """
            Asks the kernel itself: soft-dirty bits (pagemap bit 55 after clear_refs 4), \
            userfaultfd and its write-protect features, PAGEMAP_SCAN, seccomp RET_TRACE, \
            kernel.yama.ptrace_scope, vm.max_map_count, vm.unprivileged_userfaultfd, rseq, the \
            architecture. Exit status 0, or 1 when PageWatch cannot track here.
            """)

    @Flag(name: .long, help: "One JSON object instead of text.")
    var json = false

    func run() throws {
        let p = KernelProbe.run()
        let feature = p.offers
        let uffd: String
        switch p.userfaultfdFeatures {
        case .success(let f): uffd = "available, features 0x" + String(f, radix: 16)
        case .failure(let e): uffd = "not available (\(e))"
        }
        if json {
            let number = { (v: Int?) in v.map(String.init) ?? "null" }
            var fields = [
                ("architecture", JSONLines.string(p.architecture)), ("kernel", JSONLines.string(p.kernelRelease)),
                ("tracks", String(p.tracks)), ("soft_dirty", String(p.softDirty)),
            ]
            switch p.userfaultfdFeatures {
            case .success(let f): fields.append(("userfaultfd_features", String(f)))
            case .failure(let e): fields.append(("userfaultfd_error", JSONLines.string("\(e)")))
            }
            fields += [
                ("uffd_wp", String(feature(KernelProbe.UserfaultFeature.writeProtect))),
                ("uffd_wp_async", String(feature(KernelProbe.UserfaultFeature.writeProtectAsync))),
                ("uffd_wp_unpopulated", String(feature(KernelProbe.UserfaultFeature.writeProtectUnpopulated))),
                ("pagemap_scan", String(p.pagemapScan)),
                ("seccomp_trace", String(p.seccompActions?.contains("trace") ?? false)),
                ("ptrace_scope", number(p.ptraceScope)), ("max_map_count", number(p.maxMapCount)),
                ("unprivileged_userfaultfd", number(p.unprivilegedUserfaultfd)), ("rseq", String(p.rseq)),
            ]
            writeAll(
                STDOUT_FILENO, "{" + fields.map { JSONLines.string($0.0) + ":" + $0.1 }.joined(separator: ",") + "}\n")
        } else {
            let yes = { (b: Bool) in b ? "yes" : "no" }
            let rows: [(String, String)] = [
                ("architecture", p.architecture), ("kernel", p.kernelRelease),
                ("soft-dirty", yes(p.softDirty)), ("userfaultfd", uffd),
                ("  write-protect", yes(feature(KernelProbe.UserfaultFeature.writeProtect))),
                ("  asynchronous", yes(feature(KernelProbe.UserfaultFeature.writeProtectAsync))),
                ("  unpopulated", yes(feature(KernelProbe.UserfaultFeature.writeProtectUnpopulated))),
                ("PAGEMAP_SCAN", yes(p.pagemapScan)),
                ("seccomp", p.seccompActions.map { "actions " + $0.joined(separator: " ") } ?? "unknown"),
                ("ptrace_scope", p.ptraceScope.map(String.init) ?? "no Yama"),
                ("max_map_count", p.maxMapCount.map(String.init) ?? "unknown"),
                ("unprivileged uffd", p.unprivilegedUserfaultfd.map(String.init) ?? "unknown"),
                ("rseq", p.rseq ? "yes (glibc registers an area per thread)" : "no"),
            ]
            let text = rows.map { $0.0.padding(toLength: 19, withPad: " ", startingAt: 0) + $0.1 }
            writeAll(STDOUT_FILENO, (text + [""] + p.verdict).joined(separator: "\n") + "\n")
        }
        if !p.tracks { throw ExitCode(1) }
    }
}
