// swift-tools-version:6.0
import PackageDescription

// Layers, lowest first; each module imports only modules above it in this list.
//   CPtrace                 thin C: variadic ptrace, fork/exec launcher, waitpid, process_vm_*
//   CLibUnwind, CLibDW      system libraries: libunwind-ptrace (remote unwinding), elfutils libdw (DWARF lines)
//   CUnwind                 thin C: libunwind's macro API and its accessor callbacks (a process_vm_readv page cache)
//   PageWatchAddressSpace   pure Swift: RemoteAddress, AddressRange, Mapping, maps parser, PageSet
//   PageWatchPtrace         Tracee, StopEvent, RemoteSyscall, per-arch registers
//   PageWatchAttribution    Unwinder (the writer's call stack at a stop), Symbolizer (ELF symbols, demangling, lines)
//   PageWatchEngine         selection, tracked regions, the event loop, sweeps, injection and
//                           attach policy (slots, guardian state; CPtrace for its shared memory)
//   PageWatchReport         JSON Lines log and the human summary
//   PageWatchKit            the library for test authors: run a program, get its write events and sweeps
//   pagewatch               the CLI (swift-argument-parser), thin

let fixtureNames = [
    "fx_phases", "fx_threads", "fx_fixed_late", "fx_segv", "fx_exit3", "fx_sigframe",
    "fx_blocked_read", "fx_sleeper", "fx_writer", "fx_baseline",
    "fx_syscall_out", "fx_own_mprotect", "fx_mmap_churn", "fx_fork", "fx_exec", "fx_maxmap", "fx_guard",
    "fx_thread_churn", "fx_stopcont", "fx_sigaltstack", "fx_futex_wait", "fx_blocked_reader", "fx_follow", "fx_robust", "fx_own_seccomp", "fx_jit", "fx_shared", "fx_attach", "fx_busy", "fx_blocking", "fx_attach_churn",
    "fx_callsites", "fx_writers", "fx_trampoline", "fx_ptrace_floor", "fx_sweep", "fx_spinners", "fx_exit_sweep",
    "fx_slot_overflow", "fx_segv_handler", "fx_attach_altstack", "fx_hidden_write", "fx_steady_writers",
    "fx_term", "fx_tracer", "fx_lld_callsites", "fx_userfaultfd",
    "fx_io_uring",
]

/// C++ fixtures: one `NAME.cpp` in fixtures/ each, built like the C ones
/// (SwiftPM compiles a target's `.cpp` sources as C++ and links libstdc++).
let cxxFixtureNames = ["fx_cxx_writer"]

/// Swift fixtures: an executable target each, its `main.swift` in `fixtures/NAME/`.
let swiftFixtureNames = ["fx_swift_writer"]

/// Extra C flags of fixtures that need them. fx_callsites is unwound and
/// symbolized by the attribution tests: DWARF lines, frame pointers, and no
/// sibling calls so that every frame of its call chain exists.
let fixtureExtraFlags: [String: [String]] = [
    "fx_callsites": ["-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls"],
    "fx_writers": ["-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls"],
    "fx_cxx_writer": ["-g", "-fno-omit-frame-pointer"],
    // Unwound through its .eh_frame only (no frame pointer to follow), in
    // lld's layout. SwiftPM appends -fno-omit-frame-pointer to debug builds;
    // the cc1 option comes after it, so it wins.
    "fx_lld_callsites": ["-g", "-Xclang", "-mframe-pointer=none", "-fno-optimize-sibling-calls"],
    // Its inline assembly pushes the flags: no red zone for it to clobber.
    "fx_trampoline": ["-mno-red-zone"],
]

/// Libraries fixtures link besides pthread.
let fixtureExtraLibraries: [String: [String]] = [
    "fx_io_uring": ["uring"],
]

/// Extra linker flags of fixtures that need them. fx_lld_callsites is linked
/// by lld (the Swift toolchain ships it; `swiftc` links the fixtures).
let fixtureLinkerFlags: [String: [String]] = [
    "fx_lld_callsites": ["-use-ld=lld"],
]

/// The one source file of each C and C++ fixture, by fixture name.
let fixtureSources: [String: String] = Dictionary(
    uniqueKeysWithValues: fixtureNames.map { ($0, "\($0).c") } + cxxFixtureNames.map { ($0, "\($0).cpp") })

let fixtureTargets: [Target] = (fixtureNames + cxxFixtureNames).map { name in
    let flags: [String] = ["-O1", "-Wall"] + (fixtureExtraFlags[name] ?? [])
    return .executableTarget(
        name: name,
        path: "fixtures",
        // Every fixture shares the folder: each target excludes the others' sources.
        exclude: fixtureSources.values.filter { $0 != fixtureSources[name] }.sorted() + swiftFixtureNames
            + ["README.md", "fixture.h", "fx_bench.h"],
        sources: [fixtureSources[name]!],
        cSettings: [.unsafeFlags(flags)],
        cxxSettings: [.unsafeFlags(flags)],
        linkerSettings: (["pthread"] + (fixtureExtraLibraries[name] ?? [])).map { LinkerSetting.linkedLibrary($0) }
            + (fixtureLinkerFlags[name].map { [.unsafeFlags($0)] } ?? [])
    )
} + swiftFixtureNames.map { name in
    .executableTarget(name: name, path: "fixtures/\(name)")
}

let package = Package(
    name: "PageWatch",
    products: [
        .executable(name: "pagewatch", targets: ["pagewatch"]),
        .library(name: "PageWatchKit", targets: ["PageWatchKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CPtrace"),
        .target(name: "PageWatchAddressSpace"),
        .target(name: "PageWatchPtrace", dependencies: ["CPtrace", "PageWatchAddressSpace"]),
        .systemLibrary(name: "CLibUnwind", pkgConfig: "libunwind-ptrace", providers: [.apt(["libunwind-dev"])]),
        .systemLibrary(name: "CLibDW", pkgConfig: "libdw", providers: [.apt(["libdw-dev"])]),
        .target(
            name: "CUnwind",
            dependencies: ["CLibUnwind"],
            // Debian's libunwind-ptrace.so uses lzma without linking it (libunwind issue 586).
            linkerSettings: [.linkedLibrary("lzma")]
        ),
        .target(name: "PageWatchAttribution",
                dependencies: ["CUnwind", "CLibDW", "PageWatchPtrace", "PageWatchAddressSpace"]),
        .target(name: "PageWatchEngine",
                dependencies: ["PageWatchAttribution", "PageWatchPtrace", "PageWatchAddressSpace", "CPtrace"]),
        .target(name: "PageWatchReport", dependencies: ["PageWatchEngine", "PageWatchAttribution", "PageWatchPtrace", "PageWatchAddressSpace"]),
        .target(name: "PageWatchKit",
                dependencies: ["PageWatchEngine", "PageWatchAttribution", "PageWatchPtrace", "PageWatchAddressSpace"]),
        .executableTarget(
            name: "pagewatch",
            dependencies: [
                "PageWatchEngine", "PageWatchReport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "PageWatchAddressSpaceTests", dependencies: ["PageWatchAddressSpace"]),
        .testTarget(name: "PageWatchPtraceTests",
                    dependencies: ["PageWatchPtrace", "PageWatchEngine", "fx_blocked_read", "fx_sleeper", "fx_futex_wait"]),
        .testTarget(name: "PageWatchAttributionTests",
                    dependencies: ["PageWatchAttribution", "PageWatchPtrace", "CUnwind", "fx_callsites"]),
        .testTarget(name: "PageWatchEngineTests", dependencies: ["PageWatchEngine"]),
        .testTarget(name: "PageWatchReportTests", dependencies: ["PageWatchReport"]),
        .testTarget(name: "PageWatchKitTests",
                    dependencies: ["PageWatchKit", "fx_writers", "fx_phases", "fx_syscall_out", "fx_threads", "fx_exit3", "fx_sleeper"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["pagewatch"] + (fixtureNames + cxxFixtureNames + swiftFixtureNames).map { .target(name: $0) }
        ),
    ] + fixtureTargets
)
