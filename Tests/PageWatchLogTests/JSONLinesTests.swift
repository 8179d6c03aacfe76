import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchLog

@Suite struct JSONLinesTests {
    @Test func encodesTheStartRecordExactly() {
        let line = JSONLines.encode(
            .start(
                pid: 42, pageSize: 4096, command: ["/bin/echo", "a \"b\"\n"],
                tracked: ["writable", "0x1000-0x2000"], timeNs: 7, selectedPages: 3))
        #expect(
            line
                == #"{"type":"start","schema":"pagewatch/2","pid":42,"page_size":4096,"command":["/bin/echo","a \"b\"\n"],"tracked":["writable","0x1000-0x2000"],"time_ns":7,"selected_pages":3,"pagewatch_version":"\#(PageWatchVersion.current)"}"#
        )
        // `--schema 1` names the older schema; nothing else in the record changes.
        let v1 = JSONLines.encode(
            .start(pid: 1, pageSize: 4096, command: [], tracked: [], timeNs: 2, selectedPages: 0, schema: .v1))
        #expect(v1.hasPrefix(#"{"type":"start","schema":"pagewatch/1","pid":1,"#))
    }

    @Test func encodesZeroAndFileRangesAfterTheSweepsOwn() {
        var s = SweepRecord(
            seq: 1, pid: 42, reason: .attach, timeNs: 9, ranges: [AddressRange(0x1000, 0x2000)], faults: 0)
        s.zeroRanges = [AddressRange(0x2000, 0x4000)]
        s.fileRanges = [AddressRange(0x8000, 0x9000)]
        #expect(
            JSONLines.encode(.sweep(s))
                == #"{"type":"sweep","seq":1,"pid":42,"reason":"attach","time_ns":9,"dirty_pages":1,"faults":0,"ranges":[["0x1000","0x2000"]],"zero_pages":2,"zero_ranges":[["0x2000","0x4000"]],"file_pages":1,"file_ranges":[["0x8000","0x9000"]]}"#
        )
    }

    @Test func encodesSweepAndEnd() {
        let s = SweepRecord(
            seq: 3, pid: 42, reason: .signal, timeNs: 9,
            ranges: [AddressRange(0x1000, 0x3000), AddressRange(0x10000, 0x11000)], faults: 2)
        #expect(
            JSONLines.encode(.sweep(s))
                == #"{"type":"sweep","seq":3,"pid":42,"reason":"signal","time_ns":9,"dirty_pages":3,"faults":2,"ranges":[["0x1000","0x3000"],["0x10000","0x11000"]]}"#
        )
        #expect(
            JSONLines.encode(.end(pid: 42, end: .exited(code: 3), sweeps: 4, faults: 5, timeNs: 10))
                == #"{"type":"end","pid":42,"exit_status":3,"sweeps":4,"faults":5,"time_ns":10}"#)
        #expect(
            JSONLines.encode(.end(pid: 42, end: .killed(signal: 11), sweeps: 1, faults: 0, timeNs: 10))
                == #"{"type":"end","pid":42,"exit_status":139,"signal":11,"sweeps":1,"faults":0,"time_ns":10}"#)
    }

    @Test func encodesSweepSitesAndTheLogLine() {
        let site = WriteSite(
            pages: 1, faults: 2, ranges: [AddressRange(0x0, 0x1000)],
            frames: [Frame(ip: 0, function: "[kernel] read"), Frame(ip: 0xabc, function: "main")])
        let s = SweepRecord(
            seq: 1, pid: 7, reason: .exit, timeNs: 5,
            ranges: [AddressRange(0x0, 0x1000), AddressRange(0x7fff_ffff_f000, 0x8000_0000_0000)], faults: 2,
            sites: [site, WriteSite(pages: 0, faults: 1, ranges: [], frames: [])])
        let want =
            #"{"type":"sweep","seq":1,"pid":7,"reason":"exit","time_ns":5,"dirty_pages":2,"faults":2,"#
            + #""ranges":[["0x0","0x1000"],["0x7ffffffff000","0x800000000000"]],"sites":["#
            + #"{"pages":1,"faults":2,"frames":[{"function":"[kernel] read"},{"ip":"0xabc","function":"main"}],"ranges":[["0x0","0x1000"]]},"#
            + #"{"pages":0,"faults":1,"frames":[],"ranges":[]}]}"#
        #expect(JSONLines.encode(.sweep(s)) == want)
        #expect(JSONLines.line(.sweep(s)) == want + "\n")
        #expect(
            JSONLines.line(.fork(pid: 43, parent: 42, timeNs: 11)) == JSONLines.encode(
                .fork(pid: 43, parent: 42, timeNs: 11)) + "\n")
    }

    @Test func encodesForkAndExitOfFollowedProcesses() {
        #expect(
            JSONLines.encode(.fork(pid: 43, parent: 42, timeNs: 11))
                == #"{"type":"fork","pid":43,"parent":42,"time_ns":11}"#)
        #expect(
            JSONLines.encode(.exit(pid: 43, end: .exited(code: 5), sweeps: 3, faults: 2, timeNs: 12))
                == #"{"type":"exit","pid":43,"exit_status":5,"sweeps":3,"faults":2,"time_ns":12}"#)
    }

    @Test func escapedStringsRoundTripThroughAJSONParser() throws {
        let nasty = "tab\t nl\n cr\r quote\" backslash\\ ctl\u{01}\u{1f} unicode é ✓"
        let line = JSONLines.encode(.exec(pid: 1, path: nasty, timeNs: 2))
        let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        #expect(obj?["path"] as? String == nasty)
        #expect(obj?["type"] as? String == "exec")
    }
}

@Suite struct FrameOriginTests {
    /// Format rule 14: `jit` and `found_by` only when they say something, read back alike.
    @Test func writesAndReadsJITAndFramePointerMarks() throws {
        let frames = [
            Frame(ip: 0x7f00_0000_1000, function: "JS:*fill /w.js:1:1", jit: true),
            Frame(ip: 0x7f00_0000_2000, foundByFramePointer: true),
            Frame(ip: 0x1500, module: "/bin/prog", offset: 0x500, function: "main", foundByFramePointer: true),
            Frame(ip: 0x1600, module: "/bin/prog", offset: 0x600, function: "_start"),
        ]
        #expect(
            frames.map(JSONLines.frame) == [
                #"{"ip":"0x7f0000001000","function":"JS:*fill /w.js:1:1","jit":true}"#,
                #"{"ip":"0x7f0000002000","found_by":"fp"}"#,
                #"{"ip":"0x1500","function":"main","module":"/bin/prog","offset":"0x500","found_by":"fp"}"#,
                #"{"ip":"0x1600","function":"_start","module":"/bin/prog","offset":"0x600"}"#,
            ])
        let site = WriteSite(pages: 1, faults: 1, ranges: [AddressRange(0x1000, 0x2000)], frames: frames)
        let records: [LogRecord] = [
            .start(pid: 1, pageSize: 4096, command: ["p"], tracked: [], timeNs: 1),
            .sweep(
                SweepRecord(seq: 1, pid: 1, reason: .exit, timeNs: 2, ranges: site.ranges, faults: 1, sites: [site])),
            .end(pid: 1, end: .exited(code: 0), sweeps: 1, faults: 1, timeNs: 3),
        ]
        let text = records.map { JSONLines.line($0) }.joined()
        let log = try LogReader.parse(Data(text.utf8), source: "origins.jsonl")
        #expect(log.program.sweeps.first?.sites?.first?.frames == frames)
        // Values a later version may add are not ours: no mark.
        let other = text.replacingOccurrences(of: #""found_by":"fp""#, with: #""found_by":"guess""#)
            .replacingOccurrences(of: #""jit":true"#, with: #""jit":1"#)
        let read = try LogReader.parse(Data(other.utf8), source: "other.jsonl").program.sweeps.first?.sites?.first?
            .frames
        #expect(read?.contains { $0.jit || $0.foundByFramePointer } == false)
    }

    /// Rule 16: `exec` names the new image's backends; the reader keeps
    /// those of `start` and of each `exec`, with the sweep they begin at.
    @Test func execRecordsNameTheBackendsOfTheNewImage() throws {
        let uffd = ["anonymous": "uffd", "file": "ptrace"]
        let ptrace = ["anonymous": "ptrace", "file": "ptrace"]
        let exec = JSONLines.encode(.exec(pid: 1, path: "/bin/b", timeNs: 3, backends: ptrace))
        #expect(
            exec
                == #"{"type":"exec","pid":1,"path":"/bin/b","time_ns":3,"backends":{"anonymous":"ptrace","file":"ptrace"}}"#
        )
        #expect(!JSONLines.encode(.exec(pid: 1, path: "/bin/b", timeNs: 3)).contains("backends"))
        let records: [LogRecord] = [
            .start(pid: 1, pageSize: 4096, command: ["a"], tracked: ["writable"], timeNs: 2, backends: uffd),
            .sweep(SweepRecord(seq: 1, pid: 1, reason: .signal, timeNs: 3, ranges: [], faults: 0)),
            .exec(pid: 1, path: "/bin/b", timeNs: 4, backends: ptrace),
            .sweep(SweepRecord(seq: 2, pid: 1, reason: .exit, timeNs: 5, ranges: [], faults: 0)),
            .end(pid: 1, end: .exited(code: 0), sweeps: 2, faults: 0, timeNs: 6),
        ]
        let log = try LogReader.parse(Data(records.map(JSONLines.line).joined().utf8), source: "b.jsonl")
        #expect(log.program.backends.map(\.beforeSweep) == [0, 1])
        #expect(log.program.backends.map(\.backends) == [uffd, ptrace])
        let bad =
            #"{"type":"start","schema":"pagewatch/2","pid":1,"page_size":4096,"command":[],"tracked":[],"time_ns":2,"backends":{"anonymous":1}}"#
        #expect(throws: LogReadError.self) { try LogReader.parse(Data((bad + "\n").utf8), source: "bad.jsonl") }
    }
}
