//! Which Debian mirror the lab uses: read from the host's own apt sources (deb822 `.sources` and
//! one-line `.list` files), so no registry host name is ever written into pgha. Parsing is pure;
//! only [`Mirrors::from_host`] reads files.

use std::path::Path;

use anyhow::{Context, Result};

/// The host's apt sources directory and classic file.
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const SOURCES_LIST: &str = "/etc/apt/sources.list";

/// The mirrors the lab's nodes and proxy use, as `http://` URLs without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// The main archive (e.g. the `.../debian` of `bookworm`).
    pub debian: String,
    /// The security archive (`.../debian-security`), when the host has one.
    pub security: Option<String>,
}

/// One enabled `deb` source: its URIs and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
}

impl Mirrors {
    /// Read the host's apt sources and pick the mirrors.
    pub fn from_host() -> Result<Mirrors> {
        let mut sources = Vec::new();
        if let Ok(text) = std::fs::read_to_string(SOURCES_LIST) {
            sources.extend(parse_one_line(&text));
        }
        let mut files: Vec<_> = std::fs::read_dir(SOURCES_DIR)
            .with_context(|| format!("failed to read `{SOURCES_DIR}`"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        files.sort();
        for file in files {
            let Some(extension) = file.extension().and_then(|extension| extension.to_str()) else {
                continue;
            };
            let text = || read(&file);
            match extension {
                "sources" => sources.extend(parse_deb822(&text()?)),
                "list" => sources.extend(parse_one_line(&text()?)),
                _ => {}
            }
        }
        choose(&sources).context(
            "no Debian `deb` source in the host's apt sources; \
             hint: configure a Debian mirror in `/etc/apt/sources.list.d/` (the lab uses the host's mirror)",
        )
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))
}

/// Parse a deb822 `.sources` file into its enabled `deb` entries.
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in paragraph.lines() {
            if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || {
                value
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = words(),
                "uris" => uris = words(),
                "suites" => suites = words(),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|kind| kind == "deb") && !uris.is_empty() {
            sources.push(Source { uris, suites });
        }
    }
    sources
}

/// Parse one-line `deb [options] uri suite components...` entries.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        // Skip `[arch=amd64 signed-by=...]`.
        let rest = match rest.strip_prefix('[') {
            Some(options) => options
                .split_once(']')
                .map(|(_, rest)| rest)
                .unwrap_or_default(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(Source {
                uris: vec![uri.to_string()],
                suites: vec![suite.to_string()],
            });
        }
    }
    sources
}

/// The main archive is the first source with a suite that is not `*-security`; the security
/// archive the first with a `*-security` suite.
fn choose(sources: &[Source]) -> Option<Mirrors> {
    let is_security = |suite: &String| suite.ends_with("-security") || suite.ends_with("/updates");
    let debian = sources
        .iter()
        .find(|source| source.suites.iter().any(|suite| !is_security(suite)))
        .and_then(|source| source.uris.first())
        .map(|uri| as_http(uri))?;
    let security = sources
        .iter()
        .find(|source| source.suites.iter().any(is_security))
        .and_then(|source| source.uris.first())
        .map(|uri| as_http(uri));
    Some(Mirrors { debian, security })
}

/// Nodes reach the mirror through an HTTP proxy, which cannot cache `https://`: use `http://`
/// (apt verifies the signed metadata either way).
fn as_http(uri: &str) -> String {
    let uri = uri.trim_end_matches('/');
    match uri.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => uri.to_string(),
    }
}

/// `host/path` of a mirror URL, the form apt-cacher-ng's remap patterns match.
pub fn host_and_path(url: &str) -> &str {
    url.split_once("://").map(|(_, rest)| rest).unwrap_or(url)
}

/// The node's `/etc/apt/sources.list.d/debian.sources` for `suite`.
pub fn node_sources(mirrors: &Mirrors, suite: &str) -> String {
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut text = format!(
        "Types: deb\nURIs: {}\nSuites: {suite} {suite}-updates\nComponents: main\nSigned-By: {keyring}\n",
        mirrors.debian
    );
    if let Some(security) = &mirrors.security {
        text.push_str(&format!(
            "\nTypes: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\nSigned-By: {keyring}\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://source-only.example/debian
Suites: bookworm

Types: deb
URIs: https://mirror.example/debian-security/
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_sources_give_main_and_security_mirrors() {
        let mirrors = choose(&parse_deb822(DEB822));
        assert_eq!(
            mirrors,
            Some(Mirrors {
                debian: "http://mirror.example/debian".to_string(),
                security: Some("http://mirror.example/debian-security".to_string()),
            })
        );
    }

    #[test]
    fn disabled_paragraphs_are_ignored() {
        let text = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\n";
        let mirrors = choose(&parse_deb822(text)).map(|mirrors| mirrors.debian);
        assert_eq!(mirrors.as_deref(), Some("http://on.example/debian"));
    }

    #[test]
    fn one_line_sources_with_options_are_read() {
        let text =
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\n\
                    deb http://a.example/debian-security bookworm-security main # trailing\n\
                    deb-src http://a.example/debian bookworm main\n";
        let mirrors = choose(&parse_one_line(text));
        assert_eq!(
            mirrors.as_ref().map(|m| m.debian.as_str()),
            Some("http://a.example/debian")
        );
        assert_eq!(
            mirrors.and_then(|m| m.security).as_deref(),
            Some("http://a.example/debian-security")
        );
    }

    #[test]
    fn no_deb_source_is_none() {
        assert_eq!(
            choose(&parse_deb822(
                "Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n"
            )),
            None
        );
    }

    #[test]
    fn node_sources_use_the_mirrors() {
        let mirrors = Mirrors {
            debian: "http://m.example/debian".to_string(),
            security: Some("http://m.example/debian-security".to_string()),
        };
        let text = node_sources(&mirrors, "bookworm");
        assert!(text.contains("URIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n"));
        assert!(
            text.contains("URIs: http://m.example/debian-security\nSuites: bookworm-security\n")
        );
        assert_eq!(host_and_path(&mirrors.debian), "m.example/debian");
    }
}
