import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// The words the kernel writes as a thread ends: its
/// `clear_child_tid` word and its robust futexes, kept writable until written.
extension ProcessTracker {
    /// A thread's `exit`: the kernel will write 0 to its
    /// `clear_child_tid` word (and wake `pthread_join`) and set
    /// FUTEX_OWNER_DIED in every robust mutex it still holds; on an armed page
    /// those writes fail silently and the waiters hang. At the call's entry
    /// the thread can still run PageWatch's code (at its exit event it no
    /// longer can): un-arm those words' pages, counted dirty; the call is
    /// then rewound and runs. (exit_group and fatal signals end every thread:
    /// only other processes could wait there, through shared memory, which is
    /// never tracked.)
    func threadExitEntry(_ thread: TrackedThread) throws {
        let tid = thread.tid
        let words = keepExitWordsOutOfSweeps(thread)
        if !words.isEmpty {
            let kernel = attribution.writer(Syscall.exit.rawValue, tid: tid)
            for w in words { try unarmForKernel(w, by: kernel, thread) }
        }
        try resume(thread)
    }

    /// The words the kernel writes as `tid` ends: those of the robust
    /// mutexes it holds and its `clear_child_tid` word. They are written
    /// after the exit event stop, in exit_mm: a sweep at another thread's
    /// stop meanwhile must not arm them again, so they become its
    /// `exitWords`, left out of sweeps until it is gone or they are written.
    /// The kernel zeroes the `clear_child_tid` word last (`mm_release`,
    /// after the robust list), and the program writes it only after that
    /// (glibc's join sets -1), so its value now (its tid) is noted: once a
    /// sweep reads another there, all are written (`exitWritesDone`; without
    /// it a page of them was reported again when the program swept right
    /// after a join, before PageWatch saw the thread gone). Not noted when
    /// it holds 0 already: a change could not be seen.
    @discardableResult
    func keepExitWordsOutOfSweeps(_ thread: TrackedThread) -> [AddressRange] {
        let tid = thread.tid
        let tidWord = thread.exitWords.clearChildTid ?? clearTidFromPendingClone(of: tid)
        let words = (robustFutexesHeld(by: tid) + (tidWord.map { [$0] } ?? [])).map {
            AddressRange(start: $0, end: $0 + 4)
        }
        thread.exitWords.kept = words
        if let tidWord, let v = try? Ptrace.readMemory(liveThread(), tidWord, count: 4), v.count == 4,
            case let value = littleEndian(v, at: 0, size: 4), value != 0
        {
            thread.exitWords.tidWord = (tidWord, value)
        }
        return words
    }

    /// Whether the kernel has written every word of `state`'s exit: its
    /// `clear_child_tid` word no longer holds the value noted at its exit.
    func exitWritesDone(_ state: TrackedThread) -> Bool {
        guard let (w, value) = state.exitWords.tidWord,
            let v = try? Ptrace.readMemory(liveThread(), w, count: 4), v.count == 4
        else { return false }
        return littleEndian(v, at: 0, size: 4) != value
    }

    /// The same words at a thread's exit event when its `exit` entry was not seen
    /// (attach: seized while already ending, so this is its first stop and
    /// nothing is armed yet): its words stay out of the sweeps the same way.
    /// (It can no longer run PageWatch's code to un-arm them.)
    func keepExitWordsWritable(_ thread: TrackedThread) {
        guard thread.exitWords.kept.isEmpty else { return }
        learnClearTid(thread)
        keepExitWordsOutOfSweeps(thread)
    }

    /// A thread that exits before its creator's clone event was handled
    /// (waitpid reports newer tracees first) has no word yet: it is the one
    /// a creator's pending clone named that holds its tid (the kernel wrote
    /// CLONE_PARENT_SETTID's or CLONE_CHILD_SETTID's before it ran).
    func clearTidFromPendingClone(of tid: Int32) -> RemoteAddress? {
        for (creator, state) in threads where creator != tid {
            guard let w = state.exitWords.newThreadClearTid,
                let v = try? Ptrace.readMemory(tid, w, count: 4), v.count == 4,
                littleEndian(v, at: 0, size: 4) == UInt64(UInt32(bitPattern: tid))
            else { continue }
            return w
        }
        return nil
    }

    /// The futex words of the robust mutexes `tid` holds, which the kernel
    /// marks at its exit: its robust list (`get_robust_list`), walked as the
    /// kernel walks it (`struct robust_list_head`: next, futex_offset,
    /// list_op_pending; at most ROBUST_LIST_LIMIT entries), keeping the
    /// words whose owner is `tid`.
    func robustFutexesHeld(by tid: Int32) -> [RemoteAddress] {
        guard let head = try? Ptrace.robustListHead(tid),
            let raw = try? Ptrace.readMemory(tid, head, count: 24), raw.count == 24
        else { return [] }
        let offset = littleEndian(raw, at: 8), pending = littleEndian(raw, at: 16)
        func word(at entry: UInt64) -> RemoteAddress? {
            let address = RemoteAddress(entry &+ offset)
            guard let v = try? Ptrace.readMemory(tid, address, count: 4), v.count == 4 else { return nil }
            let futexTidMask: UInt64 = 0x3fff_ffff
            return littleEndian(v, at: 0, size: 4) & futexTidMask == UInt64(UInt32(bitPattern: tid)) ? address : nil
        }
        var held: [RemoteAddress] = []
        var entry = littleEndian(raw, at: 0)
        var count = 0
        while entry != head.value, entry != 0, count < 2048 {
            if entry != pending, let w = word(at: entry) { held.append(w) }
            guard let next = try? Ptrace.readMemory(tid, RemoteAddress(entry), count: 8), next.count == 8 else { break }
            entry = littleEndian(next, at: 0)
            count += 1
        }
        if pending != 0, let w = word(at: pending) { held.append(w) }
        return held
    }
}
