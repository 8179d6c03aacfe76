import Foundation
import Testing

/// fixtures/fixtures.txt is the one list of fixtures: Package.swift builds
/// what it names and the tests run only what it names.
@Suite struct FixtureListTests {
    @Test func everyFixtureSourceIsListedAndEveryListedOneHasASource() throws {
        let folder = Harness.fixturesFolder.path
        let entries = try FileManager.default.contentsOfDirectory(atPath: folder)
        var sources: Set<String> = []
        for entry in entries where entry.hasPrefix("fx_") {
            if entry.hasSuffix(".c") || entry.hasSuffix(".cpp") {
                sources.insert(String(entry.prefix(upTo: entry.lastIndex(of: ".")!)))
            } else if FileManager.default.fileExists(atPath: "\(folder)/\(entry)/main.swift") {
                sources.insert(entry)
            }
        }
        let listed = Harness.fixtureList.map(\.name)
        #expect(Set(listed).count == listed.count, "a fixture is listed twice")
        #expect(
            sources.subtracting(listed).isEmpty, "not in fixtures/fixtures.txt: \(sources.subtracting(listed).sorted())"
        )
        #expect(
            Set(listed).subtracting(sources).isEmpty,
            "listed without a source: \(Set(listed).subtracting(sources).sorted())")
        for (name, language) in Harness.fixtureList {
            let source = ["c": "\(name).c", "cxx": "\(name).cpp", "swift": "\(name)/main.swift"][language]
            #expect(source != nil, "\(name): unknown language \(language)")
            if let source { #expect(FileManager.default.fileExists(atPath: "\(folder)/\(source)"), "\(source)") }
        }
    }

    @Test func everyListedFixtureIsBuiltBesideTheTests() {
        #expect(Harness.fixtureList.count > 40)
        for (name, _) in Harness.fixtureList {
            #expect(
                FileManager.default.isExecutableFile(atPath: Harness.fixture(name)),
                "\(name) is not built: SwiftPM plans again only when Package.swift changes: build with `make test` (scripts/plan.sh) after editing fixtures/fixtures.txt"
            )
        }
    }
}
