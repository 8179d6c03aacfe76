import Glibc
internal import CPtrace
import PageWatchAddressSpace

/// The one-stop fault path. At a write fault the tracer writes
/// the page, its protection and the faulting instruction's address into the
/// thread's slot, points the thread at the slot's code and resumes it: the
/// code saves the registers it uses, runs `mprotect` on the page, puts them
/// back and jumps to the faulting instruction. One stop per fault instead
/// of two, only the instruction pointer read and written, and no moment
/// where the thread needs the tracer to get its registers back: should
/// PageWatch die, a thread inside a slot still finishes it.
///
/// Scratch layout, three pages at `code`: the code page (read+execute)
/// holds the two-stop gadget in its first slot-sized cell, the slots' code
/// in the next ones (30 on x86_64) and the batch loop
/// (`RemoteSyscall.mprotectBatch`) in the last; the data page (read+write,
/// never tracked) holds each slot's words; the third page (read+write) the
/// batch's array.
public struct FaultTrampoline: Sendable {
    public typealias Arch = HostArchitecture

    /// The code page (the scratch pages' start, where the gadget is).
    public let code: RemoteAddress
    public var data: RemoteAddress { code + Page.size }
    /// PageWatch's own mapping of the data page (the engine's
    /// `SharedSlotData`), as an address (0: none, the words go through
    /// process_vm_writev/readv).
    let local: UInt

    public init(code: RemoteAddress, localData: UnsafeMutableRawPointer? = nil) {
        self.code = code
        local = localData.map { UInt(bitPattern: $0) } ?? 0
    }

    /// The code page's cells after the gadget, but the last (the batch loop).
    public static var slotCount: Int { Int(Page.size / Arch.trampolineSlotSize) - 2 }

    public func slotCode(_ slot: Int) -> RemoteAddress { code + Arch.trampolineSlotSize * UInt64(slot + 1) }
    public func slotData(_ slot: Int) -> RemoteAddress { data + UInt64(slot * Arch.trampolineWordCount * 8) }

    /// The code page's bytes: the gadget, then every slot's code.
    public static func codePage(at code: RemoteAddress) -> [UInt8] {
        let t = FaultTrampoline(code: code)
        var bytes =
            Arch.scratchGadget + Array(repeating: 0xcc, count: Int(Arch.trampolineSlotSize) - Arch.scratchGadget.count)
        for slot in 0..<slotCount { bytes += Arch.trampolineCode(at: t.slotCode(slot), data: t.slotData(slot)) }
        bytes += Array(repeating: 0xcc, count: Int(Arch.batchCodeOffset) - bytes.count)
        bytes += Arch.batchCode
        return bytes + Array(repeating: 0xcc, count: Int(Page.size) - bytes.count)
    }

    /// The slot whose code `ip` is in, if any.
    public func slot(at ip: RemoteAddress) -> Int? {
        guard ip >= slotCode(0), ip < slotCode(Self.slotCount) else { return nil }
        return Int((ip.value - slotCode(0).value) / Arch.trampolineSlotSize)
    }

    /// Sends `tid`, stopped at a write fault, through `slot` to run
    /// mprotect(range, protection). The caller resumes it with no signal.
    /// Only the instruction pointer is read and written (the slot saves the
    /// registers it uses itself): at a fault's stop the thread is in no
    /// syscall (orig_rax is -1), so no restart logic applies on the way out.
    public func enter(_ slot: Int, tid: Int32, mprotect range: AddressRange, _ protection: Protection) throws {
        let ip = try Arch.readInstructionPointer(tid: tid)
        let words = Arch.trampolineEntryWords(
            mprotect: range.start.value, length: range.length,
            protection: UInt64(protection.rawValue), returningTo: ip)
        // Plain stores when the page is shared: the PTRACE_POKEUSER and
        // PTRACE_CONT that follow order them before the thread runs.
        try write(words, at: slotData(slot) + UInt64(Arch.trampolineEntryWord * 8), tid: tid)
        try Arch.writeInstructionPointer(slotCode(slot), tid: tid)
    }

    /// A thread stopped inside a slot's code (a signal, an interrupt, the
    /// tracer's death came first) is given the registers the slot would have
    /// left it with: back at its faulting instruction. Returns the slot and
    /// whether the slot's call has run (if not, the page is still protected
    /// and the instruction faults again); nil when `registers` are not in a slot.
    public func settle(tid: Int32, registers: Arch.Registers) throws -> (slot: Int, ran: Bool)? {
        let ip = Arch.instructionPointer(registers)
        guard let slot = slot(at: ip) else { return nil }
        let offset = ip.value - slotCode(slot).value
        var words = try read(at: slotData(slot), tid: tid)
        if offset == Arch.trampolineSyscallEnd {
            // Stopped right after the call (a signal at its exit), before the
            // slot stored its result: it is still in the result register.
            words[Arch.trampolineResultWord] = UInt64(bitPattern: Arch.syscallResult(registers))
            try write(
                [words[Arch.trampolineResultWord]], at: slotData(slot) + UInt64(Arch.trampolineResultWord * 8), tid: tid
            )
        }
        try Arch.writeRegisters(Arch.leavingTrampoline(registers, words: words, offset: offset), tid: tid)
        return (slot, offset >= Arch.trampolineSyscallEnd)
    }

    /// What the slot's last call returned (1 until it has run).
    public func result(_ slot: Int, tid: Int32) throws -> Int64 {
        Int64(bitPattern: try read(at: slotData(slot), tid: tid)[Arch.trampolineResultWord])
    }

    func write(_ words: [UInt64], at address: RemoteAddress, tid: Int32) throws {
        if let p = localWords(at: address, count: words.count) {
            for (i, w) in words.enumerated() { p[i] = w }
            return
        }
        try RemoteSyscall.writeWords(words, at: address, tid: tid)
    }

    func read(at address: RemoteAddress, tid: Int32) throws -> [UInt64] {
        if let p = localWords(at: address, count: Arch.trampolineWordCount) {
            return Array(UnsafeBufferPointer(start: p, count: Arch.trampolineWordCount))
        }
        return try RemoteSyscall.readWords(Arch.trampolineWordCount, at: address, tid: tid)
    }

    /// The words at `address` of the data page in PageWatch's own mapping, if shared.
    func localWords(at address: RemoteAddress, count: Int) -> UnsafeMutablePointer<UInt64>? {
        guard local != 0, address >= data, address + UInt64(count * 8) <= data + Page.size,
            let base = UnsafeMutableRawPointer(bitPattern: local)
        else { return nil }
        return (base + Int(address.value - data.value)).assumingMemoryBound(to: UInt64.self)
    }
}
