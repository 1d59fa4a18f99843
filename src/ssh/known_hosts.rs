//! OpenSSH `known_hosts` files: parsing, the verdict for a presented host key, and the line that
//! records a new one. The matching logic is pure (text in, verdict out); the only I/O is
//! [`load`] and [`append`]. This module never decides to trust a key on its own: an unknown key
//! is only recorded when the caller was told to (`--accept-new-host-keys`).
//!
//! Supported: plain patterns with `*`/`?` wildcards and `!` negation, comma lists,
//! `[host]:port` names for ports other than 22, hashed names (`|1|salt|hmac-sha1`), `@revoked`
//! (refused). `@cert-authority` lines are ignored: pgha does not verify host certificates, so
//! such a line neither trusts nor refuses a key. Lines that do not parse are skipped, like
//! OpenSSH does.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use base64ct::{Base64, Encoding};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PublicKey};

use super::error::SshError;

/// What a known_hosts file says about the key a host presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host holds exactly this key.
    Match,
    /// No line names this host.
    Unknown,
    /// Lines name this host, but none holds this key: `expected` is the fingerprint of the first
    /// such line (with its key type), `line` its 1-based number.
    Changed { expected: String, line: usize },
    /// The key is marked `@revoked` for this host at `line`.
    Revoked { line: usize },
}

/// The parsed entries of one known_hosts file.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    line: usize,
    revoked: bool,
    names: Names,
    key: KeyData,
}

#[derive(Debug)]
enum Names {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<Pattern>),
}

#[derive(Debug)]
struct Pattern {
    negated: bool,
    glob: String,
}

impl KnownHosts {
    /// Parse the text of a known_hosts file; unparsable lines are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(index, line)| parse_line(index + 1, line))
            .collect();
        KnownHosts { entries }
    }

    /// The verdict for `key` presented by `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = host_name(host, port);
        let for_host: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.names.matches(&name))
            .collect();
        if let Some(entry) = for_host
            .iter()
            .find(|e| e.revoked && e.key == *key.key_data())
        {
            return Verdict::Revoked { line: entry.line };
        }
        let trusted: Vec<&&Entry> = for_host.iter().filter(|e| !e.revoked).collect();
        if trusted.iter().any(|e| e.key == *key.key_data()) {
            return Verdict::Match;
        }
        // Prefer reporting a line with the same key type: that is the key that really changed.
        let same_type = trusted
            .iter()
            .find(|e| e.key.algorithm() == key.algorithm());
        match same_type.or(trusted.first()) {
            Some(entry) => Verdict::Changed {
                expected: describe(&entry.key),
                line: entry.line,
            },
            None => Verdict::Unknown,
        }
    }
}

/// The name OpenSSH records for a host: `host` on port 22, `[host]:port` otherwise.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The SHA-256 fingerprint as OpenSSH prints it: `SHA256:` and unpadded base64.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The known_hosts line (without newline) that records `key` for `host` on `port`.
pub fn entry_line(
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<String, russh::keys::ssh_key::Error> {
    Ok(format!(
        "{} {} {}",
        host_name(host, port),
        key.algorithm().as_str(),
        Base64::encode_string(&key.to_bytes()?)
    ))
}

/// Read and parse a known_hosts file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<KnownHosts, SshError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(KnownHosts::parse(&text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KnownHosts::default()),
        Err(source) => Err(SshError::KnownHostsFile {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Serialises appends from concurrent connections within this process, so two new hosts never
/// interleave their lines.
static APPEND_LOCK: Mutex<()> = Mutex::new(());

/// Append one line to a known_hosts file, creating it (and its directory) if needed. A file
/// whose last line lacks a newline gets one first, so the new entry stays on its own line.
pub fn append(path: &Path, line: &str) -> Result<(), SshError> {
    let io_error = |source| SshError::KnownHostsFile {
        action: "update",
        path: path.to_path_buf(),
        source,
    };
    let _guard = APPEND_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let needs_newline = match std::fs::read(path) {
        Ok(bytes) => bytes.last().is_some_and(|last| *last != b'\n'),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(io_error(error)),
    };
    let mut text = String::new();
    if needs_newline {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error)?;
    file.write_all(text.as_bytes()).map_err(io_error)
}

fn describe(key: &KeyData) -> String {
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    format!("{} {fingerprint}", key.algorithm().as_str())
}

fn parse_line(number: usize, line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace().peekable();
    let mut revoked = false;
    if let Some(marker) = fields.peek().filter(|field| field.starts_with('@')) {
        match *marker {
            "@revoked" => revoked = true,
            // Host certificates are not verified by pgha; see the module comment.
            _ => return None,
        }
        fields.next();
    }
    let names = parse_names(fields.next()?)?;
    let algorithm = fields.next()?;
    let base64 = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{algorithm} {base64}")).ok()?;
    Some(Entry {
        line: number,
        revoked,
        names,
        key: key.key_data().clone(),
    })
}

fn parse_names(field: &str) -> Option<Names> {
    if let Some(rest) = field.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        return Some(Names::Hashed {
            salt: Base64::decode_vec(salt).ok()?,
            hash: Base64::decode_vec(hash).ok()?,
        });
    }
    let patterns = field
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_prefix('!') {
            Some(glob) => Pattern {
                negated: true,
                glob: glob.to_lowercase(),
            },
            None => Pattern {
                negated: false,
                glob: p.to_lowercase(),
            },
        })
        .collect::<Vec<_>>();
    (!patterns.is_empty()).then_some(Names::Patterns(patterns))
}

impl Names {
    fn matches(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        match self {
            Names::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
            // As in OpenSSH: a negated match vetoes the line, otherwise any positive match wins.
            Names::Patterns(patterns) => {
                let mut positive = false;
                for pattern in patterns {
                    if glob_match(pattern.glob.as_bytes(), name.as_bytes()) {
                        if pattern.negated {
                            return false;
                        }
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else literally.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real keys from `ssh-keygen -t ed25519`; fingerprints as printed by `ssh-keygen -l`.
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKT9puq6hoewPrtkHGqiP2xjwdNWh1W/iUOiRZaBwb/8";
    const FP_A: &str = "SHA256:vrhBRGf9gDYwBa/iUKwBnRFYYAKq42Wse8Cm+H+xs5Q";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIESsj/4013zYBw2DAHwnap8Dh7f6i6TX/b4oPulWxYWk";
    const FP_B: &str = "SHA256:ifv+2dd5JCHjhQmVhKsTY9nectqCyM7OWvIKkZkZPcY";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).expect("test key parses")
    }

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        assert_eq!(fingerprint(&key(KEY_A)), FP_A);
        assert_eq!(fingerprint(&key(KEY_B)), FP_B);
    }

    #[test]
    fn plain_host_matches_and_other_host_is_unknown() {
        let hosts = KnownHosts::parse(&format!("db1.example.org {KEY_A}\n"));
        assert_eq!(
            hosts.check("db1.example.org", 22, &key(KEY_A)),
            Verdict::Match
        );
        assert_eq!(
            hosts.check("DB1.Example.ORG", 22, &key(KEY_A)),
            Verdict::Match
        );
        assert_eq!(
            hosts.check("db2.example.org", 22, &key(KEY_A)),
            Verdict::Unknown
        );
    }

    #[test]
    fn non_default_port_needs_bracket_form() {
        let hosts = KnownHosts::parse(&format!("[10.0.0.5]:2222 {KEY_A}\n10.0.0.6 {KEY_B}\n"));
        assert_eq!(hosts.check("10.0.0.5", 2222, &key(KEY_A)), Verdict::Match);
        assert_eq!(hosts.check("10.0.0.5", 22, &key(KEY_A)), Verdict::Unknown);
        // A plain entry only covers port 22.
        assert_eq!(hosts.check("10.0.0.6", 2200, &key(KEY_B)), Verdict::Unknown);
    }

    #[test]
    fn comma_lists_wildcards_and_negation() {
        let hosts = KnownHosts::parse(&format!(
            "db1,10.0.0.1 {KEY_A}\n*.lab,!bad.lab {KEY_B}\nnode? {KEY_A}\n"
        ));
        assert_eq!(hosts.check("10.0.0.1", 22, &key(KEY_A)), Verdict::Match);
        assert_eq!(hosts.check("db1", 22, &key(KEY_A)), Verdict::Match);
        assert_eq!(hosts.check("x.lab", 22, &key(KEY_B)), Verdict::Match);
        assert_eq!(hosts.check("bad.lab", 22, &key(KEY_B)), Verdict::Unknown);
        assert_eq!(hosts.check("node7", 22, &key(KEY_A)), Verdict::Match);
        assert_eq!(hosts.check("node17", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn hashed_entries_from_ssh_keygen_match() {
        // Produced by `ssh-keygen -H` from `db1.example.org KEY_A` and `[10.0.0.5]:2222 KEY_B`.
        let text = format!(
            "|1|GqzTiAQalG3nnx276tzNGtH3X68=|LBpknNyDyGcZwmRQjF25cWd9Bx8= {KEY_A}\n\
             |1|Sb9XuL7ddMDH04prLEAIzz7tPa8=|nL3AP7GgH5pj1+nhiaLEI+doH18= {KEY_B}\n"
        );
        let hosts = KnownHosts::parse(&text);
        assert_eq!(
            hosts.check("db1.example.org", 22, &key(KEY_A)),
            Verdict::Match
        );
        assert_eq!(hosts.check("10.0.0.5", 2222, &key(KEY_B)), Verdict::Match);
        assert_eq!(
            hosts.check("db2.example.org", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(
            hosts.check("db1.example.org", 22, &key(KEY_B)),
            Verdict::Changed {
                expected: format!("ssh-ed25519 {FP_A}"),
                line: 1
            }
        );
    }

    #[test]
    fn changed_key_names_the_expected_fingerprint_and_line() {
        let hosts = KnownHosts::parse(&format!("# comment\n\nother {KEY_B}\ndb1 {KEY_A}\n"));
        assert_eq!(
            hosts.check("db1", 22, &key(KEY_B)),
            Verdict::Changed {
                expected: format!("ssh-ed25519 {FP_A}"),
                line: 4
            }
        );
    }

    #[test]
    fn any_of_several_keys_for_a_host_matches() {
        let hosts = KnownHosts::parse(&format!("db1 {KEY_A}\ndb1 {KEY_B}\n"));
        assert_eq!(hosts.check("db1", 22, &key(KEY_B)), Verdict::Match);
    }

    #[test]
    fn revoked_key_is_refused_even_when_also_listed() {
        let hosts = KnownHosts::parse(&format!("db1 {KEY_A}\n@revoked * {KEY_A}\n"));
        assert_eq!(
            hosts.check("db1", 22, &key(KEY_A)),
            Verdict::Revoked { line: 2 }
        );
    }

    #[test]
    fn cert_authority_lines_neither_trust_nor_refuse() {
        let hosts = KnownHosts::parse(&format!("@cert-authority *.lab {KEY_A}\n"));
        assert_eq!(hosts.check("x.lab", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn garbage_lines_are_skipped_without_hiding_good_ones() {
        let text = format!(
            "garbage\n\
             db1 ssh-ed25519 not-base64!!\n\
             db1 ssh-ed25519\n\
             |1|bad|salt {KEY_A}\n\
             @unknown-marker db1 {KEY_B}\n\
             ,,, {KEY_B}\n\
             \u{fffd}\u{0} \t\n\
             db1 {KEY_A} trailing comment words\n"
        );
        let hosts = KnownHosts::parse(&text);
        assert_eq!(hosts.check("db1", 22, &key(KEY_A)), Verdict::Match);
        assert_eq!(
            hosts.check("db1", 22, &key(KEY_B)),
            Verdict::Changed {
                expected: format!("ssh-ed25519 {FP_A}"),
                line: 8
            }
        );
    }

    #[test]
    fn recorded_line_parses_back_to_a_match() {
        let line = entry_line("127.0.0.1", 2022, &key(KEY_A)).expect("encodes");
        assert_eq!(line, format!("[127.0.0.1]:2022 {KEY_A}"));
        let hosts = KnownHosts::parse(&line);
        assert_eq!(hosts.check("127.0.0.1", 2022, &key(KEY_A)), Verdict::Match);
        let line = entry_line("db1", 22, &key(KEY_B)).expect("encodes");
        assert_eq!(line, format!("db1 {KEY_B}"));
    }

    #[test]
    fn append_adds_a_missing_newline_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/known_hosts");
        append(&path, "first").expect("append to a new file");
        std::fs::write(&path, "first\nno-newline").expect("write");
        append(&path, "second").expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "first\nno-newline\nsecond\n");
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"[h]:2?22", b"[h]:2022"));
        assert!(!glob_match(b"", b"x"));
    }
}
