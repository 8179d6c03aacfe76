internal import CPtrace
import Glibc
import PageWatchAddressSpace

/// What this kernel offers for write tracking, asked of the kernel itself
/// (`pagewatch probe`), as `criu check --feature mem_dirty_track` does for
/// soft-dirty: soft-dirty bits, userfaultfd write-protection and its
/// asynchronous mode, `PAGEMAP_SCAN`, seccomp's `RET_TRACE`, and the
/// settings that decide whether PageWatch's ptrace path works here.
public struct KernelProbe: Sendable, Equatable {
    public var architecture: String
    public var kernelRelease: String
    /// Pagemap bit 55 set by a write after `clear_refs` 4 (`CONFIG_MEM_SOFT_DIRTY`).
    public var softDirty: Bool
    /// The features `UFFDIO_API` offers, or why no userfaultfd could be opened.
    public var userfaultfdFeatures: Result<UInt64, Errno>
    /// `PAGEMAP_SCAN` on `/proc/PID/pagemap` (Linux 6.7+).
    public var pagemapScan: Bool
    /// `/proc/sys/kernel/seccomp/actions_avail`; nil when absent.
    public var seccompActions: [String]?
    /// `kernel.yama.ptrace_scope`; nil without Yama.
    public var ptraceScope: Int?
    public var maxMapCount: Int?
    /// `vm.unprivileged_userfaultfd`; nil when absent.
    public var unprivilegedUserfaultfd: Int?
    /// glibc registered an rseq area for this thread (`__rseq_size` > 0):
    /// the kernel knows rseq(2), and programs have areas it writes.
    public var rseq: Bool

    /// `UFFD_FEATURE_*` bits (linux/userfaultfd.h; the last three are newer
    /// than some distributions' headers).
    public enum UserfaultFeature {
        public static let writeProtect: UInt64 = 1 << 0
        public static let eventFork: UInt64 = 1 << 1
        public static let writeProtectUnpopulated: UInt64 = 1 << 13
        public static let writeProtectAsync: UInt64 = 1 << 15
    }

    public static func run() -> KernelProbe {
        var names = utsname()
        uname(&names)
        let machine = withUnsafeBytes(of: &names.machine) {
            String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
        }
        let release = withUnsafeBytes(of: &names.release) {
            String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
        }
        var features: UInt64 = 0
        let uffd = pw_userfaultfd_features(&features)
        return KernelProbe(
            architecture: machine, kernelRelease: release, softDirty: probeSoftDirty(),
            userfaultfdFeatures: uffd == 0 ? .success(features) : .failure(Errno(Int32(-uffd))),
            pagemapScan: PageMap.kernelScans(),
            seccompActions: text("/proc/sys/kernel/seccomp/actions_avail").map {
                $0.split(separator: " ").map(String.init)
            },
            ptraceScope: text("/proc/sys/kernel/yama/ptrace_scope").flatMap { Int($0) },
            maxMapCount: text("/proc/sys/vm/max_map_count").flatMap { Int($0) },
            unprivilegedUserfaultfd: text("/proc/sys/vm/unprivileged_userfaultfd").flatMap { Int($0) },
            rseq: dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__rseq_size").map {
                $0.load(as: UInt32.self) > 0
            } ?? false)
    }

    /// The first line of a /proc file; nil when it cannot be read.
    static func text(_ path: String) -> String? {
        (try? ProcFS.read(path, pid: getpid())).map { String($0.split(separator: "\n").first ?? "") }
    }

    /// A page of its own written after `clear_refs` 4: soft-dirty when its
    /// pagemap entry has bit 55 set.
    static func probeSoftDirty() -> Bool {
        guard let page = mmap(nil, Int(Page.size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            page != MAP_FAILED
        else { return false }
        defer { munmap(page, Int(Page.size)) }
        page.storeBytes(of: 1, as: UInt8.self)
        let clear = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
        guard clear >= 0 else { return false }
        let cleared = write(clear, "4", 1) == 1
        close(clear)
        guard cleared else { return false }
        page.storeBytes(of: 2, as: UInt8.self)
        let map = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard map >= 0 else { return false }
        defer { close(map) }
        var entry: UInt64 = 0
        let offset = off_t(UInt(bitPattern: page) / UInt(Page.size) * 8)
        guard pread(map, &entry, 8, offset) == 8 else { return false }
        return entry & (1 << 55) != 0
    }

    /// Whether PageWatch can track here at all: x86_64, and ptrace allowed.
    public var tracks: Bool { architecture == "x86_64" && ptraceScope != 3 }

    /// Whether userfaultfd offers the feature (`UserfaultFeature`).
    public func offers(_ feature: UInt64) -> Bool {
        if case .success(let f) = userfaultfdFeatures { return f & feature != 0 }
        return false
    }

    /// Whether PageWatch's tracking works here, and how; one line each.
    public var verdict: [String] {
        var out: [String] = []
        if architecture != "x86_64" {
            out.append("PageWatch runs on x86_64 only; this is \(architecture): it will not track here")
        }
        if ptraceScope == 3 {
            out.append("kernel.yama.ptrace_scope is 3: no process may be traced, PageWatch cannot work here")
        } else {
            out.append(
                "write tracking by ptrace and mprotect works here (PageWatch's path on every kernel)"
                    + (ptraceScope == 2 ? "; ptrace_scope 2: only as root (CAP_SYS_PTRACE)" : "")
                    + (ptraceScope == 1 ? "; ptrace_scope 1: `attach` only to your own descendants, or as root" : ""))
        }
        out.append(
            softDirty
                ? "soft-dirty bits are available: /proc/PID/clear_refs + pagemap would do without PageWatch"
                : "no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off): PageWatch is the way to track writes here")
        if seccompActions?.contains("trace") != true {
            out.append("seccomp RET_TRACE is not offered: `run` cannot stop at system calls only; it will refuse")
        }
        if offers(UserfaultFeature.writeProtectAsync) {
            out.append(
                "asynchronous userfaultfd write-protection and PAGEMAP_SCAN are here"
                    + (pagemapScan ? "" : " (PAGEMAP_SCAN is not)")
                    + (pagemapScan
                        ? ": `--backend uffd` (and `auto` at --stack-depth 0) tracks anonymous memory with them"
                        : ": PageWatch's userfaultfd backend needs both, it stays on ptrace"))
        }
        return out
    }
}
