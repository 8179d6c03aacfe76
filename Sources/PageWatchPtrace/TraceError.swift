import PageWatchAddressSpace

/// Errors of the ptrace layer. Two channels, kept apart (as compel does):
/// the tool's own call failed, or a syscall injected into the tracee ran and
/// returned -errno there.
public enum TraceError: Error, CustomStringConvertible {
    /// A call PageWatch made itself (`ptrace`, `waitpid`, `process_vm_readv`, a /proc read) failed.
    case call(String, Errno, tid: Int32, address: RemoteAddress? = nil)
    /// A syscall injected into thread `tid` ran and returned `-errno`.
    case remoteSyscall(String, Errno, tid: Int32, address: RemoteAddress?)
    /// The thread exited or was killed while PageWatch was working on it.
    case traceeGone(tid: Int32)
    /// The program could not be executed (the shell's 127).
    case execFailed(path: String, Errno)
    /// `pagewatch attach` refuses this target (gone, a zombie, a kernel thread, traced already).
    case cannotAttach(pid: Int32, reason: String, hint: String?)

    public var description: String {
        switch self {
        case let .call(name, errno, tid, address):
            let at = address.map { ", \($0.hex)" } ?? ""
            if name.hasPrefix("PTRACE_") { return "ptrace(\(name), pid \(tid)\(at)): \(errno)" }
            return "\(name) (pid \(tid)\(at)): \(errno)"
        case let .remoteSyscall(name, errno, tid, address):
            let at = address.map { "\($0.hex)" } ?? ""
            return "injected \(name)(\(at)) in pid \(tid) failed: \(errno)"
        case let .traceeGone(tid):
            return "pid \(tid) exited while being traced"
        case let .execFailed(path, errno):
            return "cannot run '\(path)': \(errno.message)"
        case let .cannotAttach(pid, reason, _):
            return "cannot attach to pid \(pid): \(reason)"
        }
    }

    /// A second line for the CLI, where the cause is likely known.
    public var hint: String? {
        switch self {
        case let .call(name, errno, _, _) where errno == .EPERM && name.hasPrefix("PTRACE_"):
            return
                "ptrace was refused: PageWatch needs CAP_SYS_PTRACE or kernel.yama.ptrace_scope <= 1, and the process must not already be traced (gdb, strace)"
        case let .cannotAttach(_, _, hint):
            return hint
        case let .remoteSyscall(_, errno, _, _) where errno == .ENOMEM:
            return "the process may have reached vm.max_map_count (sysctl vm.max_map_count)"
        default:
            return nil
        }
    }
}

/// Turns a 0 / -errno result of the C shim into a thrown `TraceError.call`.
@inline(__always)
func check(_ result: Int32, _ name: @autoclosure () -> String, tid: Int32, address: RemoteAddress? = nil) throws {
    if result < 0 { throw TraceError.call(name(), Errno(-result), tid: tid, address: address) }
}
