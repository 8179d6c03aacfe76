import PageWatchLog

/// Names, at report time, JIT code the log could not name when its sweeps
/// were written (format rule 14): OpenJDK writes its perf map only as it
/// exits (`-XX:+DumpPerfMapAtExit`), after every sweep but the last. So
/// `pagewatch report` reads each process's `/tmp/perf-PID.map` itself, when
/// it is still there and was written while the log's process ran, and
/// names the frames of anonymous memory that have no name.
public enum JITNames {
    /// How long after the process's end the map may have been modified: the
    /// JVM writes it before it exits, so only clock granularity.
    static let lateNs: UInt64 = 2_000_000_000

    /// `log` with those frames named and marked `jit`. `mapPath`: where
    /// the perf map of a pid is (a test points it elsewhere).
    public static func applied(
        to log: ParsedLog, mapPath: (Int32) -> String = PerfMap.path(pid:)
    ) -> ParsedLog {
        var log = log
        for p in log.processes.indices {
            let process = log.processes[p]
            guard process.sweeps.contains(where: { $0.sites?.contains(where: hasUnnamedCode) ?? false }) else {
                continue
            }
            let path = mapPath(process.pid)
            // Another process's map under a pid used again, or one left from before: not this one's.
            guard let modified = PerfMap.modificationTimeNs(of: path), modified >= process.beginNs,
                modified <= (process.ending?.timeNs ?? .max) &+ lateNs
            else { continue }
            let map = PerfMap(path: path)
            guard map.refresh() else { continue }
            // After an exec the map is the last image's: its sweeps only.
            let first =
                process.execs.isEmpty
                ? 0 : process.namedSets.count > 1 ? process.namedSets.last!.beforeSweep : process.sweeps.count
            for s in first..<process.sweeps.count {
                guard var sites = process.sweeps[s].sites else { continue }
                for i in sites.indices {
                    // The writer's own IP: after a kernel pseudo-frame, the next.
                    let exact = sites[i].frames.first.map(FrameNaming.isKernel) == true ? 1 : 0
                    for f in sites[i].frames.indices where isUnnamedCode(sites[i].frames[f]) {
                        let ip = sites[i].frames[f].ip
                        // A return address is looked up at its call, as the engine does.
                        let at = f > exact ? ip - 1 : ip
                        if let name = map.name(at: at) {
                            sites[i].frames[f].function = name
                            sites[i].frames[f].jit = true
                        }
                    }
                }
                log.processes[p].sweeps[s].sites = sites
            }
        }
        return log
    }

    /// A frame of anonymous memory without a name (not a pseudo-frame).
    static func isUnnamedCode(_ f: Frame) -> Bool { f.ip != 0 && f.module == nil && f.function == nil }

    static func hasUnnamedCode(_ site: WriteSite) -> Bool { site.frames.contains(where: isUnnamedCode) }
}
