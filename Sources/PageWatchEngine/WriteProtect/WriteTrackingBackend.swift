import PageWatchPtrace

/// `--backend`: how writes to private anonymous memory (heap, anonymous
/// mappings, thread stacks, the main stack) are tracked. Everything else a
/// selection takes (private file mappings: a library's `.data`) is always
/// on the ptrace path, in the same run.
public enum WriteTrackingBackend: String, Sendable, CaseIterable {
    /// `uffd` where the kernel offers it and no writer is asked for
    /// (`--stack-depth 0`), else `ptrace`.
    case auto
    /// ptrace, injected `mprotect` and the write fault's SIGSEGV stop.
    case ptrace
    /// Asynchronous userfaultfd write-protection (`UFFD_FEATURE_WP_ASYNC`)
    /// and `PAGEMAP_SCAN` sweeps: no stop, no signal at a write, and so no
    /// writer either. Falls back to ptrace (one warning) where the kernel
    /// or the program's process cannot have it.
    case uffd

    /// What the kernel PageWatch runs on offers for `uffd`: asynchronous
    /// and unpopulated write-protection, and `PAGEMAP_SCAN`; nil when it
    /// does, else why not. Asked of the kernel once per session.
    static let kernelLacks: String? = {
        let probe = KernelProbe.run()
        let wanted = WriteProtectFD.features
        switch probe.userfaultfdFeatures {
        case .failure(let errno):
            return "userfaultfd cannot be opened here: \(errno)"
        case .success(let offered) where offered & wanted != wanted:
            return "this kernel (\(probe.kernelRelease)) offers no asynchronous userfaultfd write-protection"
        default:
            return probe.pagemapScan ? nil : "this kernel (\(probe.kernelRelease)) has no PAGEMAP_SCAN"
        }
    }()
}

extension TrackerConfiguration {
    /// Whether the session tries the userfaultfd backend: `uffd` always
    /// (failing, it falls back with a warning), `auto` where the kernel
    /// offers it and writers are not asked for (asynchronous faults have none).
    var triesWriteProtect: Bool {
        switch backend {
        case .ptrace: return false
        case .uffd: return true
        case .auto: return stackDepth == 0 && WriteTrackingBackend.kernelLacks == nil
        }
    }
}
