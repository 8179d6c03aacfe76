import Foundation
import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// One io_uring instance of the program, as PageWatch learned it: its
/// parameters at io_uring_setup's exit, its rings where the program mapped
/// them (MAP_SHARED: never tracked), how far its SQ and CQ were read.
struct IOUringRing {
    var params: IOUringParams
    var sqRing: UInt64?
    var cqRing: UInt64?
    var sqes: UInt64?
    /// The SQ position up to which submitted entries were decoded (an
    /// entry's call may be rewound, or take fewer entries than offered).
    var decodedThrough: UInt32?
    /// The CQ position up to which completions were read.
    var completionsSeen: UInt32 = 0
}

/// What PageWatch knows of the program's io_uring use.
struct IOUringState {
    var rings: [Int32: IOUringRing] = [:]
    var inFlight = IOUringInFlight()
}

/// The kernel writing for an io_uring request is a kernel write on the
/// program's behalf: the buffers the submitted requests name are un-armed
/// at io_uring_enter's entry, counted dirty (`[kernel] io_uring`), and kept
/// writable until the request's last completion shows in the CQ ring.
/// Where they cannot be known (SQPOLL, provided-buffer rings, a ring
/// PageWatch did not see set up, an opcode it cannot decode), it stops
/// tracking the process cleanly (an `untracked` record), never a changed result.
extension ProcessTracker {
    enum IOUringCall { case setup, enter, register }

    static let ioUringCalls: [Int64: IOUringCall] = {
        var calls: [Int64: IOUringCall] = [:]
        for (name, call) in [
            (Syscall.io_uring_setup, IOUringCall.setup), (.io_uring_enter, .enter), (.io_uring_register, .register),
        ] {
            if let nr = Arch.number(name) { calls[nr] = call }
        }
        return calls
    }()

    static let ioUringWriter = "io_uring"

    /// At a syscall entry: handles the io_uring calls; false for any other.
    func ioUringEntry(_ nr: Int64, _ args: [UInt64], _ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        guard let call = Self.ioUringCalls[nr] else { return false }
        let read: (RemoteAddress, Int) -> [UInt8] = { a, n in (try? Ptrace.readMemory(tid, a, count: n)) ?? [] }
        switch call {
        case .setup:
            // io_uring_setup(entries, params): params is read and written back.
            let flags = read(RemoteAddress(args[1] &+ 8), 4)
            if flags.count == 4,
                let reason = IOUringParams.unknowable(setupFlags: UInt32(littleEndian(flags, at: 0, size: 4)))
            {
                try stopTrackingForIOUring(reason, thread)
                return true
            }
            try unarmForKernel(
                AddressRange(start: RemoteAddress(args[1]), end: RemoteAddress(args[1]) + UInt64(IOUringParams.size)),
                by: attribution.writer("io_uring_setup", tid: tid), thread)
            try resume(thread, exit: .ioUringSetup(params: args[1]))
        case .register:
            // io_uring_register(fd, opcode, arg, nr_args)
            switch IOUringDecoder(read: read).registration(opcode: args[1], arg: args[2], count: args[3]) {
            case .unknowable(let reason):
                try stopTrackingForIOUring(reason, thread)
                return true
            case .pins(let buffers):
                for b in buffers {
                    try yieldWriteProtection(b, to: "io_uring's registered buffers")
                    try injector.pin(b.pageAligned, in: &memory, thread)
                }
            case .none:
                break
            }
            // Its own outputs (a probe, worker counts, ring indexes): checked as an unknown call's.
            try resume(thread, exit: .unknown(entry: entryRegisters(thread), attempt: thread.syscall.unknownAttempt))
        case .enter:
            try ioUringEnterEntry(args, thread, read: read)
        }
        return true
    }

    /// io_uring_setup's exit: the new ring's parameters.
    func ioUringSetupExit(params: UInt64, result: Int64, tid: Int32) {
        guard result >= 0,
            let p = IOUringParams((try? Ptrace.readMemory(tid, RemoteAddress(params), count: IOUringParams.size)) ?? [])
        else { return }
        let fd = Int32(truncatingIfNeeded: result)
        ioUring.inFlight.forget(ring: fd)
        ioUring.rings[fd] = IOUringRing(params: p)
        trace("  io_uring fd \(fd): \(p.sqEntries) SQ entries, flags 0x\(String(p.flags, radix: 16))")
    }

    /// A successful mmap: the rings of a known ring fd (IORING_OFF_SQ_RING,
    /// IORING_OFF_CQ_RING, IORING_OFF_SQES).
    func noteIOUringMapping(_ args: [UInt64], at address: UInt64, tid: Int32) {
        let fd = Int32(truncatingIfNeeded: args[4])
        guard var ring = ioUring.rings[fd], isIOUringFile(fd) else { return }
        switch args[5] {
        case 0:
            ring.sqRing = address
            if ring.params.singleMmap { ring.cqRing = address }
        case 0x800_0000: ring.cqRing = address
        case 0x1000_0000: ring.sqes = address
        default: return
        }
        ioUring.rings[fd] = ring
    }

    /// Whether the program's `fd` is an io_uring instance (a closed ring's
    /// number may have been reused).
    func isIOUringFile(_ fd: Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/\(pid)/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return false }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[io_uring]"
    }

    /// io_uring_enter(fd, to_submit, min_complete, flags, arg, argsz): the
    /// SQ entries it will take are decoded and their buffers un-armed.
    func ioUringEnterEntry(_ args: [UInt64], _ thread: TrackedThread, read: @escaping (RemoteAddress, Int) -> [UInt8])
        throws
    {
        let tid = thread.tid
        retireIOUringCompletions(tid: tid)
        var fd = Int32(truncatingIfNeeded: args[0])
        let toSubmit = UInt32(truncatingIfNeeded: args[1])
        if args[3] & 16 != 0 {  // IORING_ENTER_REGISTERED_RING: fd is an index of registered rings
            guard ioUring.rings.count == 1, let only = ioUring.rings.keys.first else {
                try stopTrackingForIOUring(
                    "io_uring_enter on a registered ring index PageWatch cannot tie to a ring", thread)
                return
            }
            fd = only
        }
        // A ring set up before PageWatch came (attach), in a forked child,
        // or never mapped: what it has in flight is unknown.
        guard var ring = ioUring.rings[fd], let sq = ring.sqRing, let sqes = ring.sqes, ring.cqRing != nil else {
            try stopTrackingForIOUring("io_uring_enter on a ring whose setup or mapping PageWatch did not see", thread)
            return
        }
        guard toSubmit > 0 else { return try resume(thread) }
        let p = ring.params
        let ends = read(RemoteAddress(sq &+ UInt64(p.sqHead)), 4) + read(RemoteAddress(sq &+ UInt64(p.sqTail)), 4)
        guard ends.count == 8 else {
            try stopTrackingForIOUring("io_uring SQ ring unreadable", thread)
            return
        }
        let head = UInt32(littleEndian(ends, at: 0, size: 4)), tail = UInt32(littleEndian(ends, at: 4, size: 4))
        let count = min(toSubmit, tail &- head, p.sqEntries)
        var position = head
        if let through = ring.decodedThrough, case let ahead = Int32(bitPattern: through &- head), ahead > 0,
            ahead <= Int32(count)
        {
            position = through  // decoded before (a rewound entry, or entries left for a later call)
        }
        let end = head &+ count
        var requests: [IOUringSQE] = []
        while position != end {
            let slot = UInt64(position & p.sqMask)
            var index = slot
            if p.hasSQArray {
                let raw = read(RemoteAddress(sq &+ UInt64(p.sqArray) &+ slot * 4), 4)
                guard raw.count == 4 else { break }
                index = littleEndian(raw, at: 0, size: 4)
            }
            // An index out of range is dropped by the kernel.
            if index < UInt64(p.sqEntries) {
                guard let sqe = IOUringSQE(read(RemoteAddress(sqes &+ index &* p.sqeSize), IOUringSQE.size)) else {
                    try stopTrackingForIOUring("io_uring submission entry unreadable", thread)
                    return
                }
                requests.append(sqe)
            }
            position = position &+ 1
        }
        trace(
            "  io_uring_enter fd \(fd): SQ \(head)..<\(tail), submits \(count), decoded through \(ring.decodedThrough.map(String.init) ?? "-"): opcodes \(requests.map(\.opcode))"
        )
        let decoder = IOUringDecoder(read: read)
        let effects = requests.map { decoder.effect(of: $0) }
        for case .unknowable(let reason) in effects {
            try stopTrackingForIOUring(reason, thread)
            return
        }
        ring.decodedThrough = end
        ioUring.rings[fd] = ring
        var kernel: Writer?
        for (request, effect) in zip(requests, effects) {
            // Every request that will complete counts (IOSQE_CQE_SKIP_SUCCESS:
            // maybe no completion; kept only when it has buffers).
            if case .writes(let buffers) = effect {
                ioUring.inFlight.submitted(ring: fd, userData: request.userData, buffers: buffers)
            } else if request.flags & IOUringSQE.skipSuccess == 0 {
                ioUring.inFlight.submitted(ring: fd, userData: request.userData, buffers: [])
            }
            switch effect {
            case .writes(let buffers):
                for b in buffers {
                    if kernel == nil { kernel = attribution.writer(Self.ioUringWriter, tid: tid) }
                    try unarmForKernel(b, by: kernel!, thread)
                }
            case .provides(let buffers):
                for b in buffers {
                    try yieldWriteProtection(b, to: "io_uring's provided buffers")
                    try injector.pin(b.pageAligned, in: &memory, thread)
                }
            case .zeroes(let ranges):
                for r in ranges {
                    memory.markDirty(r)
                    writeProtect.markDiscarded(r, zeroed: false)
                }
            case .none, .unknowable:
                break
            }
        }
        try resume(thread)
    }

    /// Reads the CQ rings of the rings with requests in flight: a last
    /// completion lets the request's buffers be armed again.
    func retireIOUringCompletions(tid: Int32) {
        guard !ioUring.inFlight.isEmpty else { return }
        for (fd, var ring) in ioUring.rings where ioUring.inFlight.has(ring: fd) {
            guard let cq = ring.cqRing,
                let t = try? Ptrace.readMemory(liveThread(), RemoteAddress(cq &+ UInt64(ring.params.cqTail)), count: 4),
                t.count == 4
            else { continue }
            let tail = UInt32(littleEndian(t, at: 0, size: 4))
            var position = ring.completionsSeen
            // Entries older than a ring's worth were overwritten: their
            // requests stay in flight (reported every sweep; never re-armed early).
            if tail &- position > ring.params.cqEntries { position = tail &- ring.params.cqEntries }
            let size = ring.params.cqeSize
            while position != tail {
                let slot = UInt64(position & ring.params.cqMask)
                let at = cq &+ UInt64(ring.params.cqCqes) &+ slot &* size
                guard let cqe = try? Ptrace.readMemory(liveThread(), RemoteAddress(at), count: 16), cqe.count == 16
                else { break }
                let more = littleEndian(cqe, at: 12, size: 4) & 2 != 0  // IORING_CQE_F_MORE
                ioUring.inFlight.completed(ring: fd, userData: littleEndian(cqe, at: 0), more: more)
                position = position &+ 1
            }
            ring.completionsSeen = position
            ioUring.rings[fd] = ring
        }
    }

    /// The pages io_uring requests in flight may still write: left out of a sweep's re-arming.
    func ioUringBuffersInFlight() -> PageSet {
        retireIOUringCompletions(tid: liveThread())
        return ioUring.inFlight.pages
    }

    /// Attach: an io_uring instance set up before PageWatch came may have
    /// requests in flight, whose buffers the attach sweep would arm (their
    /// completion then an EFAULT), and its rings are unknown. Such a
    /// process is not tracked: checked at the attach sweep, before anything
    /// is armed. Returns true when it stopped tracking.
    func stopTrackingForIOUringBeforeAttach(_ thread: TrackedThread) throws -> Bool {
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"),
            fds.contains(where: { Int32($0).map(isIOUringFile) ?? false })
        else { return false }
        try stopTracking(
            because: "io_uring instance set up before the attach: its requests in flight cannot be known", thread)
        return true
    }

    /// Stops tracking at an io_uring call's entry; the call is rewound and
    /// then runs untouched.
    func stopTrackingForIOUring(_ reason: String, _ thread: TrackedThread) throws {
        ioUring = IOUringState()
        try stopTracking(because: reason, thread)
        try resume(thread)
    }
}
