import PageWatchAddressSpace
import PageWatchPtrace

/// The user memory the kernel writes for the program's io_uring requests,
/// found from the requests themselves (pure: tracee memory comes through
/// `read`). The kernel runs a request from its own context (task work, the
/// io-wq workers), not from a syscall PageWatch stops with output buffers,
/// so its copy into an armed page fails with EFAULT in the request's
/// completion: the buffers must be un-armed, and counted dirty, before the
/// kernel takes the request.

/// `struct io_uring_params` as io_uring_setup fills it at its exit.
struct IOUringParams: Equatable {
    static let size = 120
    // Setup flags PageWatch looks at.
    static let sqPoll: UInt32 = 1 << 1
    static let sqe128: UInt32 = 1 << 10
    static let cqe32: UInt32 = 1 << 11
    static let noMmap: UInt32 = 1 << 14
    static let noSQArray: UInt32 = 1 << 16
    static let cqeMixed: UInt32 = 1 << 18
    static let sqeMixed: UInt32 = 1 << 19
    /// IORING_FEAT_SINGLE_MMAP: the CQ ring lives in the SQ ring's mapping.
    static let singleMmap: UInt32 = 1 << 0

    var sqEntries: UInt32
    var cqEntries: UInt32
    var flags: UInt32
    var features: UInt32
    /// `sq_off`: offsets in the SQ ring mapping.
    var sqHead: UInt32, sqTail: UInt32, sqArray: UInt32
    /// `cq_off`: offsets in the CQ ring mapping.
    var cqHead: UInt32, cqTail: UInt32, cqCqes: UInt32

    init?(_ b: [UInt8]) {
        guard b.count >= Self.size else { return nil }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian(b, at: at, size: 4)) }
        sqEntries = u32(0); cqEntries = u32(4); flags = u32(8); features = u32(20)
        sqHead = u32(40); sqTail = u32(44); sqArray = u32(64)
        cqHead = u32(80); cqTail = u32(84); cqCqes = u32(100)
    }

    /// The rings' sizes are powers of two: a position's slot is its low bits.
    var sqMask: UInt32 { sqEntries &- 1 }
    var cqMask: UInt32 { cqEntries &- 1 }

    var sqeSize: UInt64 { flags & Self.sqe128 != 0 ? 128 : 64 }
    var cqeSize: UInt64 { flags & Self.cqe32 != 0 ? 32 : 16 }
    var hasSQArray: Bool { flags & Self.noSQArray == 0 }
    var singleMmap: Bool { features & Self.singleMmap != 0 }

    /// Why a ring set up with `flags` hides the buffers its requests name
    /// from PageWatch, or nil when they can be known.
    static func unknowable(setupFlags flags: UInt32) -> String? {
        if flags & sqPoll != 0 {
            return
                "io_uring with IORING_SETUP_SQPOLL: a kernel thread takes the program's requests without a syscall, so the buffers it writes cannot be known in time"
        }
        if flags & noMmap != 0 {
            return "io_uring with IORING_SETUP_NO_MMAP: its rings are in the program's own memory, held by the kernel"
        }
        if flags & (sqeMixed | cqeMixed) != 0 {
            return "io_uring with mixed-size entries (IORING_SETUP_SQE_MIXED/CQE_MIXED)"
        }
        return nil
    }
}

/// The fields of one `struct io_uring_sqe` PageWatch reads.
struct IOUringSQE: Equatable {
    static let size = 64
    // sqe->flags
    static let bufferSelect: UInt8 = 1 << 5
    static let skipSuccess: UInt8 = 1 << 6

    var opcode: UInt8
    var flags: UInt8
    var fd: Int32
    /// `off` / `addr2`.
    var off: UInt64
    var addr: UInt64
    var len: UInt32
    /// The per-opcode flags word (`rw_flags`, `msg_flags`, `fadvise_advice`, ...).
    var opFlags: UInt32
    var userData: UInt64
    /// `addr3` / `attr_ptr`.
    var addr3: UInt64
    /// `attr_type_mask` in kernels with read/write attributes (padding before).
    var attrTypeMask: UInt64

    init(
        opcode: UInt8, flags: UInt8 = 0, fd: Int32 = 0, off: UInt64 = 0, addr: UInt64 = 0, len: UInt32 = 0,
        opFlags: UInt32 = 0, userData: UInt64 = 0, addr3: UInt64 = 0, attrTypeMask: UInt64 = 0
    ) {
        self.opcode = opcode; self.flags = flags; self.fd = fd; self.off = off; self.addr = addr; self.len = len
        self.opFlags = opFlags; self.userData = userData; self.addr3 = addr3; self.attrTypeMask = attrTypeMask
    }

    init?(_ b: [UInt8]) {
        guard b.count >= Self.size else { return nil }
        opcode = b[0]
        flags = b[1]
        fd = Int32(bitPattern: UInt32(littleEndian(b, at: 4, size: 4)))
        off = littleEndian(b, at: 8)
        addr = littleEndian(b, at: 16)
        len = UInt32(littleEndian(b, at: 24, size: 4))
        opFlags = UInt32(littleEndian(b, at: 28, size: 4))
        userData = littleEndian(b, at: 32)
        addr3 = littleEndian(b, at: 48)
        attrTypeMask = littleEndian(b, at: 56)
    }

    /// The 64 bytes of this entry, as a program writes them (for tests).
    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.size)
        func put(_ v: UInt64, _ at: Int, _ size: Int) {
            for i in 0..<size { b[at + i] = UInt8(truncatingIfNeeded: v >> UInt64(8 * i)) }
        }
        b[0] = opcode; b[1] = flags
        put(UInt64(UInt32(bitPattern: fd)), 4, 4); put(off, 8, 8); put(addr, 16, 8); put(UInt64(len), 24, 4)
        put(UInt64(opFlags), 28, 4); put(userData, 32, 8); put(addr3, 48, 8); put(attrTypeMask, 56, 8)
        return b
    }
}

/// What one request does to the program's memory.
enum IOUringEffect: Equatable {
    case none
    /// The kernel writes these ranges for the request, until its last completion.
    case writes([AddressRange])
    /// IORING_OP_PROVIDE_BUFFERS: the kernel writes into these for later
    /// requests that select a buffer, at any time until they are removed.
    case provides([AddressRange])
    /// IORING_OP_MADVISE with an advice that zeroes or may zero pages.
    case zeroes([AddressRange])
    /// PageWatch cannot know what it writes.
    case unknowable(String)
}

/// What an io_uring_register call does to the program's memory.
enum IOUringRegistration: Equatable {
    /// Nothing beyond the call's own output (checked like any unknown call's).
    case none
    /// Registered buffers: the kernel holds their pages and writes them
    /// through its own mapping, with no fault ever, for as long as they stay
    /// registered: they must stay writable and be reported every sweep.
    case pins([AddressRange])
    case unknowable(String)
}

struct IOUringDecoder {
    /// Reads tracee memory (iovec arrays, msghdrs, futex vectors).
    let read: (RemoteAddress, Int) -> [UInt8]

    var outputs: SyscallOutputs { SyscallOutputs(read: read) }

    func block(_ address: UInt64, _ length: UInt64) -> [AddressRange] { outputs.block(address, length) }

    /// `count` iovecs at `iov`, read at once (registrations name up to 16384).
    func iovecs(_ iov: UInt64, _ count: UInt64) -> [AddressRange] {
        let n = Int(min(count, 1 << 14))
        guard iov != 0, n > 0 else { return [] }
        let raw = read(RemoteAddress(iov), n * 16)
        return stride(from: 0, to: raw.count - 15, by: 16).flatMap {
            block(littleEndian(raw, at: $0), littleEndian(raw, at: $0 + 8))
        }
    }

    static let opcodeNames: [UInt8: String] = [
        1: "READV", 4: "READ_FIXED", 10: "RECVMSG", 13: "ACCEPT", 21: "STATX", 22: "READ", 27: "RECV",
        31: "PROVIDE_BUFFERS", 43: "FGETXATTR", 44: "GETXATTR", 46: "URING_CMD", 58: "RECV_ZC", 60: "READV_FIXED",
        64: "URING_CMD128",
    ]

    /// Opcodes whose requests write no user memory of the program (they
    /// read it, or act on files, sockets, the rings, other requests).
    static let writesNothing: Set<UInt8> = [
        0, 2, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 23, 24, 26, 28, 29, 30, 32, 33, 34, 35, 36, 37,
        38, 39, 40, 41, 42, 45, 47, 48, 54, 55, 56, 57, 61, 63,
    ]

    func effect(of s: IOUringSQE) -> IOUringEffect {
        let selectsBuffer = s.flags & IOUringSQE.bufferSelect != 0
        let len = UInt64(s.len)
        switch s.opcode {
        case let op where [1, 4, 22, 60].contains(op) && s.attrTypeMask != 0:
            // Protection information: the kernel writes a buffer the attribute names.
            return .unknowable("an io_uring read with protection information (attr_type_mask)")
        case 1:  // READV: iovecs at addr, len of them; a selected buffer is a provided one (pinned)
            return selectsBuffer ? .none : .writes(iovecs(s.addr, len))
        case 22, 27:  // READ, RECV
            return selectsBuffer ? .none : .writes(block(s.addr, len))
        case 4, 60, 49:
            // READ_FIXED, READV_FIXED: into registered buffers, pinned at
            // registration. READ_MULTISHOT: into provided buffers, pinned.
            return .none
        case 10:  // RECVMSG: the msghdr's name, iovecs, control (and the header)
            return .writes(outputs.msghdr(s.addr))
        case 13:  // ACCEPT: addr, and addr2 the length word
            return .writes(outputs.sockaddr(s.addr, s.off))
        case 20:  // FILES_UPDATE: allocated indexes are written back into the fd array
            return UInt32(truncatingIfNeeded: s.off) == 0xffff_ffff ? .writes(block(s.addr, len * 4)) : .none
        case 21:  // STATX: the struct statx at addr2
            return .writes(block(s.off, HostArchitecture.layout.statx))
        case 25:  // MADVISE: addr, length in off (or len), advice
            let length = s.off != 0 ? s.off : len
            return [4, 8, 9, 24, 102].contains(s.opFlags) ? .zeroes(block(s.addr, length)) : .none
        case 31:  // PROVIDE_BUFFERS: fd buffers of len bytes each from addr
            let count = UInt64(UInt32(bitPattern: s.fd) & 0xffff)
            return .provides(block(s.addr, len &* count))
        case 43, 44:  // FGETXATTR, GETXATTR: the value at addr2
            return .writes(block(s.off, len))
        case 50:  // WAITID: the siginfo at addr2
            return .writes(block(s.off, HostArchitecture.layout.siginfo))
        case 51, 52:
            // FUTEX_WAIT, FUTEX_WAKE: a shared futex on a read-only page
            // fails to key (as for the futex syscall): its word is un-armed.
            return s.fd & 128 != 0 ? .none : .writes(block(s.addr, 8))  // FUTEX2_PRIVATE
        case 53:  // FUTEX_WAITV: len struct futex_waitv {val, uaddr, flags, reserved}
            let n = Int(min(len, 128))
            let raw = read(RemoteAddress(s.addr), n * 24)
            let words = stride(from: 0, to: raw.count - 23, by: 24).flatMap { at in
                littleEndian(raw, at: at + 16, size: 4) & 128 != 0 ? [] : block(littleEndian(raw, at: at + 8), 8)
            }
            return .writes(words)
        case 59:  // EPOLL_WAIT: len events at addr
            return .writes(block(s.addr, min(len, 1 << 20) * HostArchitecture.layout.epollEvent))
        case 62:  // PIPE: the two descriptors at addr
            return .writes(block(s.addr, 8))
        case let op where Self.writesNothing.contains(op):
            return .none
        default:
            let name = Self.opcodeNames[s.opcode].map { "IORING_OP_\($0)" } ?? "opcode \(s.opcode)"
            return .unknowable("an io_uring request (\(name)) whose writes PageWatch cannot know")
        }
    }

    /// io_uring_register(fd, opcode, arg, nr_args).
    func registration(opcode: UInt64, arg: UInt64, count: UInt64) -> IOUringRegistration {
        let op = opcode & 0x7fff_ffff  // IORING_REGISTER_USE_REGISTERED_RING
        func u32(_ a: UInt64) -> UInt64 {
            let b = read(RemoteAddress(a), 4)
            return b.count == 4 ? littleEndian(b, at: 0, size: 4) : 0
        }
        func u64(_ a: UInt64) -> UInt64 {
            let b = read(RemoteAddress(a), 8)
            return b.count == 8 ? littleEndian(b, at: 0) : 0
        }
        switch op {
        case 0:  // BUFFERS: nr_args iovecs at arg
            return .pins(iovecs(arg, count))
        case 15:  // BUFFERS2: struct io_uring_rsrc_register {nr, flags, resv2, data, tags}
            return u32(arg &+ 4) & 1 != 0 ? .none : .pins(iovecs(u64(arg &+ 16), u32(arg)))  // SPARSE: none yet
        case 16:  // BUFFERS_UPDATE: struct io_uring_rsrc_update2 {offset, resv, data, tags, nr}
            return .pins(iovecs(u64(arg &+ 8), u32(arg &+ 24)))
        case 22:
            return .unknowable(
                "io_uring provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel takes buffers the program adds without a syscall"
            )
        case 30:
            return .unknowable("io_uring buffers cloned from another ring (IORING_REGISTER_CLONE_BUFFERS)")
        case 32:
            return .unknowable("io_uring zero-copy receive area (IORING_REGISTER_ZCRX_IFQ)")
        case 33:
            return .unknowable("io_uring rings resized (IORING_REGISTER_RESIZE_RINGS)")
        case 34:
            return .unknowable("io_uring memory region (IORING_REGISTER_MEM_REGION)")
        case 1...31:
            return .none
        default:
            return .unknowable("io_uring_register opcode \(op), unknown to PageWatch")
        }
    }
}

/// The program's requests whose buffers the kernel may still write: those
/// un-armed at submission and not yet seen completed in the CQ ring. They
/// stay writable (and are reported again) until their last completion.
/// Keyed by ring and `user_data`; requests sharing a key leave together,
/// when as many last completions with it were seen (completion order is
/// not submission order). Requests that write nothing count too: programs
/// reuse a `user_data` (a freed request record) for a read while their
/// write with it is still in flight, and that write's completion must not
/// retire the read.
struct IOUringInFlight {
    struct Key: Hashable { var ring: Int32; var userData: UInt64 }
    private(set) var requests: [Key: (count: Int, buffers: [AddressRange])] = [:]

    var isEmpty: Bool { requests.isEmpty }

    func has(ring: Int32) -> Bool { requests.keys.contains { $0.ring == ring } }

    mutating func submitted(ring: Int32, userData: UInt64, buffers: [AddressRange]) {
        let key = Key(ring: ring, userData: userData)
        var entry = requests[key] ?? (0, [])
        entry.count += 1
        entry.buffers += buffers
        requests[key] = entry
    }

    /// A CQE; `more`: IORING_CQE_F_MORE, further completions follow.
    mutating func completed(ring: Int32, userData: UInt64, more: Bool) {
        let key = Key(ring: ring, userData: userData)
        guard !more, var entry = requests[key] else { return }
        entry.count -= 1
        requests[key] = entry.count > 0 ? entry : nil
    }

    mutating func forget(ring: Int32) { requests = requests.filter { $0.key.ring != ring } }

    /// Every page a request in flight may still be written.
    var pages: PageSet {
        var set = PageSet()
        for entry in requests.values { for b in entry.buffers { set.insert(b.pageAligned) } }
        return set
    }
}
