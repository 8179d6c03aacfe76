import PageWatchAddressSpace
import PageWatchLog

/// One row of the "mappings dirtied" table: the pages a process's sweeps
/// reported in the mappings of one name (`[heap]`, a library's path, `[anon]`).
public struct MappingDirtied: Sendable, Equatable {
    public var name: String
    /// Pages of the sweeps' `ranges` in mappings of this name, summed over the sweeps.
    public var pages: UInt64
    /// Sweeps that reported at least one of its pages.
    public var sweeps: Int
}

extension ProcessReport {
    /// What pages no record named are listed as (none in a log that names
    /// its mappings, but for memory a record left out).
    public static let unnamedMapping = "(not named)"

    /// Per mapping name, the pages the sweeps reported there: most pages
    /// first, then most sweeps, then by name. nil when the log names no
    /// mappings (written before it did, or under `--schema 1`).
    public var mappingsDirtied: [MappingDirtied]? {
        guard log.namesMappings else { return nil }
        var rows: [String: MappingDirtied] = [:]
        let sweeps = self.sweeps
        process.forEachSweepNamed { i, names in
            for (name, pages) in names.pages(in: sweeps[i].ranges) where pages > 0 {
                let key = name ?? Self.unnamedMapping
                rows[key, default: MappingDirtied(name: key, pages: 0, sweeps: 0)].pages += pages
                rows[key]!.sweeps += 1
            }
        }
        return rows.values.sorted { a, b in
            if a.pages != b.pages { return a.pages > b.pages }
            if a.sweeps != b.sweeps { return a.sweeps > b.sweeps }
            return a.name < b.name
        }
    }
}
