import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchPtrace

/// What a thread stopped at a syscall's entry still needs at its exit.
enum PendingSyscallExit {
    /// The program's own memory call. `rewrittenProtection`: the
    /// prot argument PageWatch removed write from, to put back at the exit.
    case memory(Syscall, [UInt64], rewrittenProtection: UInt64?)
    /// A call PageWatch cannot read (an unknown syscall that may copy out): at its
    /// exit an EFAULT with armed pages behind its pointer arguments is undone.
    case unknown(entry: HostArchitecture.Registers, attempt: Int)
    /// `rt_sigaction(SIGSEGV, act, …)`: `act` as read at the entry, the
    /// program's SIGSEGV action once the call succeeds.
    case segvAction([UInt8])
    /// io_uring_setup: its params struct, read back at the exit (the new ring).
    case ioUringSetup(params: UInt64)
    /// `UFFDIO_UNREGISTER` of the range: PageWatch may read there once it succeeded.
    case userfaultfdUnregister(AddressRange)
    /// A call whose outputs could not all be learned at the entry: a
    /// structure naming them (an iovec array, a msghdr) lies on a page the
    /// program's userfaultfd handler had not yet supplied.
    case userfaultfdUndecoded(entry: HostArchitecture.Registers, attempt: Int)
}

/// Launch mode's syscall interception: a seccomp filter stops the
/// program at the entry of every call that is not known to leave user memory
/// alone; each stop is handled here.
extension ProcessTracker {
    /// Traces everything but the calls known never to write user memory, and
    /// `futex` unless it is FUTEX_WAKE_OP (which writes *uaddr2).
    static func interceptionFilter() -> SeccompFilter {
        let allowed = Arch.syscallTable.numbers(of: .harmless)
        let scratch = AddressRange(
            start: RemoteAddress(Arch.scratchAddressHint),
            end: RemoteAddress(Arch.scratchAddressHint) + RemoteSyscall.scratchSize)
        return SeccompFilter(
            auditArch: Arch.auditArch, allowing: allowed,
            futex: Arch.number(.futex)!, futexWakeOp: 5, scratch: scratch)
    }

    /// A `PTRACE_EVENT_SECCOMP` stop (launch mode) or a syscall-entry stop
    /// (attach mode): the thread is at the entry of a call. `known`: the
    /// stop as `PTRACE_GET_SYSCALL_INFO` told it already.
    func handleSyscallEntry(_ thread: TrackedThread, _ known: SyscallStopInfo? = nil) throws {
        let tid = thread.tid
        thread.syscall.atEntry = true
        // The number and arguments, not the registers: most calls need no
        // more (`entryRegisters` reads them at the first need).
        let info = try known ?? Ptrace.syscallInfo(tid)
        let nr = info.number
        let args = info.arguments
        trace(
            "  syscall \(Arch.syscall(number: nr)?.rawValue ?? String(nr)) \(args.prefix(3).map { "0x" + String($0, radix: 16) })"
        )
        // No sweep here: anything PageWatch runs at a syscall entry abandons
        // the call, which is then rewound to stop here again; a sweep due at
        // every entry would never let it run. Interval sweeps take the
        // interrupted thread's stop instead.
        // Attach mode stops at every call: those known to leave user memory
        // alone go on at once (launch mode's filter never stops them).
        if Arch.row(number: nr)?.kind == .harmless { return try resume(thread) }
        if try ioUringEntry(nr, args, thread) { return }
        guard let call = Arch.syscall(number: nr) else {
            try resume(thread, exit: .unknown(entry: entryRegisters(thread), attempt: thread.syscall.unknownAttempt))
            return
        }
        if Self.readsSegvAction(call, args), try restoreSegvActionIfUnchecked(thread) {
            return try resume(thread)  // rewound: the call stops here again
        }
        if call.row.kind == .memory, memoryCallInFlight(besides: tid) {
            thread.waiting = .memoryCall  // one at a time (StopWaiting)
            return
        }
        switch call {
        case .mmap, .munmap, .brk, .shmat, .shmdt:
            try resume(thread, exit: .memory(call, args, rewrittenProtection: nil))
        case .mremap:
            // mremap fails with EFAULT when the old range spans several VMAs,
            // which arming part of it creates: make it uniform first.
            let old = AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + args[1]).pageAligned
            if !memory.isUniform(old) {
                for piece in memory.trackedPieces(in: old) {
                    try injector.protect(piece.range, piece.protection.armed, thread)
                    memory.markArmedKeepingDirty(piece.range)
                }
                try resume(thread)  // rewinds: the call runs again, now on one VMA
                return
            }
            try resume(thread, exit: .memory(call, args, rewrittenProtection: nil))
        case .mprotect, .pkey_mprotect:
            try mprotectEntry(call, args, regs: entryRegisters(thread), thread)
        case .madvise:
            if Self.madviseAsksHugePages(args[2]) {
                let start = RemoteAddress(args[0])
                protectHolesBeforeHugePages(AddressRange(start: start, end: max(start, start + args[1])))
            }
            // The contents of these pages become zero (or may) without a store.
            guard Self.madviseChangesContents(args[2]) else { return try resume(thread) }
            memory.markDirty(AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + args[1]))
            // Until its exit the call may not have run: a sweep in another
            // thread meanwhile would copy the old contents and clear the dirty
            // bits, and the zeroing after it be a change no fault reports (a
            // thread's malloc arena trimmed under load). Sweeps wait for the
            // exit, as for a memory call, and the exit marks the pages again.
            try resume(thread, exit: .memory(call, args, rewrittenProtection: nil))
        case .clone, .clone3:
            try cloneEntry(call, args, thread)
        case .set_tid_address:
            thread.exitWords.clearChildTid = args[0] == 0 ? nil : RemoteAddress(args[0])
            try resume(thread)
        case .exit:
            try threadExitEntry(thread)
        case .exit_group:
            // (A vfork child's ends the child only, not this process.)
            if !thread.vforkChild {
                groupExiting = true
                thread.endsTheGroup = true
            }
            try resume(thread)
        case .seccomp where args[0] <= 1, .prctl where args[0] == 22 && (args[1] == 1 || args[1] == 2):
            // seccomp(SECCOMP_SET_MODE_STRICT/FILTER, flags, prog) or
            // prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT/FILTER, prog).
            let strict = call == .seccomp ? args[0] == 0 : args[1] == 1
            if try ownSeccompFilterEntry(strict: strict, program: args[2], thread) { return }
            try resume(
                thread,
                exit: call == .prctl
                    ? .unknown(entry: entryRegisters(thread), attempt: thread.syscall.unknownAttempt) : nil)
        case .ioctl where UserfaultfdIoctl.isUserfaultfd(args[1]):
            try userfaultfdIoctlEntry(args, thread)
        case .rseq:
            // The kernel writes the rseq area on every return to user space.
            if args[2] & 1 == 0, args[0] != 0 {  // registration, not RSEQ_FLAG_UNREGISTER
                try injector.pin(
                    AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + max(args[1], 32))
                        .pageAligned, in: &memory, thread)
                thread.rseqKnown = true
            }
            try resume(thread)
        default:
            if call == .sigaltstack { noteAltStack(args[0], thread) }
            if call == .ptrace { session.noteOwnPtrace(args, tid: tid) }
            var newSegvAction: [UInt8]?
            if call == .rt_sigaction, args[1] != 0, (1...64).contains(args[0]) {
                let action =
                    (try? Ptrace.readMemory(tid, RemoteAddress(args[1]), count: Int(Arch.layout.kernelSigaction))) ?? []
                if action.count == Int(Arch.layout.kernelSigaction) {
                    noteFlags(of: action, signal: args[0])
                    if args[0] == UInt64(Signal.SIGSEGV) { newSegvAction = action }
                }
            }
            var refusedForUserfault = false
            let outputs = SyscallOutputs(read: { a, n in
                let bytes = (try? Ptrace.readMemory(tid, a, count: n)) ?? []
                if bytes.count < n, UserfaultRanges.shared.overlaps(a, count: n) { refusedForUserfault = true }
                return bytes
            })
            guard let ranges = outputs.ranges(call, args) else {
                try resume(
                    thread, exit: .unknown(entry: entryRegisters(thread), attempt: thread.syscall.unknownAttempt))
                return
            }
            if !ranges.isEmpty {
                // The writer's stack is unwound only when there is a page to
                // un-arm: most outputs land on pages already writable.
                if ranges.contains(where: { !memory.armedPieces(in: $0).isEmpty || !pagesInFlight(in: $0).isEmpty }) {
                    let kernel = attribution.writer(call.rawValue, tid: tid)
                    for range in ranges { try unarmForKernel(range, by: kernel, thread) }
                }
                // Until the thread stops again the call may not have run yet
                // (/proc shows it `running`): a sweep must not re-arm these.
                thread.syscall.callOutputs = PageSet(ranges.map(\.pageAligned))
            }
            // A new SIGSEGV action counts once the call succeeded; until then
            // faults wait (`memoryCallInFlight`): a reset is judged against it.
            let undecoded =
                refusedForUserfault
                ? PendingSyscallExit.userfaultfdUndecoded(
                    entry: try entryRegisters(thread), attempt: thread.syscall.unknownAttempt) : nil
            try resume(thread, exit: newSegvAction.map { .segvAction($0) } ?? undecoded)
        }
    }

    /// Calls that read the SIGSEGV action: `rt_sigaction(SIGSEGV)` (the old
    /// action), those that may copy it to a child (a clone without
    /// CLONE_SIGHAND, not told apart), an exec (SIG_IGN survives it).
    static func readsSegvAction(_ call: Syscall, _ args: [UInt64]) -> Bool {
        switch call {
        case .rt_sigaction: return args[0] == UInt64(Signal.SIGSEGV)
        case .fork, .vfork, .clone, .clone3, .execve, .execveat: return true
        default: return false
        }
    }

    /// madvise advice after which the pages read as zero (or may) without
    /// a store: DONTNEED, FREE, REMOVE, DONTNEED_LOCKED, GUARD_INSTALL.
    static func madviseChangesContents(_ advice: UInt64) -> Bool { [4, 8, 9, 24, 102].contains(advice) }
    /// `MADV_HUGEPAGE`, `MADV_COLLAPSE`.
    static func madviseAsksHugePages(_ advice: UInt64) -> Bool { advice == 14 || advice == 25 }

    /// The registers at the syscall entry `thread` is stopped at, read once.
    func entryRegisters(_ thread: TrackedThread) throws -> Arch.Registers {
        if let regs = thread.syscall.entryRegisters { return regs }
        let regs = try Arch.readRegisters(tid: thread.tid)
        thread.syscall.entryRegisters = regs
        return regs
    }

    /// Un-arms the armed pages the kernel is about to write for the program;
    /// they count as dirty.
    func unarmForKernel(_ range: AddressRange, by writer: Writer, _ thread: TrackedThread) throws {
        let tid = thread.tid
        try makeWritablePagesInFlight(in: range, thread)
        for piece in memory.armedPieces(in: range) {
            try injector.protect(piece.range, piece.protection, thread)
            var page = piece.range.start
            while page < piece.range.end {
                memory.markWritten(page)
                noteWrite(page, by: writer, fault: false, tid: tid)
                page = page + Page.size
            }
        }
    }

    /// mprotect(addr, len, prot) with write: PageWatch runs it without write
    /// (so tracked pages stay armed, no window for unseen writes) and fixes
    /// its model, and anything it should not have armed, at the exit.
    func mprotectEntry(_ call: Syscall, _ args: [UInt64], regs: Arch.Registers, _ thread: TrackedThread) throws {
        let tid = thread.tid
        let prot = Protection(rawValue: Int32(truncatingIfNeeded: args[2]))
        guard prot.contains(.write), armsNow else {
            try resume(thread, exit: .memory(call, args, rewrittenProtection: nil))
            return
        }
        let withoutWrite = UInt64(prot.armed.rawValue) | (args[2] & ~UInt64(7))
        let target = AddressRange(start: RemoteAddress(args[0]), end: RemoteAddress(args[0]) + args[1]).pageAligned
        if config.newMemoryArmedAtSweep, memory.trackedPieces(in: target).isEmpty {
            // Memory new to PageWatch (a runtime committing a reservation):
            // it waits for the next sweep, like a new mapping; the exit tracks it unarmed.
            try resume(thread, exit: .memory(call, args, rewrittenProtection: nil))
            return
        }
        publishForGuardian(extra: [(target, prot)])
        try Arch.writeRegisters(Arch.settingSyscallArgument(regs, 2, to: withoutWrite), tid: tid)
        // Registers changed on purpose; nothing to rewind.
        thread.syscall.entryRegisters = nil
        thread.syscall.atEntry = false
        try resume(thread, exit: .memory(call, args, rewrittenProtection: args[2]))
    }

    /// clone/clone3 entry: the tid words the kernel writes in this address
    /// space are un-armed first (counted dirty): CLONE_PARENT_SETTID's, and
    /// CLONE_CHILD_SETTID's, which the child writes in the shared memory (a
    /// thread) or in its copy of this page as it is now (a fork). The
    /// CLONE_CHILD_CLEARTID word is remembered for the new thread's exit
    /// (the words the kernel writes at a thread's exit, `threadExitEntry`).
    func cloneEntry(_ call: Syscall, _ args: [UInt64], _ thread: TrackedThread) throws {
        let tid = thread.tid
        var flags: UInt64 = 0, parentTid: UInt64 = 0, childTid: UInt64 = 0, stackTop: UInt64 = 0
        if call == .clone3 {
            // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, ...
            let raw = (try? Ptrace.readMemory(tid, RemoteAddress(args[0]), count: 56)) ?? []
            if raw.count == 56 {
                func word(_ i: Int) -> UInt64 { littleEndian(raw, at: i * 8) }
                flags = word(0)
                childTid = word(2)
                parentTid = word(3)
                stackTop = word(5) &+ word(6)
            }
        } else {
            // x86_64 clone(flags, stack, parent_tid, child_tid, tls)
            flags = args[0]
            stackTop = args[1]
            parentTid = args[2]
            childTid = args[3]
        }
        let cloneVM: UInt64 = 0x100, parentSetTid: UInt64 = 0x10_0000
        let childClearTid: UInt64 = 0x20_0000, childSetTid: UInt64 = 0x100_0000
        thread.exitWords.newThreadClearTid = flags & childClearTid != 0 && childTid != 0 ? RemoteAddress(childTid) : nil
        if flags & cloneVM != 0, stackTop != 0 { stackAnchors.append(RemoteAddress(stackTop &- 1)) }
        // The writer unwound once, before an injection gives the thread back rewound.
        var kernel: Writer?
        for (flag, word) in [(parentSetTid, parentTid), (childSetTid, childTid)] where flags & flag != 0 && word != 0 {
            let writer = kernel ?? attribution.writer(call.rawValue, tid: tid)
            kernel = writer
            try unarmForKernel(
                AddressRange(start: RemoteAddress(word), end: RemoteAddress(word) + 4), by: writer, thread)
        }
        try resume(thread)
    }

    /// The program installs a seccomp filter of its own. Filters
    /// stack and the strictest answer wins, so once this one is in place it
    /// judges every `mprotect` PageWatch injects. Run it now, on the calls
    /// PageWatch would make (`mprotect` from the gadget, every protection),
    /// while it is not yet installed. If it would kill, trap or fail any of
    /// them, PageWatch cannot go on without changing the program: it reports
    /// what it saw, gives every page the program's protection back and lets
    /// the process go (traced, untracked), with an `untracked` record.
    /// Returns true when it did.
    func ownSeccompFilterEntry(strict: Bool, program: UInt64, _ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        var verdict: String?
        if strict {
            verdict = "SECCOMP_MODE_STRICT"  // only read, write, exit and sigreturn
        } else {
            guard let header = try? Ptrace.readMemory(tid, RemoteAddress(program), count: 16), header.count == 16 else {
                return false  // the kernel will fail the call with EFAULT itself
            }
            let count = Int(littleEndian(header, at: 0, size: 2))
            let address = RemoteAddress(littleEndian(header, at: 8))
            guard let raw = try? Ptrace.readMemory(tid, address, count: count * 8), raw.count == count * 8 else {
                return false
            }
            let filter = SeccompFilter.decode(raw)
            let ip = (injector.remote?.gadget.value ?? 0) &+ Arch.scratchGadgetSyscallEnd
            for prot in UInt64(0)...7 {
                let data = SeccompData(
                    nr: Int32(Arch.syscalls.mprotect), arch: Arch.auditArch, instructionPointer: ip,
                    arguments: [memory.regions.first?.range.start.value ?? 0x10000, Page.size, prot, 0, 0, 0])
                let action = SeccompFilter.run(filter, on: data)
                if !SeccompFilter.lets(action) {
                    verdict = SeccompFilter.actionName(action)
                    break
                }
            }
            // The userfaultfd backend's set-up at a later image must not be
            // seen by it either (kept even if the install then fails: ptrace).
            if seccompForbidsUserfaultfd == nil {
                seccompForbidsUserfaultfd = Self.noticedCall(
                    in: [filter], gadget: injector.remote?.gadget ?? RemoteAddress(0), pid: pid, helper: true)
            }
        }
        guard let verdict else { return false }
        try stopTracking(
            because: "the program installed a seccomp filter that answers mprotect with \(verdict)", thread)
        try resume(thread)  // rewinds: the call runs again, and is let through
        return true
    }

    func noteAltStack(_ newStack: UInt64, _ thread: TrackedThread) {
        let tid = thread.tid
        guard newStack != 0 else { return }
        let raw = (try? Ptrace.readMemory(tid, RemoteAddress(newStack), count: Int(Arch.layout.stackT))) ?? []
        guard raw.count == Int(Arch.layout.stackT) else { return }
        thread.signals.altStack = Self.alternateStack(raw)
        thread.signals.altStackKnown = true
    }

    /// A syscall-exit stop the thread was sent to by `resume(_:exit:)`.
    func handleSyscallExit(_ thread: TrackedThread, _ pending: PendingSyscallExit) throws {
        let tid = thread.tid
        let regs = try Arch.readRegisters(tid: tid)
        let result = Arch.syscallResult(regs)
        switch pending {
        case .segvAction(let action):
            if result == 0 { signalActions.segv = action }
            try resume(thread)
        case .ioUringSetup(let params):
            ioUringSetupExit(params: params, result: result, tid: tid)
            try resume(thread)
        case .userfaultfdUnregister(let range):
            try userfaultfdUnregisterExit(range, result: result, thread)
        case let .userfaultfdUndecoded(entry, attempt):
            try userfaultfdUndecodedExit(entry: entry, attempt: attempt, result: result, thread)
        case let .memory(call, args, rewritten):
            trace("  exit of \(call): \(result)")
            if let rewritten {
                try Arch.writeRegisters(Arch.settingSyscallArgument(regs, 2, to: rewritten), tid: tid)
            }
            try memoryExit(call, args, result: result, rewritten: rewritten != nil, thread)
            publishForGuardian()
            // A due sweep waited for this exit (the model is true again): here.
            try sweepIfPending(in: thread)
            try resume(thread)
        case let .unknown(entry, attempt):
            thread.syscall.unknownAttempt = 0
            guard result == -Int64(Errno.EFAULT.rawValue), attempt < 8 else { try resume(thread); return }
            // Un-arm the armed pages behind every argument that points into
            // tracked memory, and run the call again (never an EFAULT the
            // program would not have had).
            // (Also pages another thread's slot is to un-arm, not yet done:
            // writable in the model, armed in fact.)
            var armed: [(RemoteAddress, Protection)] = []
            for a in Arch.syscallArguments(entry) {
                let page = Page.floor(RemoteAddress(a))
                for p in [page, page + Page.size] where !armed.contains(where: { $0.0 == p }) {
                    guard !pagesArmedInFact(in: AddressRange(start: p, end: p + Page.size)).isEmpty else { continue }
                    switch memory.state(of: p) {
                    case .armed(let protection), .writable(let protection): armed.append((p, protection))
                    case .untracked: break
                    }
                }
            }
            guard !armed.isEmpty else { try resume(thread); return }
            let nr = Arch.syscallNumber(entry)
            let kernel = attribution.writer(Arch.syscall(number: nr)?.rawValue ?? "syscall \(nr)", tid: tid)
            // Rewound before the injections, which keep it so: PageWatch dying
            // in between leaves the call to run again, not its EFAULT.
            try Arch.writeRegisters(Arch.rewindingSyscall(entry), tid: tid)
            for (p, protection) in armed {
                noteWrite(p, by: kernel, fault: false, tid: tid)
                try unarm(p, protection, thread)
            }
            thread.syscall.unknownAttempt = attempt + 1
            try resume(thread)
        }
    }

    func memoryExit(_ call: Syscall, _ a: [UInt64], result: Int64, rewritten: Bool, _ thread: TrackedThread) throws {
        let tid = thread.tid
        let failed = result < 0 && result > -4096
        userfaultfdMemoryExit(call, a, result: result)
        try writeProtectMemoryExit(call, a, result: result)
        func range(_ start: UInt64, _ length: UInt64) -> AddressRange {
            AddressRange(start: RemoteAddress(start), end: RemoteAddress(start) + length).pageAligned
        }
        switch call {
        case .munmap:
            if !failed {
                memory.forget(range(a[0], a[1]))
                presumption.forget(range(a[0], a[1]))
                attribution.unwinder?.unmapped(range(a[0], a[1]))
            }
        case .mmap:
            guard !failed else { return }
            let mapped = range(UInt64(bitPattern: result), a[1])
            noteIOUringMapping(a, at: UInt64(bitPattern: result), tid: tid)
            memory.forget(mapped)  // whatever was there is gone (MAP_FIXED)
            presumption.forget(mapped)
            try refreshMaps(in: mapped)
            if config.newMemoryArmedAtSweep {
                // Reported entirely by the next sweep, written or not: armed
                // now only so that its writers are known. Without attribution
                // it waits for that sweep (which populates and arms it), as
                // new heap pages do, and its first writes cost no fault.
                publishForGuardian()
            } else {
                // Private and not MAP_GROWSDOWN: populated before it is armed (shared ones need no anon_vma).
                try armNow(mapped, populating: a[3] & 0x3 == 0x2 && a[3] & 0x100 == 0, thread)
            }
        case .mremap:
            guard !failed else { return }
            let old = range(a[0], a[1]), new = range(UInt64(bitPattern: result), a[2])
            let before = memory.trackedPieces(in: old).first
            let wasArmed = !memory.armedPieces(in: old).isEmpty
            memory.forget(old)
            presumption.forget(old)
            presumption.forget(new)
            if let before {
                // The moved pages keep the VMA's protection: armed if the old were
                // (entry made the old range uniform).
                memory.insert(new, protection: before.protection, armed: wasArmed, dirty: true)
                try armNow(new, thread)
            } else {
                memory.forget(new)
                try refreshMaps()
                try armNow(new, thread)
            }
        case .brk:
            // New heap pages are tracked (dirty) from here and armed at the next sweep.
            try brkExit(result: result)
        case .shmat, .shmdt:
            if call == .shmat, !failed { memory.forget(range(UInt64(bitPattern: result), Page.size)) }
            try refreshMaps()
        case .madvise:
            memory.markDirty(range(a[0], a[1]))
        case .mprotect, .pkey_mprotect:
            try mprotectExit(
                range(a[0], a[1]), Protection(rawValue: Int32(truncatingIfNeeded: a[2]) & 7), ranArmed: rewritten,
                failed: failed, thread)
        default:
            break
        }
    }

    /// `ranArmed`: PageWatch ran the call without write (`mprotectEntry`).
    func mprotectExit(_ target: AddressRange, _ prot: Protection, ranArmed: Bool, failed: Bool, _ thread: TrackedThread)
        throws
    {
        let tid = thread.tid
        if failed {
            // Nothing (or, on ENOMEM midway, part) changed: take maps as truth.
            try refreshMaps()
            return
        }
        guard prot.contains(.write) else {
            // The program made these pages read-only (or inaccessible) itself:
            // nothing is armed there and its own SIGSEGVs are its own.
            memory.setProtection(target, prot, armAll: false)
            return
        }
        let tracked = memory.trackedPieces(in: target).map(\.range)
        memory.setProtection(target, prot, armAll: ranArmed)
        var untracked = PageSet([target])
        for t in tracked { untracked.remove(t) }
        guard !untracked.isEmpty else { return }
        // Pages that became writable and were not tracked: PageWatch ran the
        // call without write; track what the selection takes, give back the rest.
        let maps = try entries(overlapping: target, tid: tid)
        for piece in untracked.ranges {
            for m in maps where m.range.overlaps(piece) {
                let part = m.range.intersection(piece)!
                let selected = PageSet(trackingSelection.selectedPart(of: m, protection: prot, isThreadStack: false))
                    .intersection(part)
                for s in selected.ranges {
                    memory.insert(s, protection: prot, armed: ranArmed, dirty: true)
                    // Armed before the program could write it: its first page
                    // is populated through a brief un-arming (it is dirty).
                    if ranArmed, m.isPrivate, memory.settle(s), userfaultRangesHere.intersection(s).isEmpty,
                        memory.pinned.intersection(s).isEmpty
                    {
                        let outcome = try injector.populateArmed(s, prot, thread)
                        if outcome.populated { memory.notePopulated([s.start]) }
                        if !outcome.armed {
                            memory.insert(s, protection: prot, armed: false, dirty: true)
                            _ = memory.settle(s)
                        }
                    }
                }
                // (Run as asked, the call gave them the program's protection already.)
                guard ranArmed else { continue }
                var rest = PageSet([part])
                for s in selected.ranges { rest.remove(s) }
                for r in rest.ranges { try injector.protect(r, prot, thread) }
            }
        }
        for p in memory.pinned.intersection(target).ranges where ranArmed {
            // Pinned pages must stay writable.
            if let piece = memory.trackedPieces(in: p).first {
                try injector.protect(piece.range, piece.protection, thread)
            }
        }
    }

    /// "New mappings in the selection are armed at once": arm the dirty,
    /// unarmed tracked pages of `range`, keeping them dirty for the next sweep.
    /// `populating`: a new private mapping, given its anon_vma first
    /// (`ProcessInjector.populate`); a moved one keeps its own.
    func armNow(_ range: AddressRange, populating: Bool = false, _ thread: TrackedThread) throws {
        publishForGuardian()
        guard armsNow else { return }  // dirty, armed by the first sweep
        if populating, let page = memory.pageToPopulate(in: range, excluded: userfaultRangesHere) {
            memory.notePopulated(try injector.populate([page], thread))
        }
        for piece in memory.trackedPieces(in: range) {
            var rest = PageSet([piece.range])
            for p in memory.pinned.intersection(piece.range).ranges { rest.remove(p) }
            for r in rest.ranges {
                try injector.protect(r, piece.protection.armed, thread)
                memory.markArmedKeepingDirty(r)
            }
        }
    }
}
