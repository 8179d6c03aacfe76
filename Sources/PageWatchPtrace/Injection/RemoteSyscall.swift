import Glibc
internal import CPtrace
import PageWatchAddressSpace

/// A syscall run inside a stopped tracee thread through a gadget placed once
/// in a scratch page (CRIU compel's approach): the call, then a stop
/// (`X86_64.scratchGadget`). Before the scratch page exists, and to remove
/// it, the call runs from a `syscall` instruction already in the process,
/// single-stepped: program text is never patched, since the program's other
/// threads may be running it (attach). Every run saves all registers and
/// restores them on every exit path, errors included.
/// Where an injection says which thread runs PageWatch's code and the
/// registers it had, while it does (the guardian's journal, attach mode).
public protocol InjectionJournal: AnyObject, Sendable {
    func injectionStarted(tid: Int32, saved: [UInt64])
    func injectionEnded()
}

public struct RemoteSyscall: Sendable {
    public typealias Arch = HostArchitecture

    /// Where the gadget is in the tracee.
    public let gadget: RemoteAddress
    /// `gadget` is a bare `syscall` instruction of the program's, run by
    /// single-stepping it (`bootstrap`, `unmapScratch`).
    let stepping: Bool
    /// Where the saved registers of a thread inside an injection are
    /// published for the guardian (attach mode), if anywhere.
    public var journal: (any InjectionJournal)?
    /// The registers each run gives the thread back, when they are not the
    /// ones it has: at a syscall entry, the call abandoned and the thread
    /// rewound (`Architecture.abandoningSyscall` of the entry's registers),
    /// so that the thread never holds, nor the journal names, a state in
    /// which the skipped call would return its -ENOSYS. Nil: its own.
    public var restoring: Arch.Registers?

    public init(gadget: RemoteAddress, journal: (any InjectionJournal)? = nil) {
        self.gadget = gadget
        self.stepping = false
        self.journal = journal
    }

    init(stepping instruction: RemoteAddress) {
        gadget = instruction
        stepping = true
    }

    /// What came back from one injection.
    public struct Outcome {
        /// The raw return value: >= 0, or -errno.
        public var value: Int64
        /// Signals that arrived for the thread while the injected call ran;
        /// the caller delivers them once the thread is restored.
        public var heldSignals: [HeldSignal]
        /// A PTRACE_INTERRUPT stop of the thread was passed on the way.
        public var consumedInterrupt = false
    }

    /// Runs `number(arguments)` in `tid`, which must be in a ptrace-stop from
    /// which it can run user code (not an exit stop, not a group-stop). On
    /// return the thread is stopped again with its registers exactly as before.
    ///
    /// At an event stop inside a syscall (clone, fork, exec) the kernel has
    /// not yet stored that call's return value: running the gadget completes
    /// the call, and the value it would have returned must be passed as
    /// `completing` so the restored registers carry it.
    public func run(_ number: Int64, _ arguments: [UInt64], in tid: Int32, completing: Int64? = nil) throws -> Outcome {
        let stop = gadget + (stepping ? UInt64(Arch.syscallInstruction.count) : Arch.scratchGadgetStopOffset)
        return try execute(in: tid, completing: completing, stopAt: stop) { saved in
            Arch.preparingSyscall(saved, number: number, arguments: arguments, gadget: gadget)
        }
    }

    /// Runs injected code in `tid` from the registers `prepare` makes of its
    /// saved ones, until it stops itself at `stop` (SIGSTOP; the single-step
    /// SIGTRAP past a stepped `syscall`); restores the saved registers on
    /// every path.
    func execute(
        in tid: Int32, completing: Int64?, stopAt stop: RemoteAddress,
        prepare: (Arch.Registers) -> Arch.Registers
    ) throws -> Outcome {
        var saved = try restoring ?? Arch.readRegisters(tid: tid)
        if let completing { saved = Arch.settingSyscallResult(saved, completing) }
        let prepared = prepare(saved)
        var restored = false
        defer {
            // Scoped restore: whatever happened, put the thread back as it was.
            if !restored { try? Arch.writeRegisters(saved, tid: tid) }
            journal?.injectionEnded()
        }
        journal?.injectionStarted(tid: tid, saved: Arch.words(of: saved))
        try Arch.writeRegisters(prepared, tid: tid)
        let resume: (Int32) throws -> Void = stepping ? { try Ptrace.singleStep($0) } : { try Ptrace.cont($0) }
        try resume(tid)
        // Stepping from a stop inside a syscall (entry, clone/exec event), the
        // kernel first finishes that call and reports the step there, before
        // the instruction ran (and has stored that call's result in rax).
        var earlyTraps = 0
        var held: [HeldSignal] = []
        var consumedInterrupt = false
        // Once a signal was held, the rest wait (blocked) until the call is
        // done: a timer faster than one hold-and-continue cycle would
        // otherwise keep the gadget from ever running.
        var savedMask: UInt64?
        defer { if let savedMask { try? Ptrace.setSignalMask(tid, savedMask) } }
        while true {
            // The process may be killed meanwhile (by a signal, by
            // `exit_group` in another thread), the injected thread with no
            // exit stop: the wait gives up once it is dead.
            let event = try Wait.nextUnlessDead(tid)
            switch event {
            case .signalDelivery(_, let sig):
                if sig == (stepping ? Signal.SIGTRAP : Signal.SIGSTOP) {
                    let regs = try Arch.readRegisters(tid: tid)
                    if Arch.instructionPointer(regs) == stop {
                        try Arch.writeRegisters(saved, tid: tid)
                        restored = true
                        let value = stepping ? Arch.syscallResult(regs) : Arch.scratchGadgetResult(regs)
                        return Outcome(value: value, heldSignals: held, consumedInterrupt: consumedInterrupt)
                    }
                    if stepping && Arch.instructionPointer(regs) == gadget && earlyTraps < 2 {
                        earlyTraps += 1
                        try Arch.writeRegisters(prepared, tid: tid)
                        try resume(tid)
                        continue
                    }
                }
                // A signal for the program arrived first: keep it for later.
                let h = try Ptrace.holdSignal(tid)
                // Unless the injected code itself faults (the gadget gone, or
                // registers that were not the thread's): it would fault again
                // at every resume. Give up, with the thread put back.
                // (A fault the program took just before PageWatch stopped it
                // arrives here once, at the gadget's first instruction: held.)
                let synchronous = [Signal.SIGSEGV, Signal.SIGBUS, Signal.SIGILL, Signal.SIGTRAP].contains(sig)
                if synchronous
                    && (Page.floor(h.faultAddress) == Page.floor(gadget)
                        || held.filter({ $0.signal == sig && $0.faultAddress == h.faultAddress }).count >= 2)
                {
                    throw TraceError.remoteSyscall(
                        "injected call (\(Signal.name(sig)) at \(h.faultAddress.hex))", .EFAULT,
                        tid: tid, address: gadget)
                }
                if getenv("PAGEWATCH_DEBUG") != nil {
                    let regs = try Arch.readRegisters(tid: tid)
                    let info = try Ptrace.signalInfo(tid)
                    let line = Array(
                        "pagewatch[debug]   held \(Signal.name(sig)) code \(info.code) addr \(info.faultAddress) at \(Arch.instructionPointer(regs)) sp \(Arch.stackPointer(regs))\n"
                            .utf8)
                    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                }
                held.append(h)
                if savedMask == nil {
                    savedMask = try Ptrace.signalMask(tid)
                    try Ptrace.setSignalMask(tid, Self.blockedDuringInjection)
                }
                try resume(tid)
            case .interruptStop:
                consumedInterrupt = true
                try resume(tid)
            case .syscallStop, .unknown:
                try resume(tid)
            case .groupStop:
                // Another thread started a group-stop; finish the injection first.
                try resume(tid)
            case .event(_, .exit):
                // SIGKILL while injecting: let it die.
                restored = true
                try? resume(tid)
                throw TraceError.traceeGone(tid: tid)
            case .event:
                try resume(tid)
            case .exited, .killed:
                restored = true
                throw TraceError.traceeGone(tid: tid)
            }
        }
    }

    /// Every signal but the synchronous ones: the kernel resets the handler
    /// of a blocked signal it must force (the gadget's SIGTRAP, a fault) to
    /// the default, which would change the program.
    static let blockedDuringInjection: UInt64 = [
        Signal.SIGTRAP, Signal.SIGSEGV, Signal.SIGBUS, Signal.SIGILL, Signal.SIGFPE,
    ]
    .reduce(~UInt64(0)) { $0 & ~(UInt64(1) << UInt64($1 - 1)) }

    /// Runs `mprotect` on every range in one injection (a sweep's
    /// re-arming), through `batch`. Returns the results in order (0 or -errno).
    public func mprotectBatch(
        _ changes: [(range: AddressRange, protection: Protection)], in tid: Int32,
        completing: Int64? = nil
    ) throws -> (results: [Int64], outcome: Outcome) {
        try batch(
            changes.map { c in
                BatchCall(
                    number: Arch.syscalls.mprotect, c.range.start.value, c.range.length, UInt64(c.protection.rawValue))
            }, in: tid, completing: completing)
    }

    /// One call of a batch: its number and three arguments.
    public struct BatchCall: Sendable {
        public var number: Int64
        public var arguments: (UInt64, UInt64, UInt64)
        public init(number: Int64, _ a: UInt64, _ b: UInt64, _ c: UInt64) {
            self.number = number
            arguments = (a, b, c)
        }
    }

    /// Runs every call in one injection: the scratch code page's batch loop
    /// walks an array of (three arguments, call number) in the third scratch
    /// page and stores each call's result over its number. Returns the
    /// results in order (-errno on failure; the call's number when the batch
    /// never reached it).
    public func batch(_ calls: [BatchCall], in tid: Int32, completing: Int64? = nil) throws -> (
        results: [Int64], outcome: Outcome
    ) {
        var results: [Int64] = []
        var outcome = Outcome(value: 0, heldSignals: [])
        let array = argumentArea
        for start in stride(from: 0, to: calls.count, by: Self.batchCapacity) {
            let chunk = calls[start..<min(calls.count, start + Self.batchCapacity)]
            var words: [UInt64] = []
            for c in chunk { words += [c.arguments.0, c.arguments.1, c.arguments.2, UInt64(bitPattern: c.number)] }
            try Self.writeWords(words, at: array, tid: tid)
            let code = scratch.start + Arch.batchCodeOffset
            let o = try execute(in: tid, completing: completing, stopAt: code + Arch.batchTrapOffset) { saved in
                Arch.preparingBatch(saved, array: array, count: chunk.count, code: code)
            }
            outcome.heldSignals += o.heldSignals
            outcome.consumedInterrupt = outcome.consumedInterrupt || o.consumedInterrupt
            let back = try Self.readWords(words.count, at: array, tid: tid)
            results += (0..<chunk.count).map { Int64(bitPattern: back[$0 * 4 + 3]) }
        }
        return (results, outcome)
    }

    /// Where an injected call's structures go: the third scratch page (the
    /// batch array's, free between injections).
    public var argumentArea: RemoteAddress { scratch.start + 2 * Page.size }

    /// Runs a call that takes or fills a structure (`rt_sigaction`,
    /// `sigaltstack`): `input` is written at `argumentArea` first, and
    /// `outputCount` bytes are read back from there after it.
    public func run(
        _ number: Int64, _ arguments: [UInt64], input: [UInt8], outputCount: Int, in tid: Int32,
        completing: Int64? = nil
    ) throws -> (outcome: Outcome, output: [UInt8]) {
        if !input.isEmpty { try input.withUnsafeBytes { try Self.writeBytes($0, at: argumentArea, tid: tid) } }
        let outcome = try run(number, arguments, in: tid, completing: completing)
        let output = outputCount > 0 ? try Ptrace.readMemory(tid, argumentArea, count: outputCount) : []
        return (outcome, output)
    }

    /// Entries one batch holds: the third scratch page, 32 bytes each.
    public static let batchCapacity = Int(Page.size / 32)

    /// `count` little-endian words of the tracee at `address` (process_vm_readv).
    static func readWords(_ count: Int, at address: RemoteAddress, tid: Int32) throws -> [UInt64] {
        let bytes = try Ptrace.readMemory(tid, address, count: count * 8)
        guard bytes.count == count * 8 else {
            throw TraceError.call("process_vm_readv", .EIO, tid: tid, address: address)
        }
        return stride(from: 0, to: bytes.count, by: 8).map { o in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[o + $1]) << UInt64(8 * $1) }
        }
    }

    static func writeWords(_ words: [UInt64], at address: RemoteAddress, tid: Int32) throws {
        try words.withUnsafeBytes { try writeBytes($0, at: address, tid: tid) }
    }

    /// `bytes` into the tracee at `address`, all of them (process_vm_writev).
    public static func writeBytes(_ bytes: UnsafeRawBufferPointer, at address: RemoteAddress, tid: Int32) throws {
        let n = pw_write_memory(tid, address.value, bytes.baseAddress, bytes.count)
        if n != bytes.count {
            throw TraceError.call("process_vm_writev", Errno(n < 0 ? Int32(-n) : EIO), tid: tid, address: address)
        }
    }

    /// Runs a call and throws `TraceError.remoteSyscall` when it returns -errno.
    public func call(
        _ name: String, _ number: Int64, _ arguments: [UInt64], in tid: Int32,
        address: RemoteAddress? = nil, completing: Int64? = nil
    ) throws -> (value: UInt64, held: [HeldSignal]) {
        let o = try run(number, arguments, in: tid, completing: completing)
        if o.value < 0 && o.value > -4096 {
            throw TraceError.remoteSyscall(name, Errno(Int32(-o.value)), tid: tid, address: address)
        }
        return (UInt64(bitPattern: o.value), o.heldSignals)
    }

    public func mprotect(
        _ range: AddressRange, _ protection: Protection, in tid: Int32,
        completing: Int64? = nil
    ) throws -> Outcome {
        let o = try run(
            Arch.syscalls.mprotect, [range.start.value, range.length, UInt64(protection.rawValue)],
            in: tid, completing: completing)
        if o.value < 0 && o.value > -4096 {
            throw TraceError.remoteSyscall("mprotect", Errno(Int32(-o.value)), tid: tid, address: range.start)
        }
        return o
    }

    /// The scratch pages: the code page (gadget, `FaultTrampoline` slots,
    /// the batch loop), the slots' data page and the batch array.
    public static let scratchSize = 3 * Page.size

    public var trampoline: FaultTrampoline { FaultTrampoline(code: Page.floor(gadget)) }
    public var scratch: AddressRange {
        AddressRange(start: Page.floor(gadget), end: Page.floor(gadget) + Self.scratchSize)
    }

    /// Places the scratch pages in the tracee: single-steps a `syscall`
    /// instruction of the process's own code (`syscallInstruction(in:)`) to
    /// run an `mmap` of the pages (at `scratchAddressHint` if free: the
    /// seccomp filter lets calls from there run untraced), writes the code
    /// page and makes it read+exec (the data pages stay read+write).
    public static func bootstrap(in tid: Int32, completing: Int64? = nil) throws -> (RemoteSyscall, [HeldSignal]) {
        let stepped = RemoteSyscall(stepping: try syscallInstruction(in: tid))
        var held: [HeldSignal] = []  // the caller delivers them when it resumes the thread
        let rw = UInt64(Protection.read.union(.write).rawValue)
        let mapPrivateAnonymous: UInt64 = 0x02 | 0x20, fixedNoReplace: UInt64 = 0x100000
        let hinted = try stepped.run(
            Arch.syscalls.mmap,
            [
                Arch.scratchAddressHint, scratchSize, rw,
                mapPrivateAnonymous | fixedNoReplace, UInt64(bitPattern: -1), 0,
            ],
            in: tid, completing: completing)
        held += hinted.heldSignals
        let page: UInt64
        if hinted.value == Int64(bitPattern: Arch.scratchAddressHint) {
            page = Arch.scratchAddressHint
        } else {
            // Taken (EEXIST): anywhere; the trampoline's calls then stop at the filter.
            let r = try stepped.call(
                "mmap", Arch.syscalls.mmap,
                [0, scratchSize, rw, mapPrivateAnonymous, UInt64(bitPattern: -1), 0], in: tid,
                completing: completing)
            page = r.value
            held += r.held
        }
        try FaultTrampoline.codePage(at: RemoteAddress(page)).withUnsafeBytes {
            try writeBytes($0, at: RemoteAddress(page), tid: tid)
        }
        let rx = UInt64(Protection.read.union(.execute).rawValue)  // the code page only
        held += try stepped.call(
            "mprotect", Arch.syscalls.mprotect, [page, Page.size, rx], in: tid,
            address: RemoteAddress(page)
        ).held
        return (RemoteSyscall(gadget: RemoteAddress(page)), held)
    }

    /// Removes the scratch pages (for detach), from a stepped `syscall` of
    /// the process's own code: the gadget cannot unmap its own page and then
    /// reach its stop.
    public func unmapScratch(in tid: Int32) throws -> [HeldSignal] {
        var stepped = RemoteSyscall(stepping: try Self.syscallInstruction(in: tid))
        stepped.restoring = restoring
        return try stepped.call(
            "munmap", Arch.syscalls.munmap, [scratch.start.value, scratch.length], in: tid, address: gadget
        ).held
    }

    /// A `syscall` instruction in the process's executable code: the vDSO's
    /// first (always there, never unmapped by the program), else its other
    /// executable mappings. Only read, never patched: another thread may be
    /// running that code.
    public static func syscallInstruction(in tid: Int32) throws -> RemoteAddress {
        let mappings = try ProcFS.maps(of: tid).filter {
            $0.protection.contains(.execute) && $0.protection.contains(.read)
        }
        let ordered =
            mappings.filter { $0.path == "[vdso]" } + mappings.filter { $0.path != "[vdso]" && $0.path != "[vsyscall]" }
        let pattern = Arch.syscallInstruction
        let chunk = 64 * 1024
        for mapping in ordered {
            var at = mapping.range.start
            while at < mapping.range.end {
                let count = Int(min(UInt64(chunk + pattern.count - 1), mapping.range.end - at))
                guard let bytes = try? Ptrace.readMemory(tid, at, count: count), bytes.count >= pattern.count else {
                    break
                }
                for i in 0...(bytes.count - pattern.count)
                where bytes[i] == pattern[0] && Array(bytes[i..<i + pattern.count]) == pattern {
                    return at + UInt64(i)
                }
                at = at + UInt64(chunk)
            }
        }
        throw TraceError.remoteSyscall(
            "finding a syscall instruction in the process's code", Errno(ENOEXEC), tid: tid, address: nil)
    }
}
