//! Authentication through a real `ssh-agent` against a real `sshd`. A test binary of its own:
//! it sets `SSH_AUTH_SOCK` for the whole process, which would leak into the other SSH tests
//! (an agent holding the authorized key would make "unauthorized key" tests pass wrongly).

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha::ssh::{RemoteCommand, Session, SshTarget};

/// A child process killed (by its PID) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success());
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn keys_from_ssh_agent_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    fs::create_dir_all("/run/sshd").expect("create privilege separation directory");
    keygen(&path("host_ed25519"));
    keygen(&path("agent_ed25519"));
    fs::copy(path("agent_ed25519.pub"), path("authorized_keys")).expect("copy key");

    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    fs::write(
        path("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_ed25519\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPidFile {dir}/sshd.pid\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\n",
            dir = dir.path().display()
        ),
    )
    .expect("write sshd_config");
    let _sshd = Guard(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd"),
    );
    wait_for("sshd", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let socket = path("agent.sock");
    let _agent = Guard(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ssh-agent"),
    );
    wait_for("ssh-agent", || socket.exists());
    let added = Command::new("ssh-add")
        .arg(path("agent_ed25519"))
        .env("SSH_AUTH_SOCK", &socket)
        .stderr(Stdio::null())
        .status()
        .expect("run ssh-add");
    assert!(added.success());
    // The private key is now only in the agent.
    fs::remove_file(path("agent_ed25519")).expect("remove private key");
    std::env::set_var("SSH_AUTH_SOCK", &socket);

    let host_key = fs::read_to_string(path("host_ed25519.pub")).expect("read host key");
    fs::write(
        path("known_hosts"),
        format!("[127.0.0.1]:{port} {host_key}"),
    )
    .expect("write known_hosts");
    let target = SshTarget {
        host: "127.0.0.1".to_string(),
        port,
        user: "root".to_string(),
        identity_file: None,
        known_hosts: path("known_hosts"),
        accept_new_host_keys: false,
        connect_timeout: Duration::from_secs(5),
    };
    let session = Session::connect(&target).await.expect("agent auth");
    let output = session
        .run(&RemoteCommand::argv(["id", "-un"]))
        .await
        .expect("run");
    assert_eq!(output.stdout_text(), "root\n");
}
