//! Bad input of any kind gets an error, never a panic: random traces built from the whole
//! command vocabulary with extreme operands (misaligned, overflowing, beyond TASK_SIZE,
//! 0, u64::MAX, whole-address-space lengths) replay to completion in every mode with a
//! contract exit status, and every operation either succeeds or fails with an errno.

use proptest::prelude::*;
use softdirty::mode::Mode;
use softdirty_trace::{parse, replay};

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("4095".to_string()),
        Just("4096".to_string()),
        Just("0x20_0000_0000".to_string()),
        Just("0x20_0000_1000".to_string()),
        Just("0x20_0000_0800".to_string()),
        Just("0x7fff_ffff_f000".to_string()),
        Just("0x7fff_ffff_e000".to_string()),
        Just("0x8000_0000_0000".to_string()),
        Just("0xffff_ffff_ffff_f000".to_string()),
        Just("0xffff_ffff_ffff_ffff".to_string()),
        Just("0x1000".to_string()),
        Just("0x10000".to_string()),
        (0u64..64).prop_map(|p| format!("0x20_0000_0000+{p}p")),
    ]
}

fn len() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("1p".to_string()),
        Just("3p".to_string()),
        Just("16p".to_string()),
        Just("1G".to_string()),
        Just("64T".to_string()),
        Just("0x7fff_ffff_f000".to_string()),
        Just("0xffff_ffff_ffff_f000".to_string()),
        Just("0xffff_ffff_ffff_ffff".to_string()),
        (1u64..40).prop_map(|p| format!("{p}p")),
    ]
}

fn prot() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("none"),
        Just("r"),
        Just("rw"),
        Just("rx"),
        Just("rwx"),
        Just("w")
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            number(),
            len(),
            prot(),
            prop_oneof![Just(""), Just(" shared")],
            prop_oneof![Just(""), Just(" fixed"), Just(" noreplace")]
        )
            .prop_map(|(a, l, p, s, f)| format!("mmap {a} {l} {p}{s}{f}")),
        (len(), prot()).prop_map(|(l, p)| format!("mmap $x {l} {p}")),
        (number(), len()).prop_map(|(a, l)| format!("munmap {a} {l}")),
        (number(), len(), prot()).prop_map(|(a, l, p)| format!("mprotect {a} {l} {p}")),
        (
            number(),
            len(),
            len(),
            any::<bool>(),
            proptest::option::of(number())
        )
            .prop_map(|(a, o, n, m, f)| format!(
                "mremap {a} {o} {n}{}{}",
                if m { " maymove" } else { "" },
                f.map(|f| format!(" fixed {f}")).unwrap_or_default()
            )),
        (number(), len()).prop_map(|(a, l)| format!("madvise {a} {l} dontneed")),
        (number(), len()).prop_map(|(a, l)| format!("write {a} {l}")),
        (number(), len()).prop_map(|(a, l)| format!("read {a} {l}")),
        prop_oneof![
            Just("4"),
            Just("1"),
            Just("5"),
            Just("0"),
            Just("-1"),
            Just("99999999999"),
            Just("abc")
        ]
        .prop_map(|v| format!("clear_refs {v}")),
        (number(), prop_oneof![Just("1p"), Just("3p"), Just("0")])
            .prop_map(|(a, l)| format!("pagemap {a} {l}")),
        (
            number(),
            len(),
            prop_oneof![Just(""), Just(" clear")],
            prop_oneof![
                Just(""),
                Just(" max_pages=1"),
                Just(" vec_len=1"),
                Just(" vec_len=0"),
                Just(" vec_len=0xffff_ffff_ffff_ffff")
            ],
            prop_oneof![
                Just(""),
                Just(" mask=softdirty"),
                Just(" anyof=present,pfnzero"),
                Just(" inverted=written mask=written"),
                Just(" return=0x200")
            ]
        )
            .prop_map(|(a, l, c, v, m)| format!("scan {a} {l}{c}{v}{m}")),
        number().prop_map(|a| format!("smaps {a}")),
        Just("fork kid".to_string()),
        Just("space kid".to_string()),
        Just("space main".to_string()),
        (number(), len()).prop_map(|(a, l)| format!("expect softdirty {a} {l} all")),
        (number(), len()).prop_map(|(a, l)| format!("expect present {a} {l} none")),
        (number(), len()).prop_map(|(a, l)| format!("expect vmas {a} {l} 1")),
        Just("expect regions 1".to_string()),
        Just("expect faults 0".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).map(|n: u32| n / 40).unwrap_or(250).max(100),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_traces_replay_without_panicking(lines in proptest::collection::vec(line(), 1..30), mode in 0usize..5) {
        let mode = Mode::ALL[mode];
        // `$x` must be bound before use in the language: bind it first.
        let text = format!("mmap $x 4p rw\n{}\n", lines.join("\n"));
        let trace = parse::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let mut diag = Vec::new();
        let s = replay::replay(&trace, "gen", &replay::Options { mode, allow_errors: false, ..replay::Options::default() }, &mut std::io::sink(), &mut diag);
        prop_assert!(s.exit_status(false) == 0 || s.exit_status(false) == 1);
        prop_assert_eq!(s.commands, trace.commands.len());
    }
}
