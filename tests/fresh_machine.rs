//! The README's setup on a fresh Debian 12 machine, proven on a clean root filesystem: a
//! `debootstrap --variant=minbase` of bookworm in which nothing was installed by hand, run as a
//! container (systemd-nspawn) that shares this machine's network, so it reaches the package
//! registries as a new user's machine would. Into it go only what such a machine already has:
//! the Rust toolchain (this machine's, read-only) and this network's trusted CA certificates
//! with the environment variables that name them.
//!
//! In it, `scripts/setup-host.sh` must install everything, then `cargo build --locked` must
//! build pgha (every build script, etcd-client's protoc run among them, and the link), and, in
//! a second container with no network at all, the Patroni wheels must install offline and run,
//! next to the pgha binary just built.
//!
//! The clean root is built once and cached (pristine, marked complete) under
//! `/var/cache/pgha/fresh-root`; every run works on a throw-away overlay above it. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SUITE: &str = "bookworm";
const CACHE: &str = "/var/cache/pgha/fresh-root";
/// The container's name (also its host name).
const MACHINE: &str = "pgha-fresh-root";
/// Marks a finished pristine root.
const MARKER: &str = ".pgha-fresh-root-complete";

/// Environment variables of this machine that name its trusted certificates or its proxies:
/// network settings a fresh machine here has too. Nothing else is carried in.
const NETWORK_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The pristine clean root, built with debootstrap from this machine's Debian mirror if missing.
fn pristine_root() -> PathBuf {
    let root = Path::new(CACHE).join(SUITE);
    if root.join(MARKER).exists() {
        return root;
    }
    let partial = root.with_extension("partial");
    for dir in [&root, &partial] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).expect("remove an unfinished clean root");
        }
    }
    std::fs::create_dir_all(CACHE).expect("create the clean-root cache");
    let mirrors = pgha::lab::Mirrors::from_host().expect("this machine's Debian mirror");
    eprintln!("building the clean {SUITE} root from {}", mirrors.debian);
    run(Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&partial)
        .arg(&mirrors.debian)
        .stdin(Stdio::null()));
    std::fs::write(partial.join(MARKER), "").expect("mark the clean root");
    std::fs::rename(&partial, &root).expect("move the clean root into place");
    root
}

/// An overlay above the pristine root, unmounted and removed however the test ends.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    fn mount(lower: &Path) -> Overlay {
        let dir = tempfile::Builder::new()
            .prefix("pgha-fresh-")
            .tempdir_in("/var/tmp")
            .expect("overlay directory");
        for name in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(name)).expect("overlay subdirectory");
        }
        let overlay = Overlay { dir };
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                overlay.dir.path().join("upper").display(),
                overlay.dir.path().join("work").display()
            ))
            .arg(overlay.root()));
        overlay
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root()).status();
    }
}

/// This network's trusted CA certificates, as a fresh machine here has them.
fn carry_certificates(root: &Path) {
    let local = Path::new("/usr/local/share/ca-certificates");
    if local.is_dir() {
        run(Command::new("cp")
            .arg("-a")
            .arg(local)
            .arg(root.join("usr/local/share/")));
    }
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        std::fs::create_dir_all(root.join("etc/ssl/certs")).expect("certs directory");
        std::fs::copy(bundle, root.join("etc/ssl/certs/ca-certificates.crt")).expect("CA bundle");
    }
}

/// This machine's Rust toolchain (the sysroot holds `cargo` and `rustc` themselves).
fn toolchain() -> PathBuf {
    let output = run(Command::new("rustc").args(["--print", "sysroot"]));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// Run `script` with bash in a container on `root`, the project at `/src` (read-only) and the
/// toolchain at `/opt/rust`; `network` shares this machine's network, otherwise it has none.
fn in_container(root: &Path, script: &str, network: bool) -> Output {
    let project = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new("systemd-nspawn");
    command
        // `--console=pipe`: plain output, as in CI (no terminal inside).
        .args(["--quiet", "--register=no", "--keep-unit", "--console=pipe"])
        .arg(format!("--machine={MACHINE}"))
        .arg("--directory")
        .arg(root)
        .arg(format!("--bind-ro={project}:/src"))
        .arg(format!("--bind-ro={}:/opt/rust", toolchain().display()))
        .arg("--chdir=/src")
        .arg("--setenv=PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("--setenv=HOME=/root")
        .arg("--setenv=CARGO_TARGET_DIR=/var/tmp/pgha-target");
    if !network {
        command.arg("--private-network");
    }
    for name in NETWORK_VARIABLES {
        if let Ok(value) = std::env::var(name) {
            command.arg(format!("--setenv={name}={value}"));
        }
    }
    command
        .args(["/bin/bash", "-euo", "pipefail", "-c", script])
        .stdin(Stdio::null());
    eprintln!("$ {command:?}");
    let output = command.output().expect("run systemd-nspawn");
    // systemd-nspawn leaves an empty directory per machine name behind in `/run`.
    let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(MACHINE));
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// What broke on a fresh machine before, and what the README's commands need afterwards.
const SETUP_AND_BUILD: &str = r#"
echo "== nothing installed by hand"
for tool in cargo rustc; do command -v "$tool"; done
if command -v python3 || command -v gcc || command -v protoc; then
    echo "the clean root is not clean"; exit 1
fi
echo "== the README's setup"
scripts/setup-host.sh
echo "== again: nothing left to do"
scripts/setup-host.sh
echo "== what the lab and the tests run"
for tool in protoc systemd-nspawn debootstrap apt-cacher-ng ip haproxy keepalived psql sshd sudo; do
    command -v "$tool"
done
test -f /usr/include/google/protobuf/descriptor.proto
echo "== cargo build"
cargo build --locked
/var/tmp/pgha-target/debug/pgha --version
"#;

/// With no network at all: the shipped wheels install and Patroni runs; the built pgha works.
const OFFLINE: &str = r#"
wheels=$(ls -d /var/cache/pgha/wheels/patroni-*)
python3 -m venv /var/tmp/offline
/var/tmp/offline/bin/pip install --no-index --find-links "$wheels" "patroni[etcd3]" psycopg2-binary
/var/tmp/offline/bin/patroni --version
/var/tmp/offline/bin/python -c 'import etcd, psycopg2, ydiff; print("imports ok")'
/var/tmp/pgha-target/debug/pgha inventory validate -i inventories/lab.yml
"#;

#[test]
fn the_readme_setup_builds_pgha_and_the_wheels_on_a_clean_debian_12_root() {
    assert!(
        common::is_root(),
        "the clean-root test needs root (debootstrap, overlay mounts, systemd-nspawn)"
    );
    let pristine = pristine_root();
    let overlay = Overlay::mount(&pristine);
    let root = overlay.root();
    carry_certificates(&root);

    let built = in_container(&root, SETUP_AND_BUILD, true);
    assert!(
        built.status.success(),
        "the README's setup or the build failed on a clean Debian 12 root ({}); see the output above",
        built.status
    );
    let offline = in_container(&root, OFFLINE, false);
    assert!(
        offline.status.success(),
        "the shipped wheels or the built pgha failed with no network ({}); see the output above",
        offline.status
    );
    let text = String::from_utf8_lossy(&offline.stdout);
    assert!(text.contains("patroni 4."), "no Patroni 4 ran: {text}");
    assert!(text.contains("imports ok"), "{text}");
}
