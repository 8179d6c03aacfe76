import PageWatchAddressSpace
import PageWatchImage
import PageWatchLog
import PageWatchPtrace

/// `--dump DIR`: each sweep's pages copied into the memory image.
///
/// A sweep reads its pages after re-arming them (`sweep`): the process's
/// other threads run meanwhile, and a page one of them writes after its
/// re-arming faults and is in the next increment too. Read before, such a
/// write would be in neither. So the increment of sweep N holds each page
/// as it was at some moment during that sweep, and every later change of it
/// is in a later increment.
extension ProcessTracker {
    func dumpSweep(_ record: SweepRecord, held: UnseenPages) {
        guard let root = config.dumpDirectory, session.dumpFailure == nil else { return }
        do throws(ImageError) {
            if imageWriter == nil {
                let manifest =
                    self === session.main
                    ? ImageManifest(
                        pid: pid, pageSize: Page.size, command: config.command,
                        pagewatchVersion: PageWatchVersion.current) : nil
                imageWriter = try ImageWriter(root: root, pid: pid, manifest: manifest)
            }
            let tracked = PageSet(trackedRangesOfBothBackends)
            let tid = liveThread()
            try imageWriter!.write(
                seq: record.seq, reason: record.reason.rawValue, timeNs: record.timeNs, tracked: tracked,
                pieces: Self.imagePieces(held, maps: attribution.lastMaps),
                read: { range, into in (try? Ptrace.readMemory(tid, range.start, into: into)) == into.count })
        } catch {
            session.dumpFailure = error
            session.giveUpTracking(because: "the memory image could not be written (\(error))")
        }
    }

    /// The sweep's pages by kind, in address order, cut where mappings end
    /// and named as the log names them (the main stack's pieces one
    /// `[stack]`); pages in no mapping maps showed (gone since) `[unknown]`.
    static func imagePieces(_ held: UnseenPages, maps: [Mapping]) -> [(
        range: AddressRange, kind: IndexedRange.Kind, mapping: String
    )] {
        let named = namedMaps(maps)
        let kinds: [(PageSet, IndexedRange.Kind)] = [(held.data, .data), (held.file, .file), (held.zero, .zero)]
        return kinds.flatMap { set, kind in
            NamedMapping.named(tracked: set.ranges, maps: named, unnamed: "[unknown]").map { ($0.range, kind, $0.name) }
        }.sorted { $0.range.start < $1.range.start }
    }
}
