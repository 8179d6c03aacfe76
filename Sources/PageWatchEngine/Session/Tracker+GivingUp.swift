import PageWatchPtrace

/// Giving up tracking from outside the engine: the CLI's log could not be
/// written, so nothing PageWatch would record can be kept. The program must
/// not pay for that: every process gets its protections back and runs on
/// untracked (`run`), or PageWatch detaches (`attach`).
extension Tracker {
    /// Asks every tracked process to stop being tracked for `reason`, at its
    /// next stop where code can run in it (as a sweep would be: the
    /// `untracked` sweep it makes instead is where protections are given
    /// back). In attach mode, PageWatch detaches instead. Safe to call from
    /// `emit` (the request is only recorded); later calls are ignored.
    public func giveUpTracking(because reason: String) {
        guard givingUp == nil else { return }
        givingUp = reason
        guard resumeMode != .syscallStops else { return }  // attach: `detachCondition` sees it
        for p in processes.values where p.end == nil && !p.trackingStopped && !p.finalSweepDone {
            p.pendingSweep = .untracked
        }
    }
}

extension ProcessTracker {
    /// The pending sweep is the one that gives up tracking (`giveUpTracking`).
    var givesUpAtSweep: Bool { pendingSweep == .untracked && session.givingUp != nil }
}
