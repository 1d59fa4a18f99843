//! Helpers shared by the end-to-end tests that run the `pgha` binary against the local lab.
//! Each test binary uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Run `pgha` with `args`, echoing its stderr for the test log.
pub fn pgha(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .expect("run pgha");
    eprintln!(
        "$ pgha {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Run `pgha`, fail the test if it fails, return its stdout.
pub fn pgha_ok(args: &[&str]) -> String {
    let output = pgha(args);
    assert!(
        output.status.success(),
        "`pgha {}` failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A copy of `inventories/lab.yml` in a fresh temporary folder, so that the secrets file the
/// test generates lands beside the copy, not in the repository. Keep the folder alive.
pub fn lab_inventory() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = dir.path().join("lab.yml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/lab.yml"),
        &inventory,
    )
    .expect("copy the lab inventory");
    (dir, inventory)
}

/// Tears the lab down however the test ends.
pub struct Lab;

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_pgha"))
            .args(["lab", "down"])
            .status();
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Poll `probe` every 0.2 s until it succeeds; fail the test with its last error after `timeout`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(error) if start.elapsed() > timeout => {
                panic!("{what} did not happen within {timeout:?}: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
