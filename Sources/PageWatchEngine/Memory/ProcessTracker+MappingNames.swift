import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// The names of the tracked mappings in the log (docs/format.md,
/// `mappings`): the whole selection at `start` and `exec`, then at each
/// sweep only what a reader cannot name yet. Worked out from the maps a
/// sweep reads anyway, never at a fault or a memory call: a program that
/// maps thousands of times between two sweeps costs one list, coalesced.
extension ProcessTracker {
    /// The pages the selection picks now, named, for a `start` or `exec`
    /// record: from then on what a reader knows. nil under `pagewatch/1`,
    /// which names nothing.
    func namedSelectionNow() -> [NamedMapping]? {
        guard config.schema != .v1 else { return nil }
        guard let maps = try? ProcFS.maps(of: pid) else {
            namedMappings = MappingNames()
            return []
        }
        let programs = maps.filter { m in injector.remote.map { !$0.scratch.contains(m.range.start) } ?? true }
        var probe = TrackedMemory()
        probe.reconcile(maps: programs, selection: config.selection, stackAnchors: stackAnchors)
        let named = NamedMapping.named(tracked: probe.regions.map(\.range), maps: Self.namedMaps(programs))
        namedMappings = MappingNames(named)
        return named
    }

    /// At a sweep, after it read maps: the tracked pages whose name no
    /// record has given yet (new mappings, heap growth, a new thread's
    /// stack, a range mapped again under another name).
    func mappingsNewToTheLog() -> [NamedMapping] {
        guard config.schema != .v1 else { return [] }
        let current = NamedMapping.named(
            tracked: trackedRangesOfBothBackends, maps: Self.namedMaps(attribution.lastMaps))
        return namedMappings.update(to: current)
    }

    /// Maps entries as one mapping each: the kernel names only the piece
    /// of the main stack that holds its initial stack pointer `[stack]`,
    /// and PageWatch's arming splits it into many.
    static func namedMaps(_ maps: [Mapping]) -> [Mapping] { MappingGroup.group(maps).map(\.mapping) }
}
