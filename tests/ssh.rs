//! The SSH transport against a real OpenSSH `sshd`: each test starts its own daemon on
//! 127.0.0.1 with a fresh host key, client key and known_hosts file, and kills it (by PID) when
//! done. Needs root (sshd privilege separation, test users for sudo) and `/usr/sbin/sshd`.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha::ssh::{sha256_hex, shell_quote, RemoteCommand, Session, SshError, SshTarget, Upload};

const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd and the files it uses; dropping it kills the daemon.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // sshd reads `AuthorizedKeysFile` as the logging-in user, so non-root test users need
        // to reach it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir_all("/run/sshd").expect("create privilege separation directory");
        keygen(&dir.path().join("host_ed25519"), "ed25519");
        keygen(&dir.path().join("client_ed25519"), "ed25519");
        keygen(&dir.path().join("client_rsa"), "rsa");
        keygen(&dir.path().join("stranger_ed25519"), "ed25519");
        let authorized = [
            read(&dir.path().join("client_ed25519.pub")),
            read(&dir.path().join("client_rsa.pub")),
        ]
        .concat();
        let authorized_path = dir.path().join("authorized_keys");
        fs::write(&authorized_path, authorized).expect("write authorized_keys");
        fs::set_permissions(&authorized_path, fs::Permissions::from_mode(0o644)).expect("chmod");

        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {dir}/host_ed25519\n\
                     AuthorizedKeysFile {dir}/authorized_keys\n\
                     PidFile {dir}/sshd.pid\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     LogLevel VERBOSE\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sshd_config");
            let log = fs::File::create(dir.path().join("sshd.log")).expect("create log");
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let mut sshd = Sshd { child, port, dir };
            if sshd.wait_until_listening() {
                return sshd;
            }
            // The port was taken between choosing and binding it: try another one.
            dir = sshd.take_dir();
        }
        panic!("sshd did not start; see its log above");
    }

    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("sshd exited with {status}:\n{}", self.log());
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Hand the directory to the next attempt; the dead daemon keeps an empty one.
    fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// The host's public key as `type base64`.
    fn host_key(&self) -> String {
        key_without_comment(&read(&self.path("host_ed25519.pub")))
    }

    fn host_fingerprint(&self) -> String {
        fingerprint(&self.path("host_ed25519.pub"))
    }

    fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }

    /// Record the real host key the way `ssh` would.
    fn trust_host_key(&self) {
        let line = format!("[127.0.0.1]:{} {}\n", self.port, self.host_key());
        fs::write(self.known_hosts(), line).expect("write known_hosts");
    }

    fn target(&self, user: &str) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".to_string(),
            port: self.port,
            user: user.to_string(),
            identity_file: Some(self.path("client_ed25519")),
            known_hosts: self.known_hosts(),
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(5),
        }
    }

    async fn connect_as_root(&self) -> Session {
        self.trust_host_key();
        Session::connect(&self.target("root"))
            .await
            .unwrap_or_else(|error| panic!("connect: {error}\nsshd log:\n{}", self.log()))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Kill exactly the daemon this test started (its PID), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path, kind: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// The SHA256 fingerprint of a public key file as `ssh-keygen -l` prints it.
fn fingerprint(public_key: &Path) -> String {
    let output = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key)
        .output()
        .expect("run ssh-keygen -l");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .expect("fingerprint field")
        .to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn key_without_comment(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

fn error_text(error: &SshError) -> String {
    error.to_string()
}

#[tokio::test]
async fn host_key_listed_in_known_hosts_is_accepted() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let output = session
        .run(&RemoteCommand::argv(["id", "-un"]))
        .await
        .expect("run id");
    assert_eq!(output.stdout_text(), "root\n");
    assert!(output.success());
}

#[tokio::test]
async fn unknown_host_is_refused_with_a_hint() {
    let sshd = Sshd::start();
    let error = Session::connect(&sshd.target("root"))
        .await
        .err()
        .expect("an unknown host must be refused");
    assert!(
        matches!(error, SshError::HostKeyUnknown { .. }),
        "{error:?}"
    );
    let message = error_text(&error);
    assert!(
        message.contains(&format!("[127.0.0.1]:{}", sshd.port)),
        "{message}"
    );
    assert!(message.contains(&sshd.host_fingerprint()), "{message}");
    assert!(
        message.contains("hint: re-run with `--accept-new-host-keys`"),
        "{message}"
    );
    assert!(
        message.contains(&sshd.known_hosts().display().to_string()),
        "{message}"
    );
    assert!(
        !sshd.known_hosts().exists(),
        "nothing may be recorded without consent"
    );
}

#[tokio::test]
async fn accept_new_records_the_key_and_later_connections_are_strict() {
    let sshd = Sshd::start();
    fs::write(sshd.known_hosts(), "# existing comment, no newline").expect("write");
    let mut target = sshd.target("root");
    target.accept_new_host_keys = true;
    Session::connect(&target).await.expect("accept new key");

    let text = read(&sshd.known_hosts());
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key());
    assert_eq!(text, format!("# existing comment, no newline\n{line}\n"));

    // OpenSSH itself finds the recorded entry.
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", sshd.port))
        .arg("-f")
        .arg(sshd.known_hosts())
        .output()
        .expect("run ssh-keygen -F");
    assert!(
        found.status.success(),
        "ssh-keygen -F did not find the entry"
    );

    target.accept_new_host_keys = false;
    let session = Session::connect(&target).await.expect("strict connect");
    let output = session
        .run(&RemoteCommand::argv(["true"]))
        .await
        .expect("run");
    assert!(output.success());
    assert_eq!(
        read(&sshd.known_hosts()),
        text,
        "a known host is not recorded twice"
    );
}

#[tokio::test]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let sshd = Sshd::start();
    let stranger = sshd.path("stranger_ed25519.pub");
    let original = format!(
        "# pinned\n[127.0.0.1]:{} {}\n",
        sshd.port,
        key_without_comment(&read(&stranger))
    );
    fs::write(sshd.known_hosts(), &original).expect("write known_hosts");
    let mut target = sshd.target("root");
    target.accept_new_host_keys = true;

    let error = Session::connect(&target)
        .await
        .err()
        .expect("a changed key must be refused");
    assert!(
        matches!(error, SshError::HostKeyChanged { .. }),
        "{error:?}"
    );
    let message = error_text(&error);
    assert!(
        message.starts_with("REMOTE HOST KEY CHANGED for"),
        "{message}"
    );
    assert!(message.contains(&fingerprint(&stranger)), "{message}");
    assert!(message.contains(&sshd.host_fingerprint()), "{message}");
    assert!(
        message.contains(&format!("{}:2", sshd.known_hosts().display())),
        "{message}"
    );
    assert!(message.contains("ssh-keygen -f"), "{message}");
    assert_eq!(
        read(&sshd.known_hosts()),
        original,
        "known_hosts must not change"
    );
}

#[tokio::test]
async fn hashed_known_hosts_entry_is_honoured() {
    let sshd = Sshd::start();
    sshd.trust_host_key();
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(sshd.known_hosts())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ssh-keygen -H");
    assert!(status.success());
    assert!(
        read(&sshd.known_hosts()).starts_with("|1|"),
        "entry was hashed"
    );
    Session::connect(&sshd.target("root"))
        .await
        .expect("hashed entry matches");
}

#[tokio::test]
async fn rsa_identity_authenticates() {
    let sshd = Sshd::start();
    sshd.trust_host_key();
    let mut target = sshd.target("root");
    target.identity_file = Some(sshd.path("client_rsa"));
    let session = Session::connect(&target).await.expect("rsa auth");
    let output = session
        .run(&RemoteCommand::argv(["true"]))
        .await
        .expect("run");
    assert!(output.success());
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn unauthorized_identity_is_refused() {
    let sshd = Sshd::start();
    sshd.trust_host_key();
    let mut target = sshd.target("root");
    target.identity_file = Some(sshd.path("stranger_ed25519"));
    let error = Session::connect(&target)
        .await
        .err()
        .expect("an unauthorized key must fail");
    assert!(matches!(error, SshError::Auth { .. }), "{error:?}");
    let message = error_text(&error);
    assert!(message.contains("`root@127.0.0.1`"), "{message}");
    assert!(message.contains("stranger_ed25519"), "{message}");
}

#[tokio::test]
async fn exit_codes_stdout_stderr_and_signals_are_reported() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let script = RemoteCommand::script("echo out\necho err >&2\nexit 3");
    let output = session.run(&script).await.expect("run");
    assert_eq!(output.exit_code, Some(3));
    assert_eq!(output.stdout_text(), "out\n");
    assert_eq!(output.stderr_text(), "err\n");

    let error = session
        .run_checked(&script)
        .await
        .expect_err("non-zero exit is an error for run_checked");
    let message = error_text(&error);
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.ends_with(": err"), "{message}");

    let killed = session
        .run(&RemoteCommand::script("kill -KILL $$"))
        .await
        .expect("run");
    assert_eq!(killed.exit_code, None);
    assert_eq!(killed.signal.as_deref(), Some("KILL"));

    let missing = session
        .run(&RemoteCommand::argv(["/nonexistent/program"]))
        .await
        .expect("run");
    assert_eq!(missing.exit_code, Some(127));
}

#[tokio::test]
async fn stdin_is_delivered_exactly_even_when_large() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let secret = b"s3cr3t 'pass' $(word)\n".to_vec();
    let output = session
        .run(&RemoteCommand::argv(["cat"]).stdin(secret.clone()))
        .await
        .expect("run cat");
    assert_eq!(output.stdout, secret);

    // Several MiB both ways at once: stdin must be fed while output is read.
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let output = session
        .run(&RemoteCommand::argv(["cat"]).stdin(big.clone()))
        .await
        .expect("run cat with big input");
    assert_eq!(output.stdout.len(), big.len());
    assert!(output.stdout == big, "big stdin came back altered");

    let output = session
        .run(&RemoteCommand::argv(["sha256sum"]).stdin(big.clone()))
        .await
        .expect("run sha256sum");
    assert!(output.stdout_text().starts_with(&sha256_hex(&big)));

    // A command that ignores its input still finishes normally.
    let output = session
        .run(&RemoteCommand::argv(["true"]).stdin(big))
        .await
        .expect("run true");
    assert!(output.success());

    // Without stdin the command sees end-of-file, not a hang.
    let output = session
        .run(&RemoteCommand::argv(["wc", "-c"]))
        .await
        .expect("run wc");
    assert_eq!(output.stdout_text().trim(), "0");
}

const HOSTILE: &[&str] = &[
    "",
    " ",
    "it's",
    "'",
    "'\\''",
    "\"",
    "$(touch /tmp/pgha-pwned)",
    "`touch /tmp/pgha-pwned`",
    "$HOME ${PATH} $$ $0 $1",
    "line one\nline two\n",
    "\ttab\r\n",
    "; rm -rf / #",
    "a && b || c | d > e < f & g",
    "*?[a-z]{x,y}~",
    "-n",
    "--",
    "ünïcødé ✓ 🐘 日本語",
    "\\\\ \\n \\' \\\"",
];

#[tokio::test]
async fn hostile_strings_round_trip_through_quoting() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    for word in HOSTILE {
        let output = session
            .run(&RemoteCommand::argv(["printf", "%s", word]))
            .await
            .expect("run printf");
        assert_eq!(
            output.stdout_text(),
            *word,
            "argv word {}",
            shell_quote(word)
        );

        let output = session
            .run(&RemoteCommand::script("printf %s \"$1\"").arg(*word))
            .await
            .expect("run script");
        assert_eq!(
            output.stdout_text(),
            *word,
            "script arg {}",
            shell_quote(word)
        );

        // The word inside the script text itself, quoted by the caller.
        let script = format!("printf %s {}", shell_quote(word));
        let output = session
            .run(&RemoteCommand::script(script))
            .await
            .expect("run inline script");
        assert_eq!(output.stdout_text(), *word, "inline {}", shell_quote(word));
    }
    assert!(
        !Path::new("/tmp/pgha-pwned").exists(),
        "a quoted word was executed"
    );
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("pgha-upload"))
        .collect()
}

#[tokio::test]
async fn upload_is_atomic_idempotent_and_sets_owner_and_mode() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let remote_dir = sshd.path("remote");
    fs::create_dir(&remote_dir).expect("mkdir");
    let path = remote_dir.join("patroni.yml");
    let mut upload = Upload {
        path: path.display().to_string(),
        contents: b"scope: demo\npassword: 'x$(y)'\n".to_vec(),
        owner: "nobody".to_string(),
        group: "nogroup".to_string(),
        mode: 0o640,
        mtime: None,
    };

    assert!(
        session.upload(&upload).await.expect("first upload"),
        "first upload changes"
    );
    let metadata = fs::metadata(&path).expect("stat");
    assert_eq!(fs::read(&path).expect("read"), upload.contents);
    assert_eq!(metadata.mode() & 0o7777, 0o640);
    assert_eq!(metadata.uid(), 65534);
    assert_eq!(metadata.gid(), 65534);
    let inode = metadata.ino();

    assert!(
        !session.upload(&upload).await.expect("second upload"),
        "same file: no change"
    );
    assert_eq!(
        fs::metadata(&path).expect("stat").ino(),
        inode,
        "not rewritten"
    );

    upload.mode = 0o600;
    assert!(
        session.upload(&upload).await.expect("mode change"),
        "mode differs"
    );
    assert_eq!(fs::metadata(&path).expect("stat").mode() & 0o7777, 0o600);

    // A wanted modification time is set on write, and on its own when only the time differs
    // (no second copy of the bytes: the inode stays).
    let inode = fs::metadata(&path).expect("stat").ino();
    upload.mtime = Some(1_700_000_000);
    assert!(
        !session.upload(&upload).await.expect("time only"),
        "same bytes: no change"
    );
    let metadata = fs::metadata(&path).expect("stat");
    assert_eq!(metadata.mtime(), 1_700_000_000);
    assert_eq!(metadata.ino(), inode, "only the time was set");
    upload.mtime = None;

    // A reader holding the old file keeps seeing it whole: the new one is renamed over it.
    let mut reader = fs::File::open(&path).expect("open old file");
    let old_contents = upload.contents.clone();
    upload.contents = b"scope: other\n".to_vec();
    assert!(session.upload(&upload).await.expect("content change"));
    assert_eq!(fs::read(&path).expect("read"), upload.contents);
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut seen).expect("read old file");
    assert_eq!(seen, old_contents, "the old file was rewritten in place");
    let old_inode = reader.metadata().expect("stat").ino();
    assert_ne!(fs::metadata(&path).expect("stat").ino(), old_inode);
    assert!(
        leftovers(&remote_dir).is_empty(),
        "{:?}",
        leftovers(&remote_dir)
    );

    // A failed write (unknown owner) leaves the old file and no temporary file behind.
    let mut bad = upload.clone();
    bad.contents = b"never\n".to_vec();
    bad.owner = "no-such-user-pgha".to_string();
    let error = session.upload(&bad).await.expect_err("unknown owner fails");
    assert!(matches!(error, SshError::CommandFailed { .. }), "{error:?}");
    assert_eq!(fs::read(&path).expect("read"), upload.contents);
    assert!(
        leftovers(&remote_dir).is_empty(),
        "{:?}",
        leftovers(&remote_dir)
    );

    // Missing directory and relative paths are clear errors.
    let mut missing = upload.clone();
    missing.path = remote_dir.join("nope/file").display().to_string();
    assert!(session.upload(&missing).await.is_err());
    missing.path = "relative/file".to_string();
    let error = session.upload(&missing).await.expect_err("relative path");
    assert!(error_text(&error).contains("must be absolute"), "{error}");
}

/// A TCP relay to `port` for one connection that cuts both directions once `limit` bytes went
/// from the client to the server: a connection dropped mid-way, as a network would drop it.
fn cutting_relay(port: u16, limit: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let relay_port = listener.local_addr().expect("relay addr").port();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let server = std::net::TcpStream::connect(("127.0.0.1", port)).expect("reach sshd");
        let (mut client_read, mut server_write) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut server_read, mut client_write) =
            (server.try_clone().unwrap(), client.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut server_read, &mut client_write);
        });
        let mut forwarded = 0;
        let mut buffer = [0u8; 16384];
        while forwarded < limit {
            match std::io::Read::read(&mut client_read, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if std::io::Write::write_all(&mut server_write, &buffer[..read]).is_err() {
                        break;
                    }
                    forwarded += read;
                }
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = server.shutdown(std::net::Shutdown::Both);
    });
    relay_port
}

#[tokio::test]
async fn an_upload_cut_mid_way_keeps_the_old_file_and_the_next_one_completes() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let remote_dir = sshd.path("remote");
    fs::create_dir(&remote_dir).expect("mkdir");
    let path = remote_dir.join("pgha");
    let old = Upload {
        path: path.display().to_string(),
        contents: b"the old binary\n".to_vec(),
        owner: "root".to_string(),
        group: "root".to_string(),
        mode: 0o755,
        mtime: None,
    };
    assert!(session.upload(&old).await.expect("first upload"));

    // 16 MiB that do not compress, through a relay that cuts the connection after 4 MiB.
    let mut new = old.clone();
    new.contents = (0..16u32 << 20)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let relay = cutting_relay(sshd.port, 4 << 20);
    let line = format!("[127.0.0.1]:{relay} {}\n", sshd.host_key());
    fs::write(
        sshd.known_hosts(),
        format!("{}{line}", read(&sshd.known_hosts())),
    )
    .expect("trust");
    let cut = Session::connect(&SshTarget {
        port: relay,
        ..sshd.target("root")
    })
    .await
    .expect("connect through the relay");
    let error = cut
        .upload(&new)
        .await
        .expect_err("the cut upload must fail");
    eprintln!("the cut upload failed as it must: {error}");

    // The remote side notices the drop and cleans up; the old file is whole meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leftovers(&remote_dir).is_empty() && Instant::now() < deadline {
        assert_eq!(
            fs::read(&path).expect("read"),
            old.contents,
            "the old file was damaged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fs::read(&path).expect("read"),
        old.contents,
        "the old file was replaced"
    );
    assert!(
        leftovers(&remote_dir).is_empty(),
        "{:?}",
        leftovers(&remote_dir)
    );

    // The next run completes, and what it installed is whole.
    assert!(session.upload(&new).await.expect("the next upload"));
    assert_eq!(
        sha256_hex(&fs::read(&path).expect("read")),
        sha256_hex(&new.contents)
    );
    assert_eq!(fs::metadata(&path).expect("stat").mode() & 0o7777, 0o755);
}

#[tokio::test]
async fn uploads_never_go_through_a_symlink_or_into_a_directory_others_can_write() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let remote_dir = sshd.path("remote");
    fs::create_dir(&remote_dir).expect("mkdir");
    let victim = remote_dir.join("victim");
    fs::write(&victim, "keep me\n").expect("write victim");
    let link = remote_dir.join("link.yml");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let upload = Upload {
        path: link.display().to_string(),
        contents: b"through the link\n".to_vec(),
        owner: "root".to_string(),
        group: "root".to_string(),
        mode: 0o644,
        mtime: None,
    };
    let error = session
        .upload(&upload)
        .await
        .expect_err("a symlink target is refused");
    assert!(error_text(&error).contains("symbolic link"), "{error}");
    assert_eq!(read(&victim), "keep me\n");

    // A directory the `nobody` user owns: it could swap the temporary file before the rename.
    let shared = remote_dir.join("shared");
    fs::create_dir(&shared).expect("mkdir");
    std::os::unix::fs::chown(&shared, Some(65534), Some(65534)).expect("chown");
    let upload = Upload {
        path: shared.join("patroni.yml").display().to_string(),
        ..upload
    };
    let error = session
        .upload(&upload)
        .await
        .expect_err("an unsafe directory is refused");
    assert!(
        error_text(&error).contains("writable by others than root"),
        "{error}"
    );
    assert!(!shared.join("patroni.yml").exists());
}

#[tokio::test]
async fn closed_port_fails_fast_with_a_clear_error() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = SshTarget {
        host: "127.0.0.1".to_string(),
        port,
        user: "root".to_string(),
        identity_file: None,
        known_hosts: dir.path().join("known_hosts"),
        accept_new_host_keys: false,
        connect_timeout: Duration::from_secs(10),
    };
    let started = Instant::now();
    let error = Session::connect(&target)
        .await
        .err()
        .expect("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, SshError::Connect { .. }), "{error:?}");
    let message = error_text(&error);
    assert!(
        message.contains(&format!("`127.0.0.1:{port}`")),
        "{message}"
    );
    assert!(message.contains("hint:"), "{message}");
}

#[tokio::test]
async fn silent_peer_times_out() {
    // A socket that accepts and never speaks SSH: the handshake stage must give up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let accepted = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(accepted);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let target = SshTarget {
        host: "127.0.0.1".to_string(),
        port,
        user: "root".to_string(),
        identity_file: None,
        known_hosts: dir.path().join("known_hosts"),
        accept_new_host_keys: false,
        connect_timeout: Duration::from_millis(300),
    };
    let error = Session::connect(&target)
        .await
        .err()
        .expect("must time out");
    hold.abort();
    assert!(matches!(error, SshError::Timeout { .. }), "{error:?}");
    assert_eq!(
        error_text(&error),
        format!("SSH handshake with `127.0.0.1:{port}` timed out after 300ms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_parallel_commands_share_one_connection() {
    let sshd = Sshd::start();
    let session = sshd.connect_as_root().await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let session = session.clone();
            tokio::spawn(async move {
                let command =
                    RemoteCommand::script("sleep 0.1; printf %s \"$1\"").arg(i.to_string());
                session.run(&command).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let output = task.await.expect("join").expect("run");
        assert_eq!(output.stdout_text(), i.to_string());
    }
    let logins = sshd.log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "one connection, one login:\n{}", sshd.log());
}

/// A throw-away local user for the sudo path, with or without a passwordless sudo rule. Its
/// password field is `*` (no password, but not locked, so sshd lets it in with a key). Dropping
/// it removes the user and its rule, however the test ends. Each test has its own user, so the
/// tests can run in parallel.
struct TestUser {
    name: &'static str,
    rule: Option<PathBuf>,
}

impl TestUser {
    fn create(name: &'static str, passwordless_sudo: bool) -> TestUser {
        assert!(
            Path::new("/usr/bin/sudo").exists(),
            "the sudo path needs `/usr/bin/sudo`; hint: run `scripts/setup-host.sh`, which installs `sudo`"
        );
        let exists = Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run id")
            .success();
        // Created before the user, so that a failure below still removes whatever exists.
        let user = TestUser {
            name,
            rule: passwordless_sudo.then(|| PathBuf::from(format!("/etc/sudoers.d/{name}"))),
        };
        if !exists {
            let status = Command::new("useradd")
                .args([
                    "--no-create-home",
                    "--home-dir",
                    "/tmp",
                    "--shell",
                    "/bin/sh",
                ])
                .args(["--password", "*", name])
                .status()
                .expect("run useradd");
            assert!(status.success(), "useradd {name}");
        }
        if let Some(rule) = &user.rule {
            fs::write(rule, format!("{name} ALL=(ALL) NOPASSWD: ALL\n"))
                .expect("write sudoers rule");
            fs::set_permissions(rule, fs::Permissions::from_mode(0o440)).expect("chmod");
        }
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Some(rule) = &self.rule {
            let _ = fs::remove_file(rule);
        }
        // The daemon's per-connection process may still run as the user for a moment after
        // the test ended; `userdel` refuses until it is gone. Wait for it, then insist.
        let removed = |force: bool| {
            let mut command = Command::new("userdel");
            if force {
                command.arg("--force");
            }
            command
                .arg(self.name)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !removed(false) {
            if Instant::now() > deadline {
                let _ = removed(true);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn non_root_user_runs_root_commands_through_sudo() {
    let user = TestUser::create("pgha-test", true);
    let sshd = Sshd::start();
    sshd.trust_host_key();
    let session = Session::connect(&sshd.target(user.name))
        .await
        .unwrap_or_else(|error| panic!("connect: {error}\n{}", sshd.log()));

    let plain = session
        .run(&RemoteCommand::argv(["id", "-un"]))
        .await
        .expect("run");
    assert_eq!(plain.stdout_text(), "pgha-test\n");
    let root = session
        .run(&RemoteCommand::argv(["id", "-un"]).as_root())
        .await
        .expect("run as root");
    assert_eq!(
        root.stdout_text(),
        "root\n",
        "stderr: {}",
        root.stderr_text()
    );

    let hostile = "it's $(id) `id`\n";
    let output = session
        .run(
            &RemoteCommand::script("id -un; printf %s \"$1\"; cat")
                .arg(hostile)
                .stdin("from stdin")
                .as_root(),
        )
        .await
        .expect("script as root");
    assert_eq!(output.stdout_text(), format!("root\n{hostile}from stdin"));

    let remote_dir = sshd.path("remote");
    fs::create_dir(&remote_dir).expect("mkdir");
    fs::set_permissions(&remote_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let upload = Upload {
        path: remote_dir.join("secret.conf").display().to_string(),
        contents: b"password=hunter2\n".to_vec(),
        owner: "root".to_string(),
        group: "root".to_string(),
        mode: 0o600,
        mtime: None,
    };
    assert!(session.upload(&upload).await.expect("upload via sudo"));
    assert!(!session
        .upload(&upload)
        .await
        .expect("second upload via sudo"));
    assert_eq!(
        fs::read(remote_dir.join("secret.conf")).expect("read"),
        upload.contents
    );
}

#[tokio::test]
async fn sudo_that_wants_a_password_is_a_clear_error() {
    let user = TestUser::create("pgha-test-nosudo", false);
    let sshd = Sshd::start();
    sshd.trust_host_key();
    let session = Session::connect(&sshd.target(user.name))
        .await
        .unwrap_or_else(|error| panic!("connect: {error}\n{}", sshd.log()));
    let started = Instant::now();
    let error = session
        .run(&RemoteCommand::argv(["true"]).as_root())
        .await
        .expect_err("sudo must not prompt");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(error, SshError::SudoPassword { .. }), "{error:?}");
    assert!(error_text(&error).contains("hint:"), "{error}");
}
