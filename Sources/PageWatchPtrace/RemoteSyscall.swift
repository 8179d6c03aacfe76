import Glibc
import PageWatchAddressSpace

/// A syscall run inside a stopped tracee thread through the `syscall; int3`
/// gadget placed once in a scratch page (CRIU compel's approach). Every run
/// saves all registers and restores them on every exit path, errors included.
public struct RemoteSyscall: Sendable {
    public typealias Arch = HostArchitecture

    /// Where the gadget is in the tracee.
    public let gadget: RemoteAddress

    public init(gadget: RemoteAddress) { self.gadget = gadget }

    /// What came back from one injection.
    public struct Outcome {
        /// The raw return value: >= 0, or -errno.
        public var value: Int64
        /// Signals that arrived for the thread while the injected call ran
        /// (hazard 16); the caller delivers them once the thread is restored.
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
        var saved = try Arch.readRegisters(tid: tid)
        if let completing { saved = Arch.settingSyscallResult(saved, completing) }
        let prepared = Arch.preparingSyscall(saved, number: number, arguments: arguments, gadget: gadget)
        var restored = false
        defer {
            // Scoped restore: whatever happened, put the thread back as it was.
            if !restored { try? Arch.writeRegisters(saved, tid: tid) }
        }
        try Arch.writeRegisters(prepared, tid: tid)
        try Ptrace.cont(tid)
        var held: [HeldSignal] = []
        var consumedInterrupt = false
        let trapAt = gadget + Arch.gadgetTrapOffset
        while true {
            guard let event = try Wait.nextSpinning(tid) else { continue }
            switch event {
            case .signalDelivery(_, let sig):
                if sig == Signal.SIGTRAP {
                    let regs = try Arch.readRegisters(tid: tid)
                    if Arch.instructionPointer(regs) == trapAt {
                        try Arch.writeRegisters(saved, tid: tid)
                        restored = true
                        return Outcome(value: Arch.syscallResult(regs), heldSignals: held,
                                       consumedInterrupt: consumedInterrupt)
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
                if synchronous && (Page.floor(h.faultAddress) == Page.floor(gadget)
                                   || held.filter({ $0.signal == sig && $0.faultAddress == h.faultAddress }).count >= 2) {
                    throw TraceError.remoteSyscall("injected call (\(Signal.name(sig)) at \(h.faultAddress.hex))", .EFAULT,
                                                   tid: tid, address: gadget)
                }
                if getenv("PAGEWATCH_DEBUG") != nil {
                    let regs = try Arch.readRegisters(tid: tid)
                    let info = try Ptrace.signalInfo(tid)
                    let line = Array("pagewatch[debug]   held \(Signal.name(sig)) code \(info.code) addr \(info.faultAddress) at \(Arch.instructionPointer(regs)) sp \(Arch.stackPointer(regs))\n".utf8)
                    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                }
                held.append(h)
                try Ptrace.cont(tid)
            case .interruptStop:
                consumedInterrupt = true
                try Ptrace.cont(tid)
            case .syscallStop, .unknown:
                try Ptrace.cont(tid)
            case .groupStop:
                // Another thread started a group-stop; finish the injection first.
                try Ptrace.cont(tid)
            case .event(_, .exit):
                // SIGKILL while injecting: let it die.
                restored = true
                try? Ptrace.cont(tid)
                throw TraceError.traceeGone(tid: tid)
            case .event:
                try Ptrace.cont(tid)
            case .exited, .killed:
                restored = true
                throw TraceError.traceeGone(tid: tid)
            }
        }
    }

    /// Runs a call and throws `TraceError.remoteSyscall` when it returns -errno.
    public func call(_ name: String, _ number: Int64, _ arguments: [UInt64], in tid: Int32,
                     address: RemoteAddress? = nil, completing: Int64? = nil) throws -> (value: UInt64, held: [HeldSignal]) {
        let o = try run(number, arguments, in: tid, completing: completing)
        if o.value < 0 && o.value > -4096 {
            throw TraceError.remoteSyscall(name, Errno(Int32(-o.value)), tid: tid, address: address)
        }
        return (UInt64(bitPattern: o.value), o.heldSignals)
    }

    public func mprotect(_ range: AddressRange, _ protection: Protection, in tid: Int32,
                         completing: Int64? = nil) throws -> Outcome {
        let o = try run(Arch.syscalls.mprotect, [range.start.value, range.length, UInt64(protection.rawValue)],
                        in: tid, completing: completing)
        if o.value < 0 && o.value > -4096 {
            throw TraceError.remoteSyscall("mprotect", Errno(Int32(-o.value)), tid: tid, address: range.start)
        }
        return o
    }

    /// Places the gadget in the tracee: borrows the bytes at the thread's
    /// instruction pointer to run one `mmap` of a private read+exec page, puts
    /// the bytes back, and writes the gadget into the new page.
    public static func bootstrap(in tid: Int32, completing: Int64? = nil) throws -> (RemoteSyscall, [HeldSignal]) {
        let regs = try Arch.readRegisters(tid: tid)
        let ip = Arch.instructionPointer(regs)
        let original = try Ptrace.peek(tid, ip)
        try Ptrace.pokeBytes(tid, ip, Arch.syscallGadget)
        let page: UInt64
        let held: [HeldSignal]
        do {
            defer { try? Ptrace.poke(tid, ip, original) }
            let borrowed = RemoteSyscall(gadget: ip)
            let prot = UInt64((Protection.read.union(.execute)).rawValue)
            let mapPrivateAnonymous: UInt64 = 0x02 | 0x20
            let r = try borrowed.call("mmap", Arch.syscalls.mmap,
                                      [0, Page.size, prot, mapPrivateAnonymous, UInt64(bitPattern: -1), 0], in: tid,
                                      completing: completing)
            page = r.value
            held = r.held  // the caller delivers them when it resumes the thread
        }
        try Ptrace.pokeBytes(tid, RemoteAddress(page), Arch.syscallGadget)
        return (RemoteSyscall(gadget: RemoteAddress(page)), held)
    }

    /// Removes the scratch page (for detach). Run from borrowed bytes at the
    /// thread's instruction pointer, as `bootstrap` does: the gadget cannot
    /// unmap its own page and then reach its `int3`. Every other thread of the
    /// process must be stopped (they could run the borrowed bytes).
    public func unmapScratch(in tid: Int32) throws -> [HeldSignal] {
        let ip = Arch.instructionPointer(try Arch.readRegisters(tid: tid))
        let original = try Ptrace.peek(tid, ip)
        try Ptrace.pokeBytes(tid, ip, Arch.syscallGadget)
        defer { try? Ptrace.poke(tid, ip, original) }
        return try RemoteSyscall(gadget: ip).call("munmap", Arch.syscalls.munmap, [Page.floor(gadget).value, Page.size],
                                                  in: tid, address: gadget).held
    }
}
