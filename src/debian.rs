//! The Debian releases pgha deploys onto, and what each one ships that pgha depends on.
//!
//! Each release ships exactly one PostgreSQL major, and streaming replication needs one major
//! on every node, so a cluster's `postgres_version` names its release: 15 is Debian 12's,
//! 17 is Debian 13's. The deploy's preflight holds every node to that release, and the
//! templates, the Patroni wheels and the lab follow it.

use serde::Serialize;

/// One supported Debian release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Release {
    /// `VERSION_ID` in `/etc/os-release`.
    pub version_id: &'static str,
    pub codename: &'static str,
    /// The PostgreSQL major the release ships.
    pub postgres: u32,
    /// The `python3` the release ships (`MAJOR.MINOR`): the Patroni wheels must match it.
    pub python: &'static str,
    /// etcd's `MAJOR.MINOR` in `etcd-server`.
    pub etcd: &'static str,
    /// HAProxy's `MAJOR.MINOR`.
    pub haproxy: &'static str,
}

pub const BOOKWORM: Release = Release {
    version_id: "12",
    codename: "bookworm",
    postgres: 15,
    python: "3.11",
    etcd: "3.4",
    haproxy: "2.6",
};

pub const TRIXIE: Release = Release {
    version_id: "13",
    codename: "trixie",
    postgres: 17,
    python: "3.13",
    etcd: "3.5",
    haproxy: "3.0",
};

/// Every supported release, oldest first.
pub const RELEASES: &[Release] = &[BOOKWORM, TRIXIE];

impl Release {
    /// The release that ships PostgreSQL `major`.
    pub fn for_postgres(major: u32) -> Option<Release> {
        RELEASES
            .iter()
            .copied()
            .find(|release| release.postgres == major)
    }

    /// A release by its codename (`trixie`) or version (`13`).
    pub fn named(name: &str) -> Option<Release> {
        RELEASES
            .iter()
            .copied()
            .find(|release| release.codename == name || release.version_id == name)
    }

    /// `Debian 13 (trixie)`.
    pub fn title(&self) -> String {
        format!("Debian {} ({})", self.version_id, self.codename)
    }

    /// The CPython wheel tag of the release's Python, e.g. `cp313`.
    pub fn python_tag(&self) -> String {
        format!("cp{}", self.python.replace('.', ""))
    }
}

/// `15 (Debian 12, bookworm) or 17 (Debian 13, trixie)`: for hints.
pub fn postgres_choices() -> String {
    RELEASES
        .iter()
        .map(|release| {
            format!(
                "{} (Debian {}, {})",
                release.postgres, release.version_id, release.codename
            )
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `bookworm or trixie`: for hints.
pub fn codenames() -> String {
    RELEASES
        .iter()
        .map(|release| release.codename)
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_postgres_major_names_one_release() {
        assert_eq!(Release::for_postgres(15), Some(BOOKWORM));
        assert_eq!(Release::for_postgres(17), Some(TRIXIE));
        assert_eq!(Release::for_postgres(16), None);
        assert_eq!(Release::named("13"), Some(TRIXIE));
        assert_eq!(Release::named("bookworm"), Some(BOOKWORM));
        assert_eq!(Release::named("sid"), None);
        assert_eq!(TRIXIE.python_tag(), "cp313");
        assert_eq!(
            postgres_choices(),
            "15 (Debian 12, bookworm) or 17 (Debian 13, trixie)"
        );
    }
}
