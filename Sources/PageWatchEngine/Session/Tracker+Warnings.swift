import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// What the user must be told although nothing failed: a selection that
/// selects nothing, a privileged program that runs without its privileges,
/// a program whose own ptrace calls PageWatch makes fail. One line each,
/// through `Tracker.onWarning`.
extension Tracker {
    func warn(_ message: String) {
        trace("warning: \(message)")
        onWarning?(message)
    }

    /// `run`, at the start: `file:` specs that can never select a page
    /// (maps name files by their absolute path).
    func warnAboutFileSpecs() {
        for case .file(let path) in config.selection.specs {
            var why: String?
            if !path.hasPrefix("/") {
                why = "/proc/PID/maps names files by absolute path (file:/...)"
            } else if access(path, F_OK) != 0 {
                why = Errno(errno).message.lowercased()
            }
            guard let why else { continue }
            warn("--track file:\(path) selects nothing: \(why)")
            warnedAboutSelection = true
        }
    }

    /// `attach`, at the start: a selection with no page in the process now.
    func warnIfNothingSelected(_ selected: UInt64) {
        guard selected == 0 else { return }
        warn(
            "--track \(config.selection.description) selects no page of pid \(main.pid): nothing is tracked unless such memory appears"
        )
    }

    /// `run`, at the end: no sweep of the program ever had a page selected
    /// (and no `file:` warning said so already).
    func warnIfNothingWasEverSelected() {
        guard !main.everSelected, !warnedAboutSelection else { return }
        warn(
            "--track \(config.selection.description) selected no page of the program during the run: nothing was tracked"
        )
    }

    /// After an exec PageWatch saw (the program's first one included): a
    /// setuid, setgid or file-capability image that did not get its
    /// privileges because PageWatch traces it. Once per file.
    func checkExecPrivilege(pid: Int32) {
        guard let denied = ExecPrivilege.denied(pid: pid, launched: resumeMode != .syscallStops) else { return }
        let path = ProcFS.executable(of: pid) ?? "pid \(pid)"
        guard warnedPrivilegedImages.insert(path).inserted else { return }
        warn(
            "\(path) (pid \(pid)) runs without its privileges (\(denied)): the kernel drops them for a program "
                + "traced without CAP_SYS_PTRACE\(resumeMode != .syscallStops ? " or under the no_new_privs PageWatch sets without CAP_SYS_ADMIN" : ""); "
                + "it may fail or print wrong data: run PageWatch as root to keep them")
    }
}

extension ProcessTracker {
    /// The pages the selection picks in the process now, without changing
    /// the model (the `start` record's `selected_pages`).
    func selectedPagesNow() -> UInt64 {
        guard let maps = try? ProcFS.maps(of: pid) else { return 0 }
        let programs = maps.filter { m in injector.remote.map { !$0.scratch.contains(m.range.start) } ?? true }
        var probe = TrackedMemory()
        probe.reconcile(maps: programs, selection: config.selection, stackAnchors: stackAnchors)
        return probe.trackedPageCount
    }
}
