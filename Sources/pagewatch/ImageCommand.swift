import ArgumentParser
import Glibc
import PageWatchAddressSpace
import PageWatchImage
import PageWatchReport

/// `pagewatch image`: reads a memory image written by `--dump DIR`. Only
/// parsing and output here; the image is PageWatchImage's.
struct Image: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a memory image written by --dump: show, build, read, verify.",
        discussion: """
            Sweep 1 of an image is a full image of the tracked memory, each later sweep an \
            increment; the memory at sweep N is rebuilt from them (docs/image-format.md).

            Exit status: 0; 1 when the image cannot be read, does not hold what is asked, or \
            (verify) is not sound; 2 for a usage error.
            """,
        subcommands: [Show.self, Build.self, Read.self, Verify.self])

    struct Selection: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("The process (default: the program).", valueName: "PID"))
        var pid: Int32?

        @Argument(help: ArgumentHelp("The image's directory (--dump DIR).", valueName: "DIR"))
        var directory: String

        func open() -> (ImageDirectory, Int32) {
            do {
                let image = try ImageDirectory(path: directory)
                return (image, pid ?? image.manifest.pid)
            } catch {
                fail(error.description, status: 1)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The image's processes and sweeps: pages held by kind, bytes, mappings.")

        @OptionGroup var selection: Selection

        func pad(_ s: String, _ width: Int) -> String { Format.padLeft(s, width) }

        func run() throws {
            let (image, _) = selection.open()
            var out = ["image     \(image.path), \(image.manifest.schema), page size \(image.manifest.pageSize)"]
            out.append("program   \(image.manifest.command.joined(separator: " ")) (pid \(image.manifest.pid))")
            for pid in selection.pid.map({ [$0] }) ?? image.pids() {
                let sweeps: [SweepIndex]
                do { sweeps = try image.sweeps(pid: pid) } catch { fail(error.description, status: 1) }
                out.append("")
                out.append("pid \(pid): \(sweeps.count) sweep(s)")
                out.append("  seq  reason     tracked     data     file     zero   gone        MiB  mappings")
                for s in sweeps {
                    let pages = { (kind: IndexedRange.Kind) in
                        s.ranges.filter { $0.kind == kind }.reduce(UInt64(0)) { $0 + $1.range.range.pageCount }
                    }
                    let tracked = s.tracked.reduce(UInt64(0)) { $0 + $1.range.pageCount }
                    let gone = s.gone.reduce(UInt64(0)) { $0 + $1.range.pageCount } + pages(.gone)
                    var seen: [String] = []
                    for r in s.ranges where r.kind != .zero && !seen.contains(r.mapping) { seen.append(r.mapping) }
                    let mappings =
                        seen.prefix(4).joined(separator: ", ") + (seen.count > 4 ? ", +\(seen.count - 4)" : "")
                    out.append(
                        pad(String(s.seq), 5) + "  " + s.reason.padding(toLength: 9, withPad: " ", startingAt: 0)
                            + pad(String(tracked), 9) + pad(String(pages(.data)), 9) + pad(String(pages(.file)), 9)
                            + pad(String(pages(.zero)), 9) + pad(String(gone), 7)
                            + pad(Format.fixed(Double(s.pagesBytes) / 1_048_576, 2), 11) + "  " + mappings)
                }
            }
            writeAll(STDOUT_FILENO, out.joined(separator: "\n") + "\n")
        }
    }

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The memory at sweep N as one file (the held pages in address order) plus FILE.index.json.")

        @OptionGroup var selection: Selection

        @Option(name: .long, help: ArgumentHelp("The sweep.", valueName: "N"))
        var at: Int

        @Option(name: [.customShort("o"), .long], help: ArgumentHelp("The file to write.", valueName: "FILE"))
        var output: String

        func run() throws {
            let (image, pid) = selection.open()
            do {
                let built = try image.build(pid: pid, at: at, output: output)
                writeAll(
                    STDERR_FILENO,
                    "pagewatch: \(output): \(built.pages) pages of pid \(pid) at sweep \(at) in \(built.runs) run(s); their addresses in \(output).index.json\n"
                )
            } catch {
                fail(error.description, status: 1)
            }
        }
    }

    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The bytes of an address range as they were at sweep N, raw.")

        @OptionGroup var selection: Selection

        @Option(name: .long, help: ArgumentHelp("The sweep.", valueName: "N"))
        var at: Int

        @Option(
            name: [.customShort("o"), .long], help: ArgumentHelp("Write here instead of stdout.", valueName: "FILE"))
        var output: String?

        @Argument(help: ArgumentHelp("The range, 0xSTART-0xEND (half-open).", valueName: "RANGE"))
        var range: String

        var addresses: AddressRange? { AddressRange(parsing: range) }

        func validate() throws {
            if addresses == nil {
                throw ValidationError("invalid range '\(range)' (expected 0xSTART-0xEND, START < END)")
            }
        }

        func run() throws {
            let (image, pid) = selection.open()
            let bytes: [UInt8]
            do { bytes = try image.read(pid: pid, at: at, range: addresses!) } catch {
                fail(error.description, status: 1)
            }
            writeOutput(bytes, to: output, what: "the bytes")
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every range's checksum and that the chain of increments is complete.")

        @OptionGroup var selection: Selection

        func run() throws {
            let (image, _) = selection.open()
            let (problems, processes, sweeps) = image.verify()
            if problems.isEmpty {
                writeAll(STDOUT_FILENO, "\(image.path): sound (\(processes) process(es), \(sweeps) sweep(s))\n")
                return
            }
            writeAll(STDERR_FILENO, problems.map { "pagewatch: \(image.path): \($0)\n" }.joined())
            throw ExitCode(1)
        }
    }
}
