import PageWatchAddressSpace
import PageWatchPtrace

/// What a thread stopped at a syscall's entry still needs at its exit.
enum PendingSyscallExit {
    /// The program's own memory call (hazard 5). `rewrittenProtection`: the
    /// prot argument PageWatch removed write from, to put back at the exit.
    case memory(Syscall, [UInt64], rewrittenProtection: UInt64?)
    /// A call PageWatch cannot read (hazard 1's "any other syscall"): at its
    /// exit an EFAULT with armed pages behind its pointer arguments is undone.
    case unknown(entry: HostArchitecture.Registers, attempt: Int)
}

/// Launch mode's syscall interception (issue 3): a seccomp filter stops the
/// program at the entry of every call that is not known to leave user memory
/// alone; each stop is handled here.
extension ProcessTracker {
    /// Traces everything but the calls known never to write user memory, and
    /// `futex` unless it is FUTEX_WAKE_OP (which writes *uaddr2).
    static func interceptionFilter() -> SeccompFilter {
        let allowed = Syscall.neverWritesUserMemory.compactMap { Arch.syscallNumbers[$0] }
        return SeccompFilter(auditArch: Arch.auditArch, allowing: allowed,
                             futex: Arch.number(.futex)!, futexWakeOp: 5)
    }

    /// A `PTRACE_EVENT_SECCOMP` stop: the thread is at the entry of a call.
    func handleSyscallEntry(tid: Int32) throws {
        let regs = try Arch.readRegisters(tid: tid)
        threads[tid]?.entryRegisters = regs
        let nr = Arch.syscallNumber(regs)
        let args = Arch.syscallArguments(regs)
        trace("  syscall \(Arch.syscall(number: nr)?.rawValue ?? String(nr)) \(args.prefix(3).map { "0x" + String($0, radix: 16) })")
        // No sweep here: anything PageWatch runs at a syscall entry abandons
        // the call, which is then rewound to stop here again; a sweep due at
        // every entry would never let it run. Interval sweeps take the
        // interrupted thread's stop instead.
        guard let call = Arch.syscall(number: nr) else {
            try resume(tid, exit: .unknown(entry: regs, attempt: threads[tid]?.unknownAttempt ?? 0))
            return
        }
        switch call {
        case .mmap, .munmap, .brk, .shmat, .shmdt:
            try resume(tid, exit: .memory(call, args, rewrittenProtection: nil))
        case .mremap:
            // mremap fails with EFAULT when the old range spans several VMAs,
            // which arming part of it creates: make it uniform first.
            let old = AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + args[1]).pageAligned
            if !memory.isUniform(old) {
                for piece in memory.trackedPieces(in: old) {
                    try protect(piece.range, piece.protection.armed, tid: tid)
                    memory.markArmedKeepingDirty(piece.range)
                }
                try resume(tid)  // rewinds: the call runs again, now on one VMA
                return
            }
            try resume(tid, exit: .memory(call, args, rewrittenProtection: nil))
        case .mprotect, .pkey_mprotect:
            try mprotectEntry(call, args, regs: regs, tid: tid)
        case .madvise:
            // The contents of these pages become zero (or may) without a store.
            if [4, 8, 9, 24, 102].contains(args[2]) {  // DONTNEED, FREE, REMOVE, DONTNEED_LOCKED, GUARD_INSTALL
                memory.markDirty(AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + args[1]))
            }
            try resume(tid)
        case .clone, .clone3:
            try cloneEntry(call, args, tid: tid)
        case .rseq:
            // Hazard 3: the kernel writes the area on every return to user space.
            if args[2] & 1 == 0, args[0] != 0 {  // registration, not RSEQ_FLAG_UNREGISTER
                try pin(AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + max(args[1], 32)).pageAligned, tid: tid)
                threads[tid]?.rseqKnown = true
            }
            try resume(tid)
        default:
            if call == .sigaltstack { noteAltStack(args[0], tid: tid) }
            if call == .rt_sigaction { noteSigaction(signal: args[0], action: args[1]) }
            let outputs = SyscallOutputs(read: { a, n in (try? Ptrace.readMemory(tid, a, count: n)) ?? [] })
            guard let ranges = outputs.ranges(call, args) else {
                try resume(tid, exit: .unknown(entry: regs, attempt: threads[tid]?.unknownAttempt ?? 0))
                return
            }
            for range in ranges { try unarmForKernel(range, tid: tid) }
            try resume(tid)
        }
    }

    /// Un-arms the armed pages the kernel is about to write for the program;
    /// they count as dirty (hazard 1).
    func unarmForKernel(_ range: AddressRange, tid: Int32) throws {
        for piece in memory.armedPieces(in: range) {
            try protect(piece.range, piece.protection, tid: tid)
            var page = piece.range.start
            while page < piece.range.end { memory.markWritten(page); page = page + Page.size }
        }
    }

    /// mprotect(addr, len, prot) with write: PageWatch runs it without write
    /// (so tracked pages stay armed, no window for unseen writes) and fixes
    /// its model, and anything it should not have armed, at the exit.
    func mprotectEntry(_ call: Syscall, _ args: [UInt64], regs: Arch.Registers, tid: Int32) throws {
        let prot = Protection(rawValue: Int32(truncatingIfNeeded: args[2]))
        guard prot.contains(.write) else {
            try resume(tid, exit: .memory(call, args, rewrittenProtection: nil))
            return
        }
        let withoutWrite = UInt64(prot.armed.rawValue) | (args[2] & ~UInt64(7))
        try Arch.writeRegisters(Arch.settingSyscallArgument(regs, 2, to: withoutWrite), tid: tid)
        threads[tid]?.entryRegisters = nil  // registers changed on purpose; nothing to rewind
        try resume(tid, exit: .memory(call, args, rewrittenProtection: args[2]))
    }

    /// clone/clone3 entry: before the kernel writes the new thread's tid
    /// (CLONE_PARENT_SETTID) or clears it at its exit (CLONE_CHILD_CLEARTID,
    /// hazard 4), pin the thread control block those words live in.
    func cloneEntry(_ call: Syscall, _ args: [UInt64], tid: Int32) throws {
        var flags: UInt64 = 0, tidWords: [UInt64] = [], stackTop: UInt64 = 0
        if call == .clone3 {
            let raw = (try? Ptrace.readMemory(tid, RemoteAddress(args[0]), count: 56)) ?? []
            if raw.count == 56 {
                func word(_ i: Int) -> UInt64 { littleEndian(raw, at: i * 8) }
                flags = word(0)
                tidWords = [word(2), word(3)]
                stackTop = word(5) &+ word(6)
            }
        } else {
            flags = args[0]
            tidWords = [args[2], args[3]]
            stackTop = args[1]
        }
        let cloneVM: UInt64 = 0x100
        if flags & cloneVM != 0 {
            if stackTop != 0 { stackAnchors.append(RemoteAddress(stackTop &- 1)) }
            for w in tidWords where w != 0 {
                // glibc's struct pthread spans the tid word's page and the next.
                let start = Page.floor(RemoteAddress(w))
                try pin(AddressRange(start: start, end: start + 2 * Page.size), tid: tid)
            }
        } else {
            // fork-like: only the parent's tid word is written in this address space.
            if tidWords.count > 1, tidWords[1] != 0 { try unarmForKernel(AddressRange(start: RemoteAddress(tidWords[1]), end: RemoteAddress(tidWords[1]) + 4), tid: tid) }
        }
        try resume(tid)
    }

    func noteAltStack(_ newStack: UInt64, tid: Int32) {
        guard newStack != 0 else { return }
        let raw = (try? Ptrace.readMemory(tid, RemoteAddress(newStack), count: 24)) ?? []
        guard raw.count == 24 else { return }
        func word(_ o: Int) -> UInt64 { littleEndian(raw, at: o) }
        let sp = word(0), flags = word(8) & 0xffff_ffff, size = word(16)
        let disable: UInt64 = 2
        threads[tid]?.altStack = flags & disable != 0 || size == 0 ? nil
            : AddressRange(start: RemoteAddress(sp), end: RemoteAddress(sp) + size)
    }

    /// Remembers which handlers run on the alternate stack (SA_ONSTACK).
    func noteSigaction(signal: UInt64, action: UInt64) {
        guard action != 0, (1...64).contains(signal) else { return }
        let raw = (try? Ptrace.readMemory(liveThread(), RemoteAddress(action + 8), count: 8)) ?? []
        guard raw.count == 8 else { return }
        let flags = littleEndian(raw, at: 0)
        let onStack: UInt64 = 0x0800_0000, bit = UInt64(1) << (signal - 1)
        if flags & onStack != 0 { onStackSignals |= bit } else { onStackSignals &= ~bit }
    }

    /// A syscall-exit stop the thread was sent to by `resume(_:exit:)`.
    func handleSyscallExit(tid: Int32, _ pending: PendingSyscallExit) throws {
        let regs = try Arch.readRegisters(tid: tid)
        let result = Arch.syscallResult(regs)
        switch pending {
        case let .memory(call, args, rewritten):
            if let rewritten {
                try Arch.writeRegisters(Arch.settingSyscallArgument(regs, 2, to: rewritten), tid: tid)
            }
            try memoryExit(call, args, result: result, tid: tid)
            try resume(tid)
        case let .unknown(entry, attempt):
            threads[tid]?.unknownAttempt = 0
            guard result == -Int64(Errno.EFAULT.rawValue), attempt < 8 else { try resume(tid); return }
            // Un-arm the armed pages behind every argument that points into
            // tracked memory, and run the call again (never an EFAULT the
            // program would not have had).
            var changed = false
            for a in Arch.syscallArguments(entry) {
                let page = Page.floor(RemoteAddress(a))
                for p in [page, page + Page.size] {
                    if case .armed(let protection) = memory.state(of: p) {
                        try unarm(p, protection, tid: tid)
                        changed = true
                    }
                }
            }
            guard changed else { try resume(tid); return }
            threads[tid]?.unknownAttempt = attempt + 1
            try Arch.writeRegisters(Arch.rewindingSyscall(entry), tid: tid)
            try resume(tid)
        }
    }

    func memoryExit(_ call: Syscall, _ a: [UInt64], result: Int64, tid: Int32) throws {
        let failed = result < 0 && result > -4096
        func range(_ start: UInt64, _ length: UInt64) -> AddressRange {
            AddressRange(start: RemoteAddress(start), end: RemoteAddress(start) + length).pageAligned
        }
        switch call {
        case .munmap:
            if !failed { memory.forget(range(a[0], a[1])) }
        case .mmap:
            guard !failed else { return }
            let mapped = range(UInt64(bitPattern: result), a[1])
            memory.forget(mapped)  // whatever was there is gone (MAP_FIXED)
            try refreshMaps()
            try armNow(mapped, tid: tid)
        case .mremap:
            guard !failed else { return }
            let old = range(a[0], a[1]), new = range(UInt64(bitPattern: result), a[2])
            let before = memory.trackedPieces(in: old).first
            let wasArmed = !memory.armedPieces(in: old).isEmpty
            memory.forget(old)
            if let before {
                // The moved pages keep the VMA's protection: armed if the old were
                // (entry made the old range uniform).
                memory.insert(new, protection: before.protection, armed: wasArmed, dirty: true)
                try armNow(new, tid: tid)
            } else {
                memory.forget(new)
                try refreshMaps()
                try armNow(new, tid: tid)
            }
        case .brk, .shmat, .shmdt:
            if call == .shmat, !failed { memory.forget(range(UInt64(bitPattern: result), Page.size)) }
            // New heap pages are tracked (dirty) from here and armed at the next sweep.
            try refreshMaps()
        case .mprotect, .pkey_mprotect:
            try mprotectExit(range(a[0], a[1]), Protection(rawValue: Int32(truncatingIfNeeded: a[2]) & 7),
                             failed: failed, tid: tid)
        default:
            break
        }
    }

    func mprotectExit(_ target: AddressRange, _ prot: Protection, failed: Bool, tid: Int32) throws {
        if failed {
            // Nothing (or, on ENOMEM midway, part) changed: take maps as truth.
            try refreshMaps()
            return
        }
        guard prot.contains(.write) else {
            // The program made these pages read-only (or inaccessible) itself:
            // nothing is armed there and its own SIGSEGVs are its own (hazard 10).
            memory.setProtection(target, prot, armAll: false)
            return
        }
        let tracked = memory.trackedPieces(in: target).map(\.range)
        memory.setProtection(target, prot, armAll: true)
        var untracked = PageSet([target])
        for t in tracked { untracked.remove(t) }
        guard !untracked.isEmpty else { return }
        // Pages that became writable and were not tracked: PageWatch ran the
        // call without write; track what the selection takes, give back the rest.
        let maps = try ProcFS.maps(of: tid)
        for piece in untracked.ranges {
            for m in maps where m.range.overlaps(piece) {
                let part = m.range.intersection(piece)!
                let selected = PageSet(config.selection.selectedPart(of: m, protection: prot, isThreadStack: false)).intersection(part)
                for s in selected.ranges { memory.insert(s, protection: prot, armed: true, dirty: true) }
                var rest = PageSet([part])
                for s in selected.ranges { rest.remove(s) }
                for r in rest.ranges { try protect(r, prot, tid: tid) }
            }
        }
        for p in memory.pinned.intersection(target).ranges {
            // Pinned pages must stay writable.
            if let piece = memory.trackedPieces(in: p).first { try protect(piece.range, piece.protection, tid: tid) }
        }
    }

    /// "New mappings in the selection are armed at once": arm the dirty,
    /// unarmed tracked pages of `range`, keeping them dirty for the next sweep.
    func armNow(_ range: AddressRange, tid: Int32) throws {
        for piece in memory.trackedPieces(in: range) {
            var rest = PageSet([piece.range])
            for p in memory.pinned.intersection(piece.range).ranges { rest.remove(p) }
            for r in rest.ranges {
                try protect(r, piece.protection.armed, tid: tid)
                memory.markArmedKeepingDirty(r)
            }
        }
    }
}
