internal import CPtrace
import Glibc

/// Starts the guardian process: `path guardian --pid PID` with the state
/// (`stateFD`, the engine's `GuardianState`) on descriptor 3 and the read end of a pipe on 4, whose write end only
/// PageWatch holds: end of file there means PageWatch is gone.
public func spawnGuardian(path: String, arguments: [String], stateFD: Int32) throws -> (pid: Int32, watch: Int32) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw TraceError.call("pipe", Errno(errno), tid: getpid()) }
    // Neither end may leak into anything PageWatch starts but the guardian (which gets a copy as 4).
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    let pid: Int32 = withCStrings([path] + arguments) { argv in
        pw_spawn_guardian(path, argv, stateFD, fds[0])
    }
    close(fds[0])
    if pid < 0 {
        close(fds[1])
        throw TraceError.call("fork", Errno(-pid), tid: getpid())
    }
    return (pid, fds[1])
}
