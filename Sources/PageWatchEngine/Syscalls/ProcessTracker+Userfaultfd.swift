import PageWatchAddressSpace
import PageWatchPtrace

/// The program's own userfaultfd. Its ioctls are recognised by their
/// command's type byte, 0xAA, which the kernel's ioctl registry gives
/// userfaultfd alone (so no descriptor is followed from `userfaultfd(2)` or
/// `/dev/userfaultfd` to its ioctls).
///
/// Two things matter to PageWatch:
/// - `UFFDIO_REGISTER` (missing or minor mode) makes a range where a read
///   of a page that is not there waits for the program's handler thread:
///   PageWatch's own reads must never go there (`UserfaultRanges`).
/// - `UFFDIO_COPY`, `ZEROPAGE`, `CONTINUE`, `POISON` and `MOVE` put pages
///   into the program's memory: the kernel writing on the program's behalf,
///   written by `[kernel] UFFDIO_COPY` (and so on). No store faults: a page
///   filled in an armed (read-only) range is installed read-only, and the
///   call succeeds. So a filled page is counted dirty at the call's entry
///   and stays armed: the program's own later store faults as usual, and no
///   `mprotect` per filled page splits the mapping (a program filling
///   thousands of pages would otherwise run into `vm.max_map_count`).
///   `UFFDIO_MOVE` wants the same protection at both ends: its source and
///   destination are un-armed, like a syscall's output buffers.
enum UserfaultfdIoctl {
    static let type: UInt64 = 0xAA

    static func isUserfaultfd(_ command: UInt64) -> Bool { (command >> 8) & 0xff == type }

    static let names: [UInt64: String] = [
        0x00: "UFFDIO_REGISTER", 0x01: "UFFDIO_UNREGISTER", 0x02: "UFFDIO_WAKE", 0x03: "UFFDIO_COPY",
        0x04: "UFFDIO_ZEROPAGE", 0x05: "UFFDIO_MOVE", 0x06: "UFFDIO_WRITEPROTECT", 0x07: "UFFDIO_CONTINUE",
        0x08: "UFFDIO_POISON", 0x3F: "UFFDIO_API",
    ]

    /// What the call does, decoded from its argument struct (`raw`, read
    /// at the entry: it lives in the caller's memory, not in a registered range).
    struct Decoded {
        var name: String
        /// Program memory the kernel writes with its ordinary copy-out (the
        /// struct's result field) or wants writable (`MOVE`'s ends): un-armed.
        var writes: [AddressRange] = []
        /// Pages the call fills: counted dirty, left armed.
        var fills: [AddressRange] = []
        /// `UFFDIO_REGISTER`: the range and mode.
        var registers: (range: AddressRange, mode: UInt64)?
        /// `UFFDIO_UNREGISTER`: the range, taken out once the call succeeds.
        var unregisters: AddressRange?
    }

    /// nil when the struct could not be read whole.
    static func decode(_ command: UInt64, argument: UInt64, raw: [UInt8]) -> Decoded? {
        let nr = command & 0xff, size = Int((command >> 16) & 0x3fff)
        guard raw.count == size else { return nil }
        func word(_ offset: Int) -> UInt64 { offset + 8 <= raw.count ? littleEndian(raw, at: offset) : 0 }
        func block(_ start: UInt64, _ length: UInt64) -> [AddressRange] {
            guard start != 0, length > 0, start &+ length > start else { return [] }
            return [AddressRange(start, start &+ length)]
        }
        /// The struct's own field the kernel writes its result to.
        func field(_ offset: Int) -> [AddressRange] { block(argument &+ UInt64(offset), 8) }
        var d = Decoded(name: names[nr] ?? "userfaultfd ioctl 0x\(String(nr, radix: 16))")
        switch nr {
        case 0x00:  // struct uffdio_register { range { start, len }, mode, ioctls }
            d.registers = (AddressRange(word(0), word(0) &+ word(8)), word(16))
            d.writes = field(24)
        case 0x01:  // struct uffdio_range (declared _IOR, but only read)
            d.unregisters = AddressRange(word(0), word(0) &+ word(8))
        case 0x02, 0x06:  // WAKE, WRITEPROTECT: no memory written
            break
        case 0x03:  // struct uffdio_copy { dst, src, len, mode, copy }
            d.fills = block(word(0), word(16))
            d.writes = field(32)
        case 0x05:  // struct uffdio_move { dst, src, len, mode, move }: the source pages leave too
            d.writes = block(word(0), word(16)) + block(word(8), word(16)) + field(32)
        case 0x04, 0x07, 0x08:  // ZEROPAGE, CONTINUE, POISON: { range, mode, result }
            d.fills = block(word(0), word(8))
            d.writes = field(24)
        case 0x3F:  // struct uffdio_api: features and ioctls written back
            d.writes = block(argument, UInt64(size))
        default:  // a newer command: what its encoding says it writes back
            d.writes = command >> 30 & 2 != 0 ? block(argument, UInt64(size)) : []
        }
        return d
    }
}

extension ProcessTracker {
    /// An ioctl on the program's userfaultfd, at its entry (launch mode's
    /// seccomp stop, attach mode's syscall-entry stop).
    func userfaultfdIoctlEntry(_ args: [UInt64], _ thread: TrackedThread) throws {
        let tid = thread.tid
        let command = args[1] & 0xffff_ffff, argument = args[2]
        let size = Int((command >> 16) & 0x3fff)
        let raw = (try? Ptrace.readMemory(tid, RemoteAddress(argument), count: size)) ?? []
        guard let call = UserfaultfdIoctl.decode(command, argument: argument, raw: raw) else {
            // Unreadable: the kernel cannot read it either and fails the call.
            try resume(thread)
            return
        }
        trace("  \(call.name) fills \(call.fills) writes \(call.writes)")
        if let (range, mode) = call.registers {
            if mode & Self.registerModeMissing != 0 { try returnPopulatedPages(in: range, thread) }
            try yieldWriteProtection(range)
            // Before the call runs: from its first instant no read of PageWatch may go there.
            UserfaultRanges.shared.register(range, mode: mode, pid: pid)
        }
        if !call.writes.isEmpty || !call.fills.isEmpty {
            let kernel = attribution.writer(call.name, tid: tid)
            for range in call.writes { try unarmForKernel(range, by: kernel, thread) }
            for range in call.fills { countFilled(range, by: kernel, tid: tid) }
            // The call may not have run before this thread stops again: a
            // sweep meanwhile leaves these pages dirty (reported again),
            // or a fill landing after it would go unseen.
            thread.syscall.callOutputs = PageSet((call.writes + call.fills).map(\.pageAligned))
        }
        try resume(thread, exit: call.unregisters.map { .userfaultfdUnregister($0) })
    }

    static let registerModeMissing: UInt64 = 1  // UFFDIO_REGISTER_MODE_MISSING

    /// Before the program registers `range` for missing-page faults: the
    /// pages PageWatch populated there (to give their mapping its anon_vma)
    /// are discarded again when they are still armed and hold only zeros,
    /// i.e. the program never wrote them. Present, they would never ask the
    /// program's handler, which would change what the program reads. Missing
    /// mode takes anonymous and shmem memory only, whose discarded pages read
    /// as the zeros they held. A page the program itself filled with zeros
    /// would be asked for again: the one case this cannot tell apart.
    func returnPopulatedPages(in range: AddressRange, _ thread: TrackedThread) throws {
        let pages = memory.takePopulated(in: range).filter { page in
            guard case .armed = memory.state(of: page),
                let bytes = try? Ptrace.readMemory(pid, page, count: Int(Page.size))
            else { return false }
            return bytes.allSatisfy { $0 == 0 }
        }
        try injector.discard(pages, thread)
    }

    /// The tracked pages of `range` are written by the kernel: dirty, armed or not.
    func countFilled(_ range: AddressRange, by writer: Writer, tid: Int32) {
        memory.markDirty(range.pageAligned)
        for piece in memory.trackedPieces(in: range) {
            var page = piece.range.start
            while page < piece.range.end {
                noteWrite(page, by: writer, fault: false, tid: tid)
                page = page + Page.size
            }
        }
    }

    /// `UFFDIO_UNREGISTER`'s exit: reads may go there again once it succeeded.
    func userfaultfdUnregisterExit(_ range: AddressRange, result: Int64, _ thread: TrackedThread) throws {
        if result == 0 { UserfaultRanges.shared.remove(range, pid: pid) }
        try resume(thread)
    }

    /// This process's registered ranges, write-protect mode included: never
    /// populated by PageWatch (a populated page would never ask the
    /// program's handler, and populating a page the program write-protected
    /// waits for that handler, which may be held at a stop).
    var userfaultRangesHere: PageSet {
        var set = PageSet(UserfaultRanges.shared.ranges(of: pid))
        for range in UserfaultRanges.shared.writeProtected(of: pid) { set.insert(range) }
        return set
    }

    /// The exit of one of the program's memory calls: a mapping that goes
    /// takes its registration with it; `mremap` may carry it to the new
    /// place (`UFFD_FEATURE_EVENT_REMAP`), so the new range counts as
    /// registered when the old one was.
    func userfaultfdMemoryExit(_ call: Syscall, _ a: [UInt64], result: Int64) {
        guard result >= 0 || result <= -4096 else { return }
        let missing = UserfaultRanges.shared.ranges(of: pid)
        let writeProtected = UserfaultRanges.shared.writeProtected(of: pid)
        guard !missing.isEmpty || !writeProtected.isEmpty else { return }
        func range(_ start: UInt64, _ length: UInt64) -> AddressRange {
            AddressRange(start: RemoteAddress(start), end: RemoteAddress(start) + length).pageAligned
        }
        switch call {
        case .munmap:
            UserfaultRanges.shared.remove(range(a[0], a[1]), pid: pid)
        case .mmap:
            UserfaultRanges.shared.remove(range(UInt64(bitPattern: result), a[1]), pid: pid)
        case .mremap:
            let old = range(a[0], a[1])
            var mode: UInt64 = 0
            if missing.contains(where: { $0.overlaps(old) }) { mode |= UserfaultRanges.modeMissing }
            if writeProtected.contains(where: { $0.overlaps(old) }) { mode |= UserfaultRanges.modeWriteProtect }
            guard mode != 0 else { return }
            UserfaultRanges.shared.register(range(UInt64(bitPattern: result), a[2]), mode: mode, pid: pid)
        default:
            break
        }
    }
}

extension ProcessTracker {
    /// The exit of a call whose outputs were named by memory PageWatch could
    /// not read at the entry without asking the program's handler. The
    /// kernel read that memory for the call (the handler supplied it), so
    /// it can be read now. An EFAULT (the kernel's copy hit an armed page)
    /// is undone: the outputs, decoded again, are un-armed and the call
    /// runs again, as for a call PageWatch cannot decode at all.
    func userfaultfdUndecodedExit(entry: Arch.Registers, attempt: Int, result: Int64, _ thread: TrackedThread) throws {
        let tid = thread.tid
        thread.syscall.unknownAttempt = 0
        let nr = Arch.syscallNumber(entry)
        guard result == -Int64(Errno.EFAULT.rawValue), attempt < 8, let call = Arch.syscall(number: nr) else {
            try resume(thread)
            return
        }
        let outputs = SyscallOutputs(read: { a, n in (try? Ptrace.readMemory(tid, a, count: n)) ?? [] })
        let ranges = outputs.ranges(call, Arch.syscallArguments(entry)) ?? []
        guard ranges.contains(where: { !memory.armedPieces(in: $0).isEmpty }) else {
            try resume(thread)
            return
        }
        let kernel = attribution.writer(call.rawValue, tid: tid)
        // Rewound before the injections, which keep it so: PageWatch dying
        // in between leaves the call to run again, not its EFAULT.
        try Arch.writeRegisters(Arch.rewindingSyscall(entry), tid: tid)
        for range in ranges { try unarmForKernel(range, by: kernel, thread) }
        thread.syscall.unknownAttempt = attempt + 1
        try resume(thread)
    }
}
