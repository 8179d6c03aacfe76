import Glibc

/// A request to the kernel's PM QoS for a CPU wake-up latency of 0
/// (`/dev/cpu_dma_latency`), held while PageWatch traces: idle CPUs then
/// poll instead of halting, so the program's thread resumed on an idle CPU,
/// and PageWatch woken at its next stop, start at once. On a VM waking a
/// halted vCPU takes tens of microseconds, most of a fault's cost
/// (docs/performance.md). System-wide, it only changes how idle CPUs wait:
/// not the program, nor its CPU affinity. The kernel drops the request when
/// the descriptor closes (also if PageWatch dies). Root only.
final class CPUIdlePolling {
    let descriptor: Int32

    init(descriptor: Int32) { self.descriptor = descriptor }

    /// The request, or nil where it cannot be made (not root, no such
    /// device): PageWatch then runs without it.
    static func request() -> CPUIdlePolling? {
        // Close-on-exec: never passed to the program or the guardian.
        let fd = open("/dev/cpu_dma_latency", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var microseconds: Int32 = 0
        guard write(fd, &microseconds, MemoryLayout<Int32>.size) == MemoryLayout<Int32>.size else {
            close(fd)
            return nil
        }
        return CPUIdlePolling(descriptor: fd)
    }

    deinit { close(descriptor) }
}
