import PageWatchAddressSpace
import PageWatchPtrace

/// One thread of a tracked process, as the event loop knows it. A class:
/// the fault path reads and sets a dozen of its fields per fault, and as a
/// struct of some 400 bytes each such access moved it out of the
/// dictionary and back (about 3 us a fault in all). Handlers take
/// it, looked up once per stop (`ProcessTracker.handle`).
final class TrackedThread {
    let tid: Int32

    /// Set when the thread is at its `PTRACE_EVENT_EXIT` stop: it can run no more code.
    var exiting = false
    /// It entered `exit_group`: at its exit event every other thread of the
    /// group has been sent SIGKILL and runs no more code of the program.
    var endsTheGroup = false
    var inGroupStop = false
    /// Its rseq area was looked up and pinned.
    var rseqKnown = false
    /// It existed before `pagewatch attach`: its clone was not seen.
    var preexisting = false
    /// A vfork child: another process, but sharing this address space
    /// until it execs or exits.
    var vforkChild = false
    /// Its first stop came before its parent's clone event.
    var awaitsCloneEvent = false
    /// Kept stopped for this, not resumed (`ProcessTracker.serveWaiting`).
    var waiting: StopWaiting?
    /// It took the sweep signal before an attach saw its first stop: it
    /// waits for the sweep at that stop instead (`waitForSignalSweep`).
    var sweepSignalTaken = false

    var interrupt = InterruptState()
    var syscall = SyscallStop()
    var signals = SignalState()
    var exitWords = ExitWords()
    var trampoline = TrampolineSlot()
    var suppressedFault = SuppressedFault()
    /// When its own fault was first held back for a reset SIGSEGV action
    /// (`deferOwnFaultWhileActionReset`).
    var ownFaultDeferredSinceNs: UInt64?

    init(tid: Int32) { self.tid = tid }

    /// PageWatch's `PTRACE_INTERRUPT`s of the thread.
    struct InterruptState {
        /// One was sent and its stop not yet seen.
        var pending = false
        /// When a sweep's or the detach's interrupt was last sent to it
        /// (monotonic ns; 0: not by them): unanswered for long, it is sent again.
        var sentNs: UInt64 = 0
        /// One was pending at a syscall stop, maybe sent after the thread took
        /// it: the kernel then keeps it, and the next call returns EINTR.
        var mayLinger = false
    }

    /// The syscall the thread is stopped in or was resumed into.
    struct SyscallStop {
        /// At an event stop inside a syscall (clone, fork, exec): the value that
        /// call returns, which an injection must put back (see `RemoteSyscall.run`).
        var completing: Int64?
        /// Stopped at a syscall entry (a seccomp or syscall-entry stop), until resumed.
        var atEntry = false
        /// At a syscall entry: the registers there, read at the first need
        /// (`ProcessTracker.entryRegisters`; an entry that runs nothing of
        /// PageWatch's needs none).
        var entryRegisters: HostArchitecture.Registers?
        /// An injection at this entry abandoned the call: the thread was
        /// given back rewound, to make it again (`ProcessInjector.abandoningEntry`).
        var abandoned = false
        /// Resumed from a syscall-entry stop with `PTRACE_SYSCALL`, the call
        /// untouched and nothing wanted at its exit: its next syscall stop,
        /// if no other stop comes first, is that call's exit (the kernel
        /// reports an entry's exit before the thread can enter another
        /// call), resumed without asking the kernel which stop it is.
        var exitNext = false
        /// Sent to the call's exit with PTRACE_SYSCALL, for this.
        var pendingExit: PendingSyscallExit?
        var unknownAttempt = 0
        /// The output buffers of the call it was resumed into at its entry,
        /// un-armed there; until its next stop (then the call has run or will
        /// be entered again).
        var callOutputs: PageSet?
    }

    /// Its signals as PageWatch must know them.
    struct SignalState {
        /// Signals that arrived while PageWatch ran code in this thread.
        var held: [HeldSignal] = []
        /// Its sigaltstack (where SA_ONSTACK handlers' signal frames land).
        var altStack: AddressRange?
        /// False for a thread that may have set one before an attach, until it
        /// is asked (`learnAltStack`).
        var altStackKnown = true
    }

    /// The words the kernel writes for the thread as it ends.
    struct ExitWords {
        /// Its `clear_child_tid` word (`set_tid_address`, or the clone that
        /// created it with CLONE_CHILD_CLEARTID), written by the kernel at its exit.
        var clearChildTid: RemoteAddress?
        /// At a clone's entry: the new thread's CLONE_CHILD_CLEARTID word, for its state at the event.
        var newThreadClearTid: RemoteAddress?
        /// Its `clear_child_tid` word and its robust futexes, un-armed at its
        /// `exit`: kept writable by sweeps until it is gone (it writes them
        /// after its exit event stop).
        var kept: [AddressRange] = []
        /// Its `clear_child_tid` word and the value it held at its exit
        /// (`keepExitWordsOutOfSweeps`): once it holds another the exit words are written.
        var tidWord: (address: RemoteAddress, value: UInt64)?
    }

    /// Its slot in the fault trampoline (`ProcessTracker+Trampoline`).
    struct TrampolineSlot {
        /// Its slot, once it has used one.
        var slot: Int?
        /// Sent through its slot to un-arm this page, not seen stopped since.
        var page: RemoteAddress?
        /// What its slot's `mprotect` un-arms: `page`, and a gap filled beside it.
        var span: AddressRange?
        /// Its slot's call failed for this page: the next fault there takes the slow path.
        var slowPathPage: RemoteAddress?
        /// Sent through its slot with `PTRACE_SYSCALL` (attach mode): its next
        /// two syscall stops, unless another stop comes first, are the slot's
        /// own `mprotect`'s entry and exit (the slot makes no other call, and
        /// the thread was in none at its fault), resumed without a look.
        var ownSyscallStops = 0
        /// Its last stop was the slot's `mprotect` exit: a syscall stop next
        /// is past the slot, its result stored.
        var ownCallDone = false
    }

    /// A fault resumed without unprotecting anything (another
    /// thread un-protected it first).
    struct SuppressedFault {
        /// Its page; a second fault there from this thread is not PageWatch's
        /// (a fault un-protecting cannot fix, e.g. a guard region).
        var page: RemoteAddress?
        var repeats = 0
    }
}

/// Why a thread is kept at its stop until another thread's memory call
/// (mmap, munmap, mremap, brk, mprotect, ...) has reached its exit stop.
/// Between the entry and the exit of such a call the kernel's mappings and
/// PageWatch's model differ, and an exit handled late would undo what was
/// decided meanwhile: the model is changed by one such call at a time.
enum StopWaiting {
    /// At the sweep signal: the sweep (it marks a phase: the thread's next
    /// writes belong to the next interval).
    case sweepSignal
    /// At the entry of a memory call of its own.
    case memoryCall
    /// At a write fault: judged (whose? which page?) once the model is true.
    case fault
}
