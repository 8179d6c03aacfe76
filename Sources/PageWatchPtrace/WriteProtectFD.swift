internal import CPtrace
import Glibc
import PageWatchAddressSpace

/// PageWatch's copy of a userfaultfd made inside a tracee, used for
/// asynchronous write-protection (`UFFD_FEATURE_WP_ASYNC`) of the tracee's
/// memory: a userfaultfd acts on the address space of the process that
/// created it, whoever holds it. The tracee's own descriptor is closed right
/// after the copy is taken (`pidfd_getfd`), so the program never sees it.
/// Thin: each method is one ioctl; policy is the engine's.
public final class WriteProtectFD {
    public let pid: Int32
    private var fd: Int32

    /// `UFFD_FEATURE_*` asked for: write faults resolved by the kernel
    /// itself (no handler, no signal, no stop), and pages never populated
    /// protected too, by a pte marker each: without one, `PAGEMAP_SCAN`
    /// counts an empty pte written (it has no write-protect bit). 6.18
    /// leaves markers in anonymous memory without being asked; asked, the
    /// behaviour is the same on every kernel that has both features.
    public static let features: UInt64 =
        KernelProbe.UserfaultFeature.writeProtectAsync | KernelProbe.UserfaultFeature.writeProtectUnpopulated

    /// `userfaultfd(2)`'s flags for the injected call: close-on-exec, and
    /// user-mode only, which an unprivileged process may open
    /// (vm.unprivileged_userfaultfd=0) and which asynchronous write faults
    /// do not need (the kernel resolves them before asking any handler).
    public static let creationFlags: UInt64 = UInt64(O_CLOEXEC) | 1  // UFFD_USER_MODE_ONLY

    /// Takes a copy of `remoteFD`, a userfaultfd of process `pid`, and
    /// makes the `UFFDIO_API` handshake asking `features`. `thread`: the
    /// descriptor is in that thread's own table (a helper thread of `pid`
    /// cloned without `CLONE_FILES`), taken through a thread pidfd.
    public init(pid: Int32, remoteFD: Int32, thread: Int32? = nil) throws {
        self.pid = pid
        let taken = thread.map { pw_take_thread_fd($0, remoteFD) } ?? pw_take_fd(pid, remoteFD)
        if taken < 0 { throw TraceError.call("pidfd_getfd", Errno(-taken), tid: thread ?? pid) }
        fd = taken
        var offered: UInt64 = 0
        let r = pw_uffd_api(fd, Self.features, &offered)
        if r < 0 {
            Glibc.close(fd)
            fd = -1
            throw TraceError.call("UFFDIO_API", Errno(-r), tid: pid)
        }
    }

    deinit { close() }

    /// Why a descriptor cannot be taken from one thread's own table here:
    /// nil when `pidfd_open` takes `PIDFD_THREAD` (Linux 6.9+), else its error.
    public static let threadPidfdsLacking: Errno? = {
        let r = pw_thread_pidfds()
        return r < 0 ? Errno(-r) : nil
    }()

    /// Gives the descriptor up: the userfaultfd goes with it, and with it
    /// every registration still made through it (the kernel unregisters
    /// them and drops their write-protect bits).
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// `UFFDIO_REGISTER` of `range` in write-protect mode.
    public func register(_ range: AddressRange) throws {
        try check(
            pw_uffd_register_wp(fd, range.start.value, range.length), "UFFDIO_REGISTER", tid: pid,
            address: range.start)
    }

    /// `UFFDIO_UNREGISTER` of `range`: its pages lose their write-protect bits.
    public func unregister(_ range: AddressRange) throws {
        try check(
            pw_uffd_unregister(fd, range.start.value, range.length), "UFFDIO_UNREGISTER", tid: pid,
            address: range.start)
    }

    /// `UFFDIO_WRITEPROTECT` of `range` (registered): every page, populated
    /// or not, faults (asynchronously) at its next write.
    public func writeProtect(_ range: AddressRange) throws {
        try check(
            pw_uffd_writeprotect(fd, range.start.value, range.length, 1), "UFFDIO_WRITEPROTECT", tid: pid,
            address: range.start)
    }
}
