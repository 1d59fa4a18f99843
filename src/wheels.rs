//! The pinned Patroni wheels pgha ships to nodes: built once on the control machine with
//! Debian's Python (the nodes' Python), cached, and packed into one deterministic archive so
//! the deploy's upload is skipped when the nodes already hold it. Nodes never need PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

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

/// The archive of Patroni `version`'s wheels, fetching and packing them on first use.
pub fn ensure_archive(version: &str) -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    let wheels = cache.join("wheels").join(format!("patroni-{version}"));
    let archive = cache.join("wheels").join(format!("patroni-{version}.tar"));
    if archive.exists() {
        return Ok(archive);
    }
    if !wheels.join(".complete").exists() {
        fetch(&cache, &wheels, version)?;
    }
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

fn fetch(cache: &Path, wheels: &Path, version: &str) -> anyhow::Result<()> {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        bail!(crate::error::UserError(
            "`/usr/bin/python3` not found; it builds the Patroni wheels pgha ships\nhint: apt-get install python3 python3-venv python3-pip".into()
        ));
    }
    eprintln!(
        "fetching Patroni {version} wheels into `{}` (once)",
        wheels.display()
    );
    std::fs::create_dir_all(wheels)?;
    let venv = cache.join("build-venv");
    run(
        Command::new(python).args(["-m", "venv"]).arg(&venv),
        "creating the wheel-building virtualenv (needs `python3-venv`)",
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["wheel", "--quiet", "--wheel-dir"])
            .arg(wheels)
            .arg(format!("patroni[etcd3]=={version}"))
            .arg("psycopg2-binary"),
        "`pip wheel` for Patroni (needs access to PyPI from the control machine)",
    )?;
    std::fs::write(wheels.join(".complete"), b"")?;
    Ok(())
}
