import Foundation
import Testing
import PageWatchAddressSpace
import PageWatchEngine
import PageWatchAttribution
@testable import PageWatchReport

@Suite struct JSONLinesTests {
    @Test func encodesTheStartRecordExactly() {
        let line = JSONLines.encode(.start(pid: 42, pageSize: 4096, command: ["/bin/echo", "a \"b\"\n"],
                                           tracked: ["writable", "0x1000-0x2000"], timeNs: 7, selectedPages: 3))
        #expect(line == #"{"type":"start","schema":"pagewatch/1","pid":42,"page_size":4096,"command":["/bin/echo","a \"b\"\n"],"tracked":["writable","0x1000-0x2000"],"time_ns":7,"selected_pages":3}"#)
    }

    @Test func encodesSweepAndEnd() {
        let s = SweepRecord(seq: 3, pid: 42, reason: .signal, timeNs: 9,
                            ranges: [AddressRange(0x1000, 0x3000), AddressRange(0x10000, 0x11000)], faults: 2)
        #expect(JSONLines.encode(.sweep(s)) == #"{"type":"sweep","seq":3,"pid":42,"reason":"signal","time_ns":9,"dirty_pages":3,"faults":2,"ranges":[["0x1000","0x3000"],["0x10000","0x11000"]]}"#)
        #expect(JSONLines.encode(.end(pid: 42, end: .exited(code: 3), sweeps: 4, faults: 5, timeNs: 10))
                == #"{"type":"end","pid":42,"exit_status":3,"sweeps":4,"faults":5,"time_ns":10}"#)
        #expect(JSONLines.encode(.end(pid: 42, end: .killed(signal: 11), sweeps: 1, faults: 0, timeNs: 10))
                == #"{"type":"end","pid":42,"exit_status":139,"signal":11,"sweeps":1,"faults":0,"time_ns":10}"#)
    }

    @Test func encodesSweepSitesAndTheLogLine() {
        let site = WriteSite(pages: 1, faults: 2, ranges: [AddressRange(0x0, 0x1000)],
                             frames: [Frame(ip: 0, function: "[kernel] read"), Frame(ip: 0xabc, function: "main")])
        let s = SweepRecord(seq: 1, pid: 7, reason: .exit, timeNs: 5,
                            ranges: [AddressRange(0x0, 0x1000), AddressRange(0x7fff_ffff_f000, 0x8000_0000_0000)], faults: 2,
                            sites: [site, WriteSite(pages: 0, faults: 1, ranges: [], frames: [])])
        let want = #"{"type":"sweep","seq":1,"pid":7,"reason":"exit","time_ns":5,"dirty_pages":2,"faults":2,"#
            + #""ranges":[["0x0","0x1000"],["0x7ffffffff000","0x800000000000"]],"sites":["#
            + #"{"pages":1,"faults":2,"frames":[{"function":"[kernel] read"},{"ip":"0xabc","function":"main"}],"ranges":[["0x0","0x1000"]]},"#
            + #"{"pages":0,"faults":1,"frames":[],"ranges":[]}]}"#
        #expect(JSONLines.encode(.sweep(s)) == want)
        #expect(JSONLines.line(.sweep(s)) == want + "\n")
        #expect(JSONLines.line(.fork(pid: 43, parent: 42, timeNs: 11)) == JSONLines.encode(.fork(pid: 43, parent: 42, timeNs: 11)) + "\n")
    }

    @Test func encodesForkAndExitOfFollowedProcesses() {
        #expect(JSONLines.encode(.fork(pid: 43, parent: 42, timeNs: 11))
                == #"{"type":"fork","pid":43,"parent":42,"time_ns":11}"#)
        #expect(JSONLines.encode(.exit(pid: 43, end: .exited(code: 5), sweeps: 3, faults: 2, timeNs: 12))
                == #"{"type":"exit","pid":43,"exit_status":5,"sweeps":3,"faults":2,"time_ns":12}"#)
    }

    @Test func summaryListsFollowedProcessesApartFromTheProgram() {
        var summary = Summary()
        summary.add(.start(pid: 5, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0))
        summary.add(.fork(pid: 6, parent: 5, timeNs: 1))
        summary.add(.sweep(SweepRecord(seq: 1, pid: 6, reason: .exit, timeNs: 2, ranges: [AddressRange(0, 3 * 4096)], faults: 2)))
        summary.add(.exit(pid: 6, end: .exited(code: 5), sweeps: 1, faults: 2, timeNs: 3))
        summary.add(.sweep(SweepRecord(seq: 1, pid: 5, reason: .exit, timeNs: 4, ranges: [AddressRange(0, 4096)], faults: 1)))
        summary.add(.end(pid: 5, end: .exited(code: 0), sweeps: 1, faults: 1, timeNs: 5))
        let text = summary.render()
        #expect(text.contains("total: 1 sweeps, 1 dirty pages"))
        #expect(text.contains("process 6 (forked by 5): 3 dirty pages, 2 write faults, exited with status 5"))
        #expect(text.contains("program exited with status 0"))
    }

    @Test func summaryOfAnAttachSaysSoAndEndsWithTheDetach() {
        var summary = Summary()
        summary.add(.start(pid: 7, pageSize: 4096, command: ["server"], tracked: ["writable"], timeNs: 0))
        summary.add(.attach(pid: 7, threads: 3, timeNs: 1))
        summary.add(.sweep(SweepRecord(seq: 1, pid: 7, reason: .attach, timeNs: 2, ranges: [AddressRange(0, 4096)], faults: 0)))
        summary.add(.sweep(SweepRecord(seq: 2, pid: 7, reason: .detach, timeNs: 3, ranges: [], faults: 0)))
        summary.add(.detach(pid: 7, sweeps: 2, faults: 0, timeNs: 4))
        let text = summary.render()
        #expect(text.hasPrefix("pagewatch: attached to pid 7 server\n"))
        #expect(text.contains("detached; the program runs on"))
        #expect(JSONLines.encode(.detach(pid: 7, sweeps: 2, faults: 0, timeNs: 4))
                == #"{"type":"detach","pid":7,"sweeps":2,"faults":0,"time_ns":4}"#)
        #expect(JSONLines.encode(.attach(pid: 7, threads: 3, timeNs: 1)) == #"{"type":"attach","pid":7,"threads":3,"time_ns":1}"#)
    }

    @Test func escapedStringsRoundTripThroughAJSONParser() throws {
        let nasty = "tab\t nl\n cr\r quote\" backslash\\ ctl\u{01}\u{1f} unicode é ✓"
        let line = JSONLines.encode(.exec(pid: 1, path: nasty, timeNs: 2))
        let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        #expect(obj?["path"] as? String == nasty)
        #expect(obj?["type"] as? String == "exec")
    }

    @Test func summaryShowsEverySweepAndTheEnd() {
        var summary = Summary()
        summary.add(.start(pid: 5, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0))
        summary.add(.sweep(SweepRecord(seq: 1, pid: 5, reason: .interval, timeNs: 1,
                                       ranges: [AddressRange(0, 256 * 4096)], faults: 0)))
        summary.add(.sweep(SweepRecord(seq: 2, pid: 5, reason: .exit, timeNs: 2,
                                       ranges: [AddressRange(0, 4096)], faults: 1)))
        summary.add(.end(pid: 5, end: .killed(signal: 9), sweeps: 2, faults: 1, timeNs: 3))
        let text = summary.render()
        #expect(text.contains("      1  interval          256       1.0        0       1"))
        #expect(text.contains("total: 2 sweeps, 257 dirty pages (1.0 MiB), 1 write faults"))
        #expect(text.contains("program killed by SIGKILL"))
    }
}
