import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchLog

/// The `mappings` fields (start, exec, sweep): written as docs/format.md
/// shows them, read back, absent from older logs without harm, and the
/// name map readers and the engine keep.
@Suite struct MappingNamesTests {
    static func named(_ start: UInt64, _ end: UInt64, _ name: String) -> NamedMapping {
        NamedMapping(range: AddressRange(start, end), name: name)
    }

    static let heap = named(0x5000_0000, 0x5002_1000, "[heap]")
    static let data = named(0x7f00_0000_0000, 0x7f00_0000_2000, "/usr/lib/libpython3.12.so.1.0")
    static let stack = named(0x7ffc_0000_0000, 0x7ffc_0002_1000, "[stack]")

    @Test func startExecAndSweepEncodeTheirMappingsExactly() {
        let start = JSONLines.encode(
            .start(
                pid: 1, pageSize: 4096, command: [], tracked: ["writable"], timeNs: 2, selectedPages: 35,
                mappings: [Self.heap, Self.stack]))
        #expect(
            start.hasSuffix(
                #","mappings":[{"range":["0x50000000","0x50021000"],"name":"[heap]"},{"range":["0x7ffc00000000","0x7ffc00021000"],"name":"[stack]"}]}"#
            ))
        let exec = JSONLines.encode(.exec(pid: 1, path: "/bin/b", timeNs: 3, mappings: []))
        #expect(exec == #"{"type":"exec","pid":1,"path":"/bin/b","time_ns":3,"mappings":[]}"#)
        var s = SweepRecord(seq: 2, pid: 1, reason: .interval, timeNs: 4, ranges: [], faults: 0)
        s.mappings = [Self.named(0x1000, 0x3000, "[anon]")]
        #expect(
            JSONLines.encode(.sweep(s))
                == #"{"type":"sweep","seq":2,"pid":1,"reason":"interval","time_ns":4,"dirty_pages":0,"faults":0,"ranges":[],"mappings":[{"range":["0x1000","0x3000"],"name":"[anon]"}]}"#
        )
    }

    @Test func withoutMappingsNothingIsWritten() {
        // --schema 1 (the engine passes nil) and a sweep with nothing new.
        let start = JSONLines.encode(
            .start(pid: 1, pageSize: 4096, command: [], tracked: [], timeNs: 2, schema: .v1))
        #expect(!start.contains("mappings"))
        #expect(!JSONLines.encode(.exec(pid: 1, path: "/bin/b", timeNs: 3)).contains("mappings"))
        let s = SweepRecord(seq: 1, pid: 1, reason: .exit, timeNs: 4, ranges: [], faults: 0)
        #expect(!JSONLines.encode(.sweep(s)).contains("mappings"))
    }

    @Test func aLogRoundTripsWithItsNamesPerSweep() throws {
        var grown = SweepRecord(
            seq: 2, pid: 1, reason: .signal, timeNs: 5,
            ranges: [AddressRange(0x5002_0000, 0x5004_0000)], faults: 1)
        grown.mappings = [Self.named(0x5002_1000, 0x5004_1000, "[heap]")]
        let records: [LogRecord] = [
            .start(
                pid: 1, pageSize: 4096, command: ["p"], tracked: ["writable"], timeNs: 2,
                mappings: [Self.heap, Self.data]),
            .sweep(
                SweepRecord(
                    seq: 1, pid: 1, reason: .signal, timeNs: 3,
                    ranges: [AddressRange(0x5000_0000, 0x5000_1000), Self.data.range], faults: 0)),
            .sweep(grown),
            .exec(pid: 1, path: "/bin/b", timeNs: 6, mappings: [Self.named(0x5000_0000, 0x5000_4000, "/bin/b")]),
            .sweep(
                SweepRecord(
                    seq: 3, pid: 1, reason: .exit, timeNs: 7, ranges: [AddressRange(0x5000_0000, 0x5000_2000)],
                    faults: 0)),
            .end(pid: 1, end: .exited(code: 0), sweeps: 3, faults: 1, timeNs: 8),
        ]
        let log = try LogReader.parse(Data(records.map(JSONLines.line).joined().utf8), source: "n.jsonl")
        #expect(log.namesMappings)
        #expect(log.program.namedSets.map(\.beforeSweep) == [0, 2])
        #expect(log.program.namedSets[0].mappings == [Self.heap, Self.data])
        #expect(log.program.sweeps[1].mappings == grown.mappings)
        var seen: [[String?: UInt64]] = []
        log.program.forEachSweepNamed { i, names in seen.append(names.pages(in: log.program.sweeps[i].ranges)) }
        #expect(seen[0] == ["[heap]": 1, "/usr/lib/libpython3.12.so.1.0": 2])
        // Heap growth named by the sweep that found it: 1 page of the old heap, 31 new.
        #expect(seen[1] == ["[heap]": 32])
        // After the exec the same addresses are the new image's.
        #expect(seen[2] == ["/bin/b": 2])
        #expect(log.program.allMappingNames().name(of: RemoteAddress(0x5000_0000)) == "/bin/b")
        #expect(log.program.allMappingNames().name(of: RemoteAddress(0x7f00_0000_1000)) == Self.data.name)
    }

    @Test func anOlderLogHasNoNamesAndReadsAsBefore() throws {
        let old =
            #"{"type":"start","schema":"pagewatch/2","pid":1,"page_size":4096,"command":["p"],"tracked":["writable"],"time_ns":2,"selected_pages":0,"pagewatch_version":"0.9.0"}"#
            + "\n"
            + #"{"type":"exec","pid":1,"path":"/bin/b","time_ns":3}"#
            + "\n"
            + #"{"type":"sweep","seq":1,"pid":1,"reason":"exit","time_ns":4,"dirty_pages":1,"faults":0,"ranges":[["0x1000","0x2000"]]}"#
            + "\n"
        let log = try LogReader.parse(Data(old.utf8), source: "old.jsonl")
        #expect(!log.namesMappings)
        #expect(log.program.namedSets.isEmpty && log.program.sweeps[0].mappings.isEmpty)
        #expect(log.program.execs == ["/bin/b"])
        log.program.forEachSweepNamed { _, names in #expect(names.isEmpty) }
    }

    @Test func aMappingWithoutANameIsAnError() {
        let bad =
            #"{"type":"start","schema":"pagewatch/2","pid":1,"page_size":4096,"command":[],"tracked":[],"time_ns":2,"mappings":[{"range":["0x1000","0x2000"]}]}"#
        #expect(
            throws: LogReadError(
                source: "bad.jsonl", line: 1, problem: .missingField(record: "start mapping", field: "name"))
        ) {
            try LogReader.parse(Data(bad.utf8), source: "bad.jsonl")
        }
    }

    @Test func mapsEntriesNameTheTrackedPagesTheyHold() {
        let maps = [
            Mapping(
                range: AddressRange(0x1000, 0x3000), protection: [.read, .write], isPrivate: true, inode: 5,
                path: "/bin/p"),
            Mapping(range: AddressRange(0x3000, 0x5000), protection: [.read, .write], isPrivate: true),
            Mapping(range: AddressRange(0x5000, 0x6000), protection: [.read, .write], isPrivate: true),
            Mapping(range: AddressRange(0x9000, 0xa000), protection: [.read, .write], isPrivate: true, path: "[heap]"),
            Mapping(
                range: AddressRange(0xa000, 0xb000), protection: [.read, .write], isPrivate: false, inode: 7,
                path: "/tmp/gone", isDeleted: true),
        ]
        // Tracked: part of the file, both anonymous entries (one name), the heap, the deleted file.
        let named = NamedMapping.named(
            tracked: [AddressRange(0x2000, 0x6000), AddressRange(0x9000, 0xb000)], maps: maps)
        #expect(
            named == [
                Self.named(0x2000, 0x3000, "/bin/p"), Self.named(0x3000, 0x6000, "[anon]"),
                Self.named(0x9000, 0xa000, "[heap]"), Self.named(0xa000, 0xb000, "/tmp/gone (deleted)"),
            ])
    }

    /// Pages in no maps entry: left out, or named `unnamed` (the memory
    /// image keeps them), before, between and after the entries.
    @Test func pagesInNoEntryAreLeftOutOrNamedAsAsked() {
        let maps = [
            Mapping(range: AddressRange(0x2000, 0x3000), protection: [.read, .write], isPrivate: true),
            Mapping(range: AddressRange(0x5000, 0x6000), protection: [.read, .write], isPrivate: true, path: "[heap]"),
        ]
        let tracked = [AddressRange(0x1000, 0x7000)]
        #expect(
            NamedMapping.named(tracked: tracked, maps: maps)
                == [Self.named(0x2000, 0x3000, "[anon]"), Self.named(0x5000, 0x6000, "[heap]")])
        #expect(
            NamedMapping.named(tracked: tracked, maps: maps, unnamed: "?") == [
                Self.named(0x1000, 0x2000, "?"), Self.named(0x2000, 0x3000, "[anon]"), Self.named(0x3000, 0x5000, "?"),
                Self.named(0x5000, 0x6000, "[heap]"), Self.named(0x6000, 0x7000, "?"),
            ])
    }

    @Test func updateSaysOnlyWhatAReaderDoesNotKnow() {
        var known = MappingNames([Self.heap, Self.data])
        let grownHeap = Self.named(0x5000_0000, 0x5004_1000, "[heap]")
        let renamed = Self.named(0x7f00_0000_0000, 0x7f00_0000_2000, "[anon]")
        let new = known.update(to: [grownHeap, renamed, Self.stack])
        #expect(new == [Self.named(0x5002_1000, 0x5004_1000, "[heap]"), renamed, Self.stack])
        #expect(known.update(to: [grownHeap, renamed, Self.stack]).isEmpty)
        // Unmapped, then mapped again: said again.
        #expect(known.update(to: [grownHeap]).isEmpty)
        #expect(known.update(to: [grownHeap, Self.stack]) == [Self.stack])
    }

    @Test func overlayNamesOverWhatWasThere() {
        var names = MappingNames([Self.named(0x1000, 0x9000, "[anon]")])
        names.overlay([Self.named(0x3000, 0x4000, "/f"), Self.named(0x8000, 0xa000, "[heap]")])
        #expect(
            names.pieces == [
                Self.named(0x1000, 0x3000, "[anon]"), Self.named(0x3000, 0x4000, "/f"),
                Self.named(0x4000, 0x8000, "[anon]"), Self.named(0x8000, 0xa000, "[heap]"),
            ])
        #expect(names.pages(in: [AddressRange(0x0, 0xb000)]) == [nil: 2, "[anon]": 6, "/f": 1, "[heap]": 2])
    }

    /// A new piece across several old ones (an exec'd image over the old
    /// one's pieces) replaces all it covers and keeps their outer parts.
    @Test func overlayAcrossSeveralPieces() {
        var names = MappingNames([
            Self.named(0x1000, 0x3000, "/a"), Self.named(0x3000, 0x5000, "[anon]"), Self.named(0x6000, 0x8000, "/b"),
        ])
        names.overlay([Self.named(0x2000, 0x7000, "/c"), Self.named(0x9000, 0xa000, "/a")])
        #expect(
            names.pieces == [
                Self.named(0x1000, 0x2000, "/a"), Self.named(0x2000, 0x7000, "/c"), Self.named(0x7000, 0x8000, "/b"),
                Self.named(0x9000, 0xa000, "/a"),
            ])
        // Named alike again: nothing changes, touching pieces stay one.
        names.overlay([Self.named(0x7000, 0x8000, "/b"), Self.named(0x8000, 0x9000, "/b")])
        #expect(names.pieces.map(\.name) == ["/a", "/c", "/b", "/a"])
        #expect(names.pieces[2].range == AddressRange(0x7000, 0x9000))
    }
}
