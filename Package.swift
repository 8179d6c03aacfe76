// swift-tools-version:6.1
import Foundation
import PackageDescription

// Layers, lowest first; each module imports only modules above it in this list.
//   CPtrace                 thin C: variadic ptrace, fork/exec launcher, waitpid, process_vm_*
//   CLibUnwind, CLibDW      system libraries: libunwind-ptrace (remote unwinding), elfutils libdw (DWARF lines)
//   CUnwind                 thin C: libunwind's macro API and its accessor callbacks (a process_vm_readv page cache)
//   PageWatchAddressSpace   pure Swift: RemoteAddress, AddressRange, Mapping, maps parser, PageSet
//   PageWatchImage          pure Swift: the memory image of --dump (format, writer, reader, rebuild, XXH64)
//   PageWatchLog            pure Swift: the log's records (sweeps, write sites, frames), JSON Lines out and in, signal names
//   PageWatchPtrace         Tracee, StopEvent, RemoteSyscall, per-arch registers
//   PageWatchAttribution    Unwinder (the writer's call stack at a stop), Symbolizer (ELF symbols, demangling, lines)
//   PageWatchEngine         selection, tracked regions, the event loop, sweeps, injection and
//                           attach policy (slots, guardian state; CPtrace for its shared memory)
//   PageWatchReport         the human summary and `pagewatch report` (text, folded, html); reads logs only, no ptrace
//   PageWatchKit            the library for test authors: run a program, get its write events and sweeps
//   pagewatch               the CLI (swift-argument-parser), thin

/// One fixture of fixtures/fixtures.txt: its name, language and build options.
struct FixtureSpec {
    var name: String
    var language = "c"
    var cFlags: [String] = []
    var libraries: [String] = []
    var linkerFlags: [String] = []

    init(line: Substring) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        name = String(words[0])
        for word in words.dropFirst() {
            let parts = word.split(separator: "=", maxSplits: 1)
            let values = parts.count == 2 ? parts[1].split(separator: ",").map(String.init) : []
            switch parts[0] {
            case "lang": language = values.first ?? "c"
            case "cflags": cFlags = values
            case "libs": libraries = values
            case "ldflags": linkerFlags = values
            default: fatalError("fixtures/fixtures.txt: unknown option \(word) of \(name)")
            }
        }
    }
}

/// The fixture list, read from the one file the tests read too; nil where
/// the manifest is read without its folder. SwiftPM reads a dependency's
/// manifest from git, alone, to learn what a version tag holds: such a
/// package has no fixtures and no test targets, which only its own build
/// needs (a fixture list that cannot be read in a checkout still fails).
let fixtureList: String? = {
    let path = Context.packageDirectory + "/fixtures/fixtures.txt"
    if let text = try? String(contentsOfFile: path, encoding: .utf8) { return text }
    if FileManager.default.fileExists(atPath: Context.packageDirectory + "/Sources") {
        fatalError("cannot read \(path)")
    }
    return nil
}()

let fixtures: [FixtureSpec] = (fixtureList ?? "").split(separator: "\n")
    .map { $0.trimmingCharacters(in: .whitespaces) }
    .filter { !$0.isEmpty && !$0.hasPrefix("#") }
    .map { FixtureSpec(line: Substring($0)) }

let fixtureNames = fixtures.filter { $0.language == "c" }.map(\.name)
let cxxFixtureNames = fixtures.filter { $0.language == "cxx" }.map(\.name)
let swiftFixtureNames = fixtures.filter { $0.language == "swift" }.map(\.name)

/// Everything in fixtures/: each C or C++ fixture's target excludes all of it but its own source.
let fixtureFolderEntries: [String] = {
    let folder = Context.packageDirectory + "/fixtures"
    return ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
}()

let fixtureTargets: [Target] =
    fixtures.filter { $0.language != "swift" }.map { fixture in
        let source = fixture.name + (fixture.language == "cxx" ? ".cpp" : ".c")
        let flags: [String] = ["-O1", "-Wall"] + fixture.cFlags
        return .executableTarget(
            name: fixture.name,
            path: "fixtures",
            exclude: fixtureFolderEntries.filter { $0 != source },
            sources: [source],
            cSettings: [.unsafeFlags(flags)],
            cxxSettings: [.unsafeFlags(flags)],
            linkerSettings: (["pthread"] + fixture.libraries).map { LinkerSetting.linkedLibrary($0) }
                + (fixture.linkerFlags.isEmpty ? [] : [.unsafeFlags(fixture.linkerFlags)])
        )
    }
    + swiftFixtureNames.map { name in
        .executableTarget(name: name, path: "fixtures/\(name)")
    }

/// The tests, and the fixtures they run.
let testTargets: [Target] = [
    .testTarget(name: "PageWatchAddressSpaceTests", dependencies: ["PageWatchAddressSpace"]),
    .testTarget(
        name: "PageWatchPtraceTests",
        dependencies: [
            "PageWatchPtrace", "PageWatchEngine", "fx_blocked_read", "fx_sleeper", "fx_futex_wait",
            "fx_sigaltstack",
        ]),
    .testTarget(
        name: "PageWatchAttributionTests",
        dependencies: ["PageWatchAttribution", "PageWatchPtrace", "PageWatchLog", "CUnwind", "fx_callsites"]),
    .testTarget(name: "PageWatchEngineTests", dependencies: ["PageWatchEngine", "PageWatchLog"]),
    .testTarget(name: "PageWatchLogTests", dependencies: ["PageWatchLog"]),
    .testTarget(name: "PageWatchImageTests", dependencies: ["PageWatchImage"]),
    .testTarget(name: "PageWatchReportTests", dependencies: ["PageWatchReport", "PageWatchLog"]),
    .testTarget(
        name: "PageWatchKitTests",
        dependencies: [
            "PageWatchKit", "fx_writers", "fx_phases", "fx_syscall_out", "fx_threads", "fx_exit3", "fx_sleeper",
        ]),
    .testTarget(
        name: "EndToEndTests",
        dependencies: ["pagewatch"] + (fixtureNames + cxxFixtureNames + swiftFixtureNames).map { .target(name: $0) }
    ),
]

let package = Package(
    name: "PageWatch",
    products: [
        .executable(name: "pagewatch", targets: ["pagewatch"]),
        .library(name: "PageWatchKit", targets: ["PageWatchKit"]),
    ],
    // The `pagewatch` command alone needs swift-argument-parser. A package that
    // depends on PageWatchKit with `traits: []` does not fetch it (docs/library.md).
    traits: [
        .trait(name: "CommandLineTool", description: "The pagewatch command (swift-argument-parser)"),
        .default(enabledTraits: ["CommandLineTool"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
    ],
    targets: [
        .target(name: "CPtrace"),
        .target(name: "PageWatchAddressSpace"),
        .target(name: "PageWatchLog", dependencies: ["PageWatchAddressSpace"]),
        .target(name: "PageWatchPtrace", dependencies: ["CPtrace", "PageWatchAddressSpace", "PageWatchLog"]),
        .systemLibrary(name: "CLibUnwind", pkgConfig: "libunwind-ptrace", providers: [.apt(["libunwind-dev"])]),
        .systemLibrary(name: "CLibDW", pkgConfig: "libdw", providers: [.apt(["libdw-dev"])]),
        .target(
            name: "CUnwind",
            dependencies: ["CLibUnwind"],
            // Debian's libunwind-ptrace.so uses lzma without linking it:
            // https://github.com/libunwind/libunwind/issues/586
            linkerSettings: [.linkedLibrary("lzma")]
        ),
        .target(
            name: "PageWatchAttribution",
            dependencies: ["CUnwind", "CLibDW", "PageWatchPtrace", "PageWatchAddressSpace", "PageWatchLog"]),
        .target(
            name: "PageWatchEngine",
            dependencies: [
                "PageWatchAttribution", "PageWatchPtrace", "PageWatchAddressSpace", "PageWatchLog", "PageWatchImage",
                "CPtrace",
            ]),
        .target(name: "PageWatchImage", dependencies: ["PageWatchAddressSpace"]),
        .target(name: "PageWatchReport", dependencies: ["PageWatchLog", "PageWatchAddressSpace"]),
        .target(
            name: "PageWatchKit",
            dependencies: ["PageWatchEngine", "PageWatchPtrace", "PageWatchAddressSpace", "PageWatchLog"]),
        .executableTarget(
            name: "pagewatch",
            dependencies: [
                "PageWatchEngine", "PageWatchReport", "PageWatchLog", "PageWatchPtrace", "PageWatchImage",
                .product(
                    name: "ArgumentParser", package: "swift-argument-parser",
                    condition: .when(traits: ["CommandLineTool"])),
            ]
        ),
    ] + (fixtureList == nil ? [] : testTargets + fixtureTargets)
)
