//! Legacy mode against a real soft-dirty kernel (Linux 6.12 under qemu): runs
//! `scripts/kvm-oracle.sh` on the `softdirty` binary cargo built for this test when
//! `SOFTDIRTY_KVM_ORACLE=1` is set, and otherwise passes with a skip message, so that
//! `cargo test` stays fast. `scripts/test-all.sh` (CI) runs the script itself, after the
//! tests, with this variable unset for `cargo test`, so it runs once.
//!
//! The script replays every legacy-mode trace of the test suite with
//! `--backend kernel=softdirty` in one boot and runs `softdirty fuzz --against kernel
//! --mode legacy` in a second one; it skips (exit 0, a `skipped:` line) itself where the
//! oracle cannot be set up.

use std::process::Command;

#[test]
fn legacy_mode_agrees_with_linux_6_12_soft_dirty() {
    if std::env::var("SOFTDIRTY_KVM_ORACLE").as_deref() != Ok("1") {
        eprintln!(
            "kvm_oracle: skipped: set SOFTDIRTY_KVM_ORACLE=1 to boot Linux 6.12 under qemu \
             and check legacy mode against its soft-dirty (scripts/kvm-oracle.sh, about a \
             minute and a half on a warm cache)"
        );
        return;
    }
    let script = concat!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.."),
        "/scripts/kvm-oracle.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .env("KVM_ORACLE_BIN", env!("CARGO_BIN_EXE_softdirty"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("running scripts/kvm-oracle.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "scripts/kvm-oracle.sh failed ({}): the model's legacy mode and Linux 6.12 disagree, \
         or the oracle broke; its output is above",
        out.status
    );
}
