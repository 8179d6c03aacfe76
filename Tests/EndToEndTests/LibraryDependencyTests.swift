import Foundation
import Testing

/// PageWatchKit used the way docs/library.md says, from a package in another
/// folder: once by path, once by a git URL and a version tag. Each consumer
/// builds and runs a test that watches a program, and neither fetches
/// swift-argument-parser, which only the `pagewatch` command needs.
@Suite(.serialized) struct LibraryDependencyTests {
    static let root = Harness.fixturesFolder.deletingLastPathComponent().path

    /// The consumer's test: a program watched, its output and sweeps checked.
    static let consumerTest = """
        import PageWatchKit
        import Testing

        @Test func echoIsWatched() throws {
            let result = try WatchedProgram(["/bin/echo", "hi"]).run()
            #expect(result.end == .exited(code: 0))
            #expect(result.output == "hi\\n")
            #expect(result.sweeps.last?.reason == .exit)
        }

        """

    /// A package beside `folder` named `consumer` whose test target depends on
    /// PageWatchKit through `dependency` (a `.package(...)` line as in the docs).
    static func makeConsumer(in folder: String, dependency: String) throws -> String {
        let consumer = "\(folder)/consumer"
        try FileManager.default.createDirectory(
            atPath: "\(consumer)/Tests/ConsumerTests", withIntermediateDirectories: true)
        let manifest = """
            // swift-tools-version:6.1
            import PackageDescription

            let package = Package(
                name: "Consumer",
                dependencies: [
                    \(dependency)
                ],
                targets: [
                    .testTarget(name: "ConsumerTests",
                                dependencies: [.product(name: "PageWatchKit", package: "pagewatch")]),
                ]
            )

            """
        try manifest.write(toFile: "\(consumer)/Package.swift", atomically: true, encoding: .utf8)
        try consumerTest.write(toFile: "\(consumer)/Tests/ConsumerTests/Watch.swift", atomically: true, encoding: .utf8)
        return consumer
    }

    /// Resolves, builds and tests the consumer; what it resolved.
    static func buildAndTest(_ consumer: String) throws -> [String] {
        let swift = ["/usr/bin/env", "swift"]
        let build = try Harness.run(swift + ["build", "--build-tests", "--package-path", consumer], timeout: 900)
        #expect(build.status == 0, "\(build.stdout.suffix(3000))\(build.stderr.suffix(3000))")
        let test = try Harness.run(swift + ["test", "--skip-build", "--package-path", consumer], timeout: 300)
        #expect(test.status == 0, "\(test.stdout.suffix(3000))\(test.stderr.suffix(3000))")
        #expect(test.stdout.contains("echoIsWatched") && test.stdout.contains("passed"), "\(test.stdout)")
        let checkouts = "\(consumer)/.build/checkouts"
        return (try? FileManager.default.contentsOfDirectory(atPath: checkouts)) ?? []
    }

    /// `pagewatch --version`'s number: the version a release of this tree is tagged with.
    static func version() throws -> String {
        let out = try Harness.run([Harness.pagewatch, "--version"]).stdout
        return try #require(out.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
    }

    @Test func byPathWithoutArgumentParser() throws {
        let folder = Harness.temporaryPath("library-path")
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        // The docs' `../pagewatch`: the identity SwiftPM takes from the folder's name.
        try FileManager.default.createSymbolicLink(atPath: "\(folder)/pagewatch", withDestinationPath: Self.root)
        let consumer = try Self.makeConsumer(in: folder, dependency: #".package(path: "../pagewatch", traits: []),"#)
        let checkouts = try Self.buildAndTest(consumer)
        #expect(checkouts.isEmpty, "fetched \(checkouts)")
    }

    /// The repository cloned (its HEAD, committed changes only) and tagged
    /// with the version it declares, then depended on by URL `from:` it.
    @Test func byGitURLAndVersionTag() throws {
        let folder = Harness.temporaryPath("library-url")
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let version = try Self.version()
        let clone = "\(folder)/pagewatch"
        let git = try Harness.run(["/usr/bin/git", "clone", "--quiet", "--no-local", Self.root, clone], timeout: 300)
        try #require(git.status == 0, "\(git.stderr)")
        let tag = try Harness.run(["/usr/bin/git", "-C", clone, "tag", "-f", version])
        try #require(tag.status == 0, "\(tag.stderr)")
        let consumer = try Self.makeConsumer(
            in: folder, dependency: #".package(url: "file://\#(clone)", from: "\#(version)", traits: []),"#)
        let checkouts = try Self.buildAndTest(consumer)
        #expect(checkouts == ["pagewatch"], "fetched \(checkouts)")
        let resolved = try String(contentsOfFile: "\(consumer)/Package.resolved", encoding: .utf8)
        #expect(resolved.contains(#""version" : "\#(version)""#), "\(resolved)")
    }

    /// The release tag, where the clone has it, names the version its tree declares.
    @Test func releaseTagMatchesItsVersion() throws {
        let tags = try Harness.run(["/usr/bin/git", "-C", Self.root, "tag", "--list", "[0-9]*.[0-9]*.[0-9]*"])
        for tag in tags.stdout.split(separator: "\n") {
            let source = try Harness.run([
                "/usr/bin/git", "-C", Self.root, "show", "\(tag):Sources/PageWatchLog/PageWatchVersion.swift",
            ])
            #expect(source.stdout.contains(#"current = "\#(tag)""#), "tag \(tag): \(source.stdout)")
        }
    }
}
