import Glibc
import PageWatchLog
import PageWatchPtrace

/// What only a `pagewatch attach` session has (`Tracker.attachState`, nil
/// for `run`): the guardian, the threads seized whose first stop is still
/// to come, and the detach's parked threads.
final class AttachState {
    /// The guardian's shared state and the pipe it watches (it restores
    /// the program if PageWatch dies).
    var guardian: (state: GuardianState, watch: Int32)?
    /// The threads seized whose first stop is still to come. Nothing is
    /// armed until it is empty: a thread's rseq area and tid word are
    /// pinned at that stop, and armed before it the kernel's next rseq
    /// update for the thread fails and kills it (SIGSEGV).
    var awaitingFirstStop: Set<Int32> = []
    /// Why PageWatch is detaching, once it is; every thread is then parked
    /// at its next stop instead of resumed.
    var detaching: SweepReason?
    /// Threads stopped and left so, for the detach.
    var parked: Set<Int32> = []
    /// Of those, the threads parked where they waited for PageWatch
    /// (`StopWaiting`): never let run before the detach (`unparkForUserfaultWaiters`).
    var parkedWaiting: Set<Int32> = []
    /// The signal a thread was parked at (its signal-delivery stop), for PTRACE_DETACH to deliver.
    var parkedSignals: [Int32: HeldSignal] = [:]
    /// When the detach last let parked threads run on (or began).
    var lastUnparkNs: UInt64 = 0
    /// PAGEWATCH_DEBUG: the threads a detach last waited for (said once).
    var lastDetachWait = ""

    /// `PAGEWATCH_TEST_DIE_AT_REWIND=N`, for tests of the guardian: the
    /// tracer SIGKILLs itself as it resumes, for the Nth time, a thread
    /// whose syscall it abandoned at the entry to run code there: the
    /// moment PageWatch dying must not leave that call skipped. Unset, nil.
    var resumesBeforeDying: Int? = getenv("PAGEWATCH_TEST_DIE_AT_REWIND").flatMap { Int(String(cString: $0)) }

    /// `PAGEWATCH_TEST_DIE_IN_HELPER=clone|registers`, for tests of the
    /// guardian: the tracer SIGKILLs itself right after the helper thread's
    /// clone (the helper untouched), or once the helper's registers are set
    /// to leave (`userfaultfdFromHelperThread`). Unset, nil.
    let helperDeath: String? = getenv("PAGEWATCH_TEST_DIE_IN_HELPER").map { String(cString: $0) }

    /// The tracer's end at the helper's moment `moment`, if asked for.
    func atHelperMoment(_ moment: String) {
        if helperDeath == moment { kill(getpid(), SIGKILL) }
    }

    /// Counts one such resume; the tracer's end at the Nth (`resumesBeforeDying`).
    func resumingAbandonedCall() {
        guard let left = resumesBeforeDying else { return }
        resumesBeforeDying = left - 1
        if left <= 1 { kill(getpid(), SIGKILL) }
    }
}
