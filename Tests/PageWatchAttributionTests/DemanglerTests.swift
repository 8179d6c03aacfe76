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
        ("_ZN1q12quokka_touch17h114bb9707596f047E.llvm.1234567890", "q::quokka_touch"),
        (
            "_ZN52_$LT$q..W$LT$T$GT$$u20$as$u20$core..fmt..Display$GT$3fmt17h574a81d28efc7c8dE",
            "<q::W<T> as core::fmt::Display>::fmt"
        ),
    ])
    func rustLegacyNamesLoseTheirHash(mangled: String, shown: String) {
        #expect(Demangler.demangle(mangled) == shown)
    }

    /// Names from `rustc 1.95 -O -C symbol-mangling-version=v0` (nm), as
    /// rustc-demangle's `{:#}` shows them: `c++filt`'s output without its
    /// `[crate hash]`es, and constants without their type.
    @Test(arguments: [
        ("_RNvCs7D66P91j4pS_5kinds11writes_page", "kinds::writes_page"),
        ("_RNvXCs7D66P91j4pS_5kindsINtB2_1WhENtB2_5Touch5touchB2_", "<kinds::W<u8> as kinds::Touch>::touch"),
        ("_RNvMs_Cs7D66P91j4pS_5kindsINtB4_1WmE4fillB4_", "<kinds::W<u32>>::fill"),
        ("_RNCNvCs7D66P91j4pS_5kinds4mains0_0B3_", "kinds::main::{closure#2}"),
        (
            "_RNSNvYNCNvCs7D66P91j4pS_5kinds4main0INtNtNtCsgEmfK2I1SDS_4core3ops8function6FnOnceTRhEE9call_once6vtableB8_",
            "<kinds::main::{closure#0} as core::ops::function::FnOnce<(&u8,)>>::call_once::{shim:vtable#0}"
        ),
        ("_RNCINvNtCsjrHSEGnQ3l9_3std2rt10lang_startuE0Cs7D66P91j4pS_5kinds", "std::rt::lang_start::<()>::{closure#0}"),
        ("_RINvCs7D66P91j4pS_5kinds5konstKj7_Kb1_Kc78_Kln3_EB2_", "kinds::konst::<7, true, 'x', -3>"),
        ("_RINvCs7D66P91j4pS_5kinds7genericAtj3_EB2_", "kinds::generic::<[u16; 3]>"),
        ("_RINvCs7D66P91j4pS_5kinds7genericThxEEB2_", "kinds::generic::<(u8, i64)>"),
        ("_RINvCs7D66P91j4pS_5kinds7genericOnEB2_", "kinds::generic::<*mut i128>"),
        ("_RINvCs7D66P91j4pS_5kinds7genericFG_RL0_hERL0_hEB2_", "kinds::generic::<for<'a> fn(&'a u8) -> &'a u8>"),
        ("_RINvCs7D66P91j4pS_5kinds7genericFUKChEuEB2_", "kinds::generic::<unsafe extern \"C\" fn(u8)>"),
        (
            "_RINvCs7D66P91j4pS_5kinds7genericRDG_INtNtNtCsgEmfK2I1SDS_4core3ops8function2FnTRL0_hEEp6OutputhEL_EB2_",
            "kinds::generic::<&dyn for<'a> core::ops::function::Fn<(&'a u8,), Output = u8>>"
        ),
        (
            "_RINvCs7D66P91j4pS_5kinds7genericINtNtCslNYArtu3iFV_5alloc5boxed3BoxDINtNtNtCsgEmfK2I1SDS_4core3ops8function5FnMutuEp6OutputlNtNtB1b_6marker4SendEL_EEB2_",
            "kinds::generic::<alloc::boxed::Box<dyn core::ops::function::FnMut<(), Output = i32> + core::marker::Send>>"
        ),
        ("_RNvNtNtCs7D66P91j4pS_5kinds4deep5inneru9crire_9ra", "kinds::deep::inner::écrire"),
        // LLVM's suffix for a symbol it made local is dropped; another is kept.
        (
            "_RINvMs6_NtCsgvbsrvnw3yD_9hashbrown3rawINtB6_8RawTableTyINtNtCslNYArtu3iFV_5alloc3vec3VechEEE14reserve_rehashNCINvNtB8_3map11make_hasheryBR_NtNtNtCsjrHSEGnQ3l9_3std4hash6random11RandomStateE0ECsdPXbkOLhrRO_5churn.llvm.17483592860337041427",
            "<hashbrown::raw::RawTable<(u64, alloc::vec::Vec<u8>)>>::reserve_rehash::<hashbrown::map::make_hasher<u64, alloc::vec::Vec<u8>, std::hash::random::RandomState>::{closure#0}>"
        ),
        ("_RNvNtNtCsjrHSEGnQ3l9_3std6thread11main_thread4MAIN.0", "std::thread::main_thread::MAIN.0"),
    ])
    func rustV0NamesAsRustcDemangleShowsThem(mangled: String, shown: String) {
        #expect(Demangler.demangle(mangled) == shown)
    }

    @Test func malformedV0NamesAreLeftAsTheyAre() {
        for name in [
            "_R", "_RNvC", "_RNvCs7D66P91j4pS_5kinds99writes_page", "_RB_", "_RNvCB0_3foo", "_R0NvC3foo3bar",
            "_RNvCs7D66P91j4pS_5kinds11writes_pageZ", "_RINvC1a1bKb2_E",
        ] {
            #expect(Demangler.demangle(name) == name, "\(name)")
        }
        #expect(RustV0Demangler.punycode(ArraySlice("crire_9ra".utf8)) == "écrire")
        #expect(RustV0Demangler.punycode(ArraySlice("abc_".utf8)) == nil)
    }

    @Test func otherNamesAreLeftToTheirDemanglers() {
        #expect(Demangler.demangle("_ZN3foo3barEv") == "foo::bar()")
        #expect(Demangler.demangle("_ZN3foo17habcdefabcdefabcdEv") == "foo::habcdefabcdefabcd()")
        #expect(!Demangler.isRustLegacy("_ZN3foo3barE"))
        #expect(Demangler.demangle("main") == "main")
    }
}
