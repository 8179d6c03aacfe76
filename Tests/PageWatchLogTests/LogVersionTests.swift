import Foundation
import Testing
@testable import PageWatchLog

/// `pagewatch_version`, added to `start` within pagewatch/1: written by
/// every log, read when present, and its absence (older logs) is no error.
@Suite struct LogVersionTests {
    static let start = LogRecord.start(pid: 1, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 2)

    @Test func theStartRecordCarriesTheVersionAndTheReaderReadsIt() throws {
        let log = try LogReader.parse(Data(JSONLines.line(Self.start).utf8), source: "v.jsonl")
        #expect(log.pagewatchVersion == PageWatchVersion.current)
        #expect(!PageWatchVersion.current.isEmpty)
    }

    @Test func aLogWithoutItReadsAsBefore() throws {
        let old =
            #"{"type":"start","schema":"pagewatch/1","pid":1,"page_size":4096,"command":["prog"],"tracked":["writable"],"time_ns":2,"selected_pages":0}"#
        let log = try LogReader.parse(Data((old + "\n").utf8), source: "old.jsonl")
        #expect(log.pagewatchVersion == nil)
        #expect(log.pid == 1 && log.selectedPages == 0)
    }

    @Test func aVersionThatIsNotAStringIsNamed() {
        let bad =
            #"{"type":"start","schema":"pagewatch/1","pid":1,"page_size":4096,"command":[],"tracked":[],"time_ns":2,"pagewatch_version":9}"#
        #expect(
            throws: LogReadError(
                source: "bad.jsonl", line: 1,
                problem: .wrongType(record: "start", field: "pagewatch_version", expected: "a string"))
        ) {
            try LogReader.parse(Data(bad.utf8), source: "bad.jsonl")
        }
    }
}
