//! Idempotent, atomic, whole file upload: one round trip reads the remote file's checksum,
//! owner, group and mode; only when something differs does a second round trip write the
//! contents (on stdin, never in argv) to a temporary file beside the target that has its final
//! owner and mode before the first byte, check its size and SHA-256, and rename it over the
//! target, so readers see the old file or the new one, never half, and a connection cut
//! mid-way leaves the old file.
//!
//! Never through a symbolic link: a target that is one is refused, and so is a directory that
//! someone other than root could write to without the sticky bit (they could swap the
//! temporary file between its creation and the rename).

use ring::digest;

use super::command::RemoteCommand;
use super::error::SshError;
use super::session::Session;

/// A file to put on a host.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Absolute path on the host; its directory must exist.
    pub path: String,
    pub contents: Vec<u8>,
    pub owner: String,
    pub group: String,
    /// Permission bits, e.g. `0o640`.
    pub mode: u32,
    /// The modification time to give the file (seconds since the epoch), for files compared by
    /// size and time rather than content; `None` leaves it to the write.
    pub mtime: Option<i64>,
}

/// The lowercase hex SHA-256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What the probe found at the target path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RemoteFile {
    Missing,
    NotAFile,
    Symlink,
    /// Its directory is a symbolic link.
    SymlinkDirectory,
    /// The directory's owner and mode, when others than root could write into it.
    UnsafeDirectory(String),
    File {
        owner: String,
        group: String,
        mode: u32,
        sha256: String,
        mtime: i64,
    },
}

/// Prints `symlink`, `symlink-directory`, `unsafe-directory OWNER MODE`, `missing`,
/// `not-a-file`, or
/// `owner group octal-mode mtime` and then `sha256sum`'s line.
const PROBE_SCRIPT: &str = r#"set -eu
if [ -L "$1" ]; then echo symlink; exit 0; fi
dir=$(dirname -- "$1")
if [ -L "$dir" ]; then echo symlink-directory; exit 0; fi
if [ -d "$dir" ]; then
  set -- "$1" $(stat -c '%u %a' -- "$dir")
  # Only root may create or rename entries there, unless the sticky bit protects root's files.
  if [ "$2" != 0 ] || { [ $(( 0$3 & 01000 )) = 0 ] && [ $(( 0$3 & 022 )) != 0 ]; }; then
    echo "unsafe-directory $(stat -c '%U %a' -- "$dir")"; exit 0
  fi
fi
if [ -e "$1" ] && [ ! -f "$1" ]; then echo not-a-file; exit 0; fi
if [ ! -e "$1" ]; then echo missing; exit 0; fi
stat -c '%U %G %a %Y' -- "$1"
sha256sum < "$1"
"#;

/// Reads the expected size and SHA-256 from the first line of stdin (a hash of a file that
/// holds secrets stays off the command line), creates a temporary file beside `$1` (0600, then
/// owner `$2:$3` and mode `$4` before any byte is written), writes the rest of stdin to it,
/// checks its size and SHA-256, sets the modification time `$5` (when not empty) and renames
/// it over `$1`. The traps remove the temporary file on any failure, a hang-up (the connection
/// dropped) included.
const WRITE_SCRIPT: &str = r#"set -eu
IFS=' ' read -r expected_size expected_sum
umask 077
tmp=$(mktemp -- "$(dirname -- "$1")/.pgha-upload.XXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 141' PIPE; trap 'exit 143' TERM
chown -h -- "$2:$3" "$tmp"
chmod -- "$4" "$tmp"
cat > "$tmp"
size=$(wc -c < "$tmp")
if [ "$size" != "$expected_size" ]; then echo "received $size of $expected_size bytes; the old file is kept" >&2; exit 1; fi
sum=$(sha256sum < "$tmp")
if [ "${sum%% *}" != "$expected_sum" ]; then echo "the received bytes do not have the sent SHA-256; the old file is kept" >&2; exit 1; fi
if [ -n "$5" ]; then touch -m -d "@$5" -- "$tmp"; fi
mv -f -T -- "$tmp" "$1"
trap - EXIT
"#;

impl Session {
    /// Make `upload.path` hold exactly `upload.contents` with the given owner, group and mode.
    /// Returns whether anything changed. Runs as root (through `sudo` for other users).
    pub async fn upload(&self, upload: &Upload) -> Result<bool, SshError> {
        let fail = |reason: String| SshError::Upload {
            host: self.host().to_string(),
            path: upload.path.clone(),
            reason,
        };
        if !upload.path.starts_with('/') {
            return Err(fail("the path must be absolute".to_string()));
        }
        let mode = upload.mode & 0o7777;

        let probe = RemoteCommand::script(PROBE_SCRIPT)
            .arg(upload.path.as_str())
            .as_root();
        let output = self.run_checked(&probe).await?;
        let state = parse_probe(&output.stdout_text()).map_err(fail)?;
        let sha256 = sha256_hex(&upload.contents);
        match &state {
            RemoteFile::NotAFile => {
                return Err(fail("it exists and is not a regular file".to_string()))
            }
            RemoteFile::Symlink => {
                return Err(fail(
                    "it is a symbolic link; pgha never writes through one (remove the link)"
                        .to_string(),
                ))
            }
            RemoteFile::SymlinkDirectory => {
                return Err(fail(
                    "its directory is a symbolic link; pgha never writes through one (name the real directory)"
                        .to_string(),
                ))
            }
            RemoteFile::UnsafeDirectory(how) => {
                return Err(fail(format!(
                    "its directory is writable by others than root ({how}); make it root's, e.g. `chown root: DIR && chmod go-w DIR`"
                )))
            }
            RemoteFile::File {
                owner,
                group,
                mode: current_mode,
                sha256: current_sha256,
                mtime,
            } if *owner == upload.owner
                && *group == upload.group
                && *current_mode == mode
                && *current_sha256 == sha256 =>
            {
                // Same bytes: at most the time needs setting, not a second copy of the file.
                match upload.mtime {
                    Some(wanted) if wanted != *mtime => {
                        let touch = RemoteCommand::argv(["touch", "-m", "-d"])
                            .arg(format!("@{wanted}"))
                            .arg("--")
                            .arg(upload.path.as_str())
                            .as_root();
                        self.run_checked(&touch).await?;
                    }
                    _ => {}
                }
                return Ok(false);
            }
            _ => {}
        }

        let write = RemoteCommand::script(WRITE_SCRIPT)
            .arg(upload.path.as_str())
            .arg(upload.owner.as_str())
            .arg(upload.group.as_str())
            .arg(format!("{mode:o}"))
            .arg(
                upload
                    .mtime
                    .map(|mtime| mtime.to_string())
                    .unwrap_or_default(),
            )
            .stdin({
                let mut stdin = format!("{} {sha256}\n", upload.contents.len()).into_bytes();
                stdin.extend_from_slice(&upload.contents);
                stdin
            })
            .as_root();
        self.run_checked(&write).await?;
        Ok(true)
    }
}

fn parse_probe(stdout: &str) -> Result<RemoteFile, String> {
    let unexpected = || format!("unexpected probe output {stdout:?}");
    let mut lines = stdout.lines();
    let first = lines.next().ok_or_else(unexpected)?;
    match first {
        "missing" => return Ok(RemoteFile::Missing),
        "not-a-file" => return Ok(RemoteFile::NotAFile),
        "symlink" => return Ok(RemoteFile::Symlink),
        "symlink-directory" => return Ok(RemoteFile::SymlinkDirectory),
        _ => {}
    }
    if let Some(how) = first.strip_prefix("unsafe-directory ") {
        return Ok(RemoteFile::UnsafeDirectory(how.to_string()));
    }
    let fields: Vec<&str> = first.split(' ').collect();
    let [owner, group, mode, mtime] = fields[..] else {
        return Err(unexpected());
    };
    let mode = u32::from_str_radix(mode, 8).map_err(|_| unexpected())?;
    let mtime = mtime.parse().map_err(|_| unexpected())?;
    let sha256 = lines
        .next()
        .and_then(|line| line.split_whitespace().next())
        .filter(|hash| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(unexpected)?;
    Ok(RemoteFile::File {
        owner: owner.to_string(),
        group: group.to_string(),
        mode,
        sha256: sha256.to_ascii_lowercase(),
        mtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn probe_output_parses() {
        let hash = sha256_hex(b"abc");
        assert_eq!(parse_probe("missing\n"), Ok(RemoteFile::Missing));
        assert_eq!(parse_probe("not-a-file\n"), Ok(RemoteFile::NotAFile));
        assert_eq!(parse_probe("symlink\n"), Ok(RemoteFile::Symlink));
        assert_eq!(
            parse_probe("unsafe-directory postgres 750\n"),
            Ok(RemoteFile::UnsafeDirectory("postgres 750".into()))
        );
        assert_eq!(
            parse_probe(&format!("postgres postgres 640 1764115200\n{hash}  -\n")),
            Ok(RemoteFile::File {
                owner: "postgres".to_string(),
                group: "postgres".to_string(),
                mode: 0o640,
                sha256: hash.clone(),
                mtime: 1764115200,
            })
        );
        assert_eq!(
            parse_probe(&format!("root root 4755 0\n{hash}  -\n")).map(|f| match f {
                RemoteFile::File { mode, .. } => mode,
                _ => 0,
            }),
            Ok(0o4755)
        );
    }

    #[test]
    fn garbage_probe_output_is_an_error() {
        let hash = sha256_hex(b"abc");
        for garbage in [
            "",
            "root root\n",
            "root root 9z9 0\nabc  -\n",
            "root root 644 0\n",
            "root root 644 0\nnot-a-hash  -\n",
            &format!("root root 644\n{hash}  -\n"),
            &format!("root root 644 soon\n{hash}  -\n"),
            &format!("root root 644 0 extra\n{hash}  -\n"),
        ] {
            assert!(parse_probe(garbage).is_err(), "{garbage:?} was accepted");
        }
    }
}
