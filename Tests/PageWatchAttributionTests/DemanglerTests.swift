import Testing
@testable import PageWatchAttribution

/// Names as this machine's tools make them: rustc 1.95's legacy mangling
/// (nm of `rustc -g`), shown as rustc-demangle shows them; C++ and Swift
/// names left to their own demanglers.
@Suite struct DemanglerTests {
    @Test(arguments: [
        ("_ZN1q12quokka_touch17h114bb9707596f047E", "q::quokka_touch"),
        ("_ZN6quokka12quokka_touch17h3d373306a1227b6fE", "quokka::quokka_touch"),
        ("_ZN1q4main28_$u7b$$u7b$closure$u7d$$u7d$17h341a48d55db0820fE", "q::main::{{closure}}"),
        (
            "_ZN52_$LT$q..W$LT$T$GT$$u20$as$u20$core..fmt..Display$GT$3fmt17h574a81d28efc7c8dE",
            "<q::W<T> as core::fmt::Display>::fmt"
        ),
    ])
    func rustLegacyNamesLoseTheirHash(mangled: String, shown: String) {
        #expect(Demangler.demangle(mangled) == shown)
    }

    @Test func otherNamesAreLeftToTheirDemanglers() {
        #expect(Demangler.demangle("_ZN3foo3barEv") == "foo::bar()")
        #expect(Demangler.demangle("_ZN3foo17habcdefabcdefabcdEv") == "foo::habcdefabcdefabcd()")
        #expect(!Demangler.isRustLegacy("_ZN3foo3barE"))
        #expect(Demangler.demangle("main") == "main")
    }
}
