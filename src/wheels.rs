//! The pinned Patroni wheels pgha ships to nodes: made once on the control machine for the
//! nodes' Python (3.11 on Debian 12, 3.13 on Debian 13), cached, and packed into one
//! deterministic archive per Python so the deploy's upload is skipped when the nodes already
//! hold it. Nodes never need PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::debian::Release;

/// `$PGHA_CACHE`, or `/var/cache/pgha`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PGHA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/pgha"))
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// The archive of Patroni `version`'s wheels for `release`'s Python, fetching and packing them
/// on first use.
pub fn ensure_archive(version: &str, release: Release) -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    let tag = release.python_tag();
    let archive = cache
        .join("wheels")
        .join(format!("patroni-{version}-{tag}.tar"));
    if archive.exists() {
        return Ok(archive);
    }
    let wheels = ensure_wheels(&cache, version, &tag, release.python)?;
    let partial = archive.with_extension("tar.partial");
    // Fixed order, times and owners: the same wheels always give the same bytes.
    run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--exclude=.complete",
                "-cf",
            ])
            .arg(&partial)
            .arg("-C")
            .arg(&wheels)
            .arg("."),
        "`tar` packing the Patroni wheels",
    )?;
    std::fs::rename(&partial, &archive)?;
    Ok(archive)
}

/// `<cache>/wheels/patroni-<version>-<tag>`: the wheel set for one CPython (`cp311`), made
/// once. `scripts/setup-host.sh` makes the set of this machine's own Python the same way.
fn ensure_wheels(cache: &Path, version: &str, tag: &str, python: &str) -> anyhow::Result<PathBuf> {
    let wheels = cache
        .join("wheels")
        .join(format!("patroni-{version}-{tag}"));
    if wheels.join(".complete").exists() {
        return Ok(wheels);
    }
    let system_python = Path::new("/usr/bin/python3");
    if !system_python.exists() {
        bail!(crate::error::UserError(
            "`/usr/bin/python3` not found; it builds the Patroni wheels pgha ships\nhint: apt-get install python3 python3-venv python3-pip".into()
        ));
    }
    let native = native_tag(system_python)?;
    eprintln!(
        "fetching Patroni {version} wheels for Python {python} into `{}` (once)",
        wheels.display()
    );
    let venv = cache.join("build-venv");
    if !venv.join("bin/pip").exists() {
        run(
            Command::new(system_python).args(["-m", "venv"]).arg(&venv),
            "creating the wheel-building virtualenv (needs `python3-venv`)",
        )?;
    }
    std::fs::create_dir_all(&wheels)?;
    if native == tag {
        // This machine's own Python: build the wheels (two dependencies are sources only).
        run(
            Command::new(venv.join("bin/pip"))
                .args(["wheel", "--quiet", "--wheel-dir"])
                .arg(&wheels)
                .arg(format!("patroni[etcd3]=={version}"))
                .arg("psycopg2-binary"),
            "`pip wheel` for Patroni (needs PyPI, and `wheel` in the build virtualenv: run `scripts/setup-host.sh`)",
        )?;
    } else {
        // Another Python (a Debian 13 node from a Debian 12 machine): binary wheels for that
        // CPython from PyPI; the pure-Python wheels pip builds from sources come from this
        // machine's own set, which works on any Python 3.
        let own = ensure_wheels(cache, version, &native, "of this machine")?;
        let mut download = Command::new(venv.join("bin/pip"));
        download
            .args(["download", "--quiet", "--only-binary=:all:"])
            .args(["--python-version", python, "--implementation", "cp"])
            .args(["--abi", tag, "--abi", "abi3", "--abi", "none"]);
        // x86-64 nodes, like the control machine; Debian 12 and 13 are glibc 2.36 and 2.41.
        for platform in [
            "manylinux_2_28_x86_64",
            "manylinux_2_17_x86_64",
            "manylinux2014_x86_64",
        ] {
            download.args(["--platform", platform]);
        }
        run(
            download
                .arg("--find-links")
                .arg(&own)
                .arg("--dest")
                .arg(&wheels)
                .arg(format!("patroni[etcd3]=={version}"))
                .arg("psycopg2-binary"),
            &format!("`pip download` of Patroni's wheels for Python {python} (needs PyPI)"),
        )?;
    }
    std::fs::write(wheels.join(".complete"), b"")?;
    Ok(wheels)
}

/// The CPython tag of `python` (`cp311`).
fn native_tag(python: &Path) -> anyhow::Result<String> {
    let output = Command::new(python)
        .args(["-c", "import sys; print('cp%d%d' % sys.version_info[:2])"])
        .output()
        .with_context(|| format!("cannot run `{}`", python.display()))?;
    if !output.status.success() {
        bail!("`{}` could not tell its version", python.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
