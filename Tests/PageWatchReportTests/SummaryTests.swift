import Testing
import PageWatchAddressSpace
import PageWatchLog
@testable import PageWatchReport

@Suite struct SummaryTests {
    @Test func summaryListsFollowedProcessesApartFromTheProgram() {
        var summary = Summary()
        summary.add(.start(pid: 5, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0))
        summary.add(.fork(pid: 6, parent: 5, timeNs: 1))
        summary.add(
            .sweep(
                SweepRecord(seq: 1, pid: 6, reason: .exit, timeNs: 2, ranges: [AddressRange(0, 3 * 4096)], faults: 2)))
        summary.add(.exit(pid: 6, end: .exited(code: 5), sweeps: 1, faults: 2, timeNs: 3))
        summary.add(
            .sweep(SweepRecord(seq: 1, pid: 5, reason: .exit, timeNs: 4, ranges: [AddressRange(0, 4096)], faults: 1)))
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
        summary.add(
            .sweep(SweepRecord(seq: 1, pid: 7, reason: .attach, timeNs: 2, ranges: [AddressRange(0, 4096)], faults: 0)))
        summary.add(.sweep(SweepRecord(seq: 2, pid: 7, reason: .detach, timeNs: 3, ranges: [], faults: 0)))
        summary.add(.detach(pid: 7, sweeps: 2, faults: 0, timeNs: 4))
        let text = summary.render()
        #expect(text.hasPrefix("pagewatch: attached to pid 7 server\n"))
        #expect(text.contains("detached; the program runs on"))
        #expect(
            JSONLines.encode(.detach(pid: 7, sweeps: 2, faults: 0, timeNs: 4))
                == #"{"type":"detach","pid":7,"sweeps":2,"faults":0,"time_ns":4}"#)
        #expect(
            JSONLines.encode(.attach(pid: 7, threads: 3, timeNs: 1))
                == #"{"type":"attach","pid":7,"threads":3,"time_ns":1}"#)
    }

    /// Beyond 20 sweeps, the busiest 19 and the last, in order, a line for
    /// the rest; the rate and the top five writers.
    @Test func summaryFoldsQuietSweepsAndNamesTopWriters() {
        var summary = Summary()
        summary.add(.start(pid: 5, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0))
        let writers = (0..<7).map { [Frame(ip: 0x1000 + UInt64($0), function: "w\($0)")] }
        for seq in 1...30 {
            // Sweep k dirties k pages (sweep 30: the exit, 1 page), written by w(k % 7).
            let pages = UInt64(seq == 30 ? 1 : seq)
            let site = WriteSite(
                pages: pages, faults: Int(pages), ranges: [AddressRange(0, pages * 4096)], frames: writers[seq % 7])
            summary.add(
                .sweep(
                    SweepRecord(
                        seq: seq, pid: 5, reason: seq == 30 ? .exit : .interval, timeNs: UInt64(seq) * 100_000_000,
                        ranges: [AddressRange(0, pages * 4096)], faults: Int(pages), sites: [site])))
        }
        summary.add(.end(pid: 5, end: .exited(code: 0), sweeps: 30, faults: 0, timeNs: 3_100_000_000))
        let lines = summary.render().split(separator: "\n").map(String.init)
        let rows = lines.filter { $0.contains(" interval ") || $0.contains(" exit ") }.compactMap {
            Int($0.split(separator: " ").first ?? "")
        }
        // The 19 busiest (sweeps 11 to 29) and the last, in order.
        #expect(rows == Array(11...30))
        #expect(
            lines.contains("  ... 10 quieter sweeps not shown: --output LOG, then pagewatch report LOG lists every one")
        )
        // Sweeps 2-30: 435 pages over the 2.9 s from sweep 1 to sweep 30.
        #expect(lines.contains { $0.hasPrefix("  rate: 150.0 pages/s (0.6 MiB/s) from sweep 1 to sweep 30") })
        #expect(lines.contains("  top writers (of 7 call stacks):"))
        // w6 wrote sweeps 6, 13, 20, 27: 66 pages of 436.
        #expect(lines.contains { $0.hasPrefix("          66   15.1%  w6") })
        #expect(lines.filter { $0.contains("%  w") }.count == 5)
    }

    @Test func summaryShowsEverySweepAndTheEnd() {
        var summary = Summary()
        summary.add(.start(pid: 5, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0))
        summary.add(
            .sweep(
                SweepRecord(
                    seq: 1, pid: 5, reason: .interval, timeNs: 1,
                    ranges: [AddressRange(0, 256 * 4096)], faults: 0)))
        summary.add(
            .sweep(
                SweepRecord(
                    seq: 2, pid: 5, reason: .exit, timeNs: 2,
                    ranges: [AddressRange(0, 4096)], faults: 1)))
        summary.add(.end(pid: 5, end: .killed(signal: 9), sweeps: 2, faults: 1, timeNs: 3))
        let text = summary.render()
        #expect(text.contains("      1  interval          256       1.0        0       1"))
        #expect(text.contains("total: 2 sweeps, 257 dirty pages (1.0 MiB), 1 write faults"))
        #expect(text.contains("program killed by SIGKILL"))
    }
}
