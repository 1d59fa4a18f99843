//! The playbook engine end to end against a real OpenSSH `sshd`: one daemon listens on
//! 127.0.0.1, .2 and .3 (three "hosts" that are this machine), with strict host keys; a fourth
//! node at 127.0.0.4 has nothing listening (unreachable). Every playbook writes only under its
//! own temporary folder. Needs root and `/usr/sbin/sshd`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOSTS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start sshd on the three addresses and write an inventory for them plus one dead node.
fn start() -> (Sshd, PathBuf, u16) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all("/run/sshd").unwrap();
    keygen(&dir.path().join("host"));
    keygen(&dir.path().join("client"));
    fs::copy(
        dir.path().join("client.pub"),
        dir.path().join("authorized_keys"),
    )
    .unwrap();
    let port = free_port();
    let listen: String = HOSTS
        .iter()
        .map(|host| format!("ListenAddress {host}:{port}\n"))
        .collect();
    let config = dir.path().join("sshd_config");
    fs::write(
        &config,
        format!(
            "{listen}HostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nMaxSessions 50\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while HOSTS
        .iter()
        .any(|host| std::net::TcpStream::connect((*host, port)).is_err())
    {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let host_key = fs::read_to_string(dir.path().join("host.pub")).unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let known: String = HOSTS
        .iter()
        .map(|host| format!("[{host}]:{port} {}\n", host_key.join(" ")))
        .collect();
    fs::write(dir.path().join("known_hosts"), known).unwrap();
    let inventory = dir.path().join("inv.yml");
    fs::write(
        &inventory,
        format!(
            "cluster: {{name: enginetest, postgres_version: 15}}\n\
             ssh: {{user: root, port: {port}, identity_file: {d}/client, known_hosts: {d}/known_hosts}}\n\
             nodes:\n  - {{name: n1, address: 127.0.0.1}}\n  - {{name: n2, address: 127.0.0.2}}\n  - {{name: n3, address: 127.0.0.3}}\n  - {{name: dead, address: 127.0.0.4, roles: [haproxy]}}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    (Sshd { child, dir }, inventory, port)
}

fn pgha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .unwrap()
}

fn run_json(inventory: &Path, playbook: &Path, extra: &[&str]) -> (serde_json::Value, Output) {
    let mut args = vec![
        "run",
        "-i",
        inventory.to_str().unwrap(),
        playbook.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = pgha(&args);
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (json, output)
}

fn changed(result: &serde_json::Value) -> u64 {
    result["hosts"]
        .as_object()
        .unwrap()
        .values()
        .map(|host| host["changed"].as_u64().unwrap())
        .sum()
}

#[test]
fn check_diff_apply_handlers_idempotency_and_one_connection_per_host() {
    let (sshd, inventory, _) = start();
    let work = sshd.dir.path().join("work");
    let playbook = sshd.dir.path().join("site.yml");
    // A binary copied from the control machine: compared by size and modification time.
    let tool = sshd.dir.path().join("tool");
    let write_tool = |contents: &[u8], mtime: u64| {
        fs::write(&tool, contents).unwrap();
        fs::File::options()
            .write(true)
            .open(&tool)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
    };
    write_tool(b"\x7fELF\0\x01 tool v1", 1_700_000_000);
    let write_playbook = |greeting: &str| {
        fs::write(
            &playbook,
            format!(
                "- name: files
  hosts: n1,n2,n3
  tasks:
    - name: folder
      file: {{path: \"{w}/{{{{ node.name }}}}\", state: directory, mode: \"0750\"}}
    - name: greeting
      copy: {{dest: \"{w}/{{{{ node.name }}}}/greeting\", content: \"{greeting} from {{{{ node.name }}}}\\n\", mode: \"0640\"}}
      notify: count
    - name: tool binary
      copy: {{src: \"{tool}\", dest: \"{w}/{{{{ node.name }}}}/tool\", mode: \"0755\"}}
    - name: rendered template
      template: {{src: haproxy.cfg.j2, dest: \"{w}/{{{{ node.name }}}}/haproxy.cfg\", owner: root, group: root, mode: \"0600\"}}
    - name: one-time setup
      command: {{cmd: \"touch {w}/{{{{ node.name }}}}/setup-done\", creates: \"{w}/{{{{ node.name }}}}/setup-done\"}}
    - name: read the greeting
      command: {{cmd: \"cat {w}/{{{{ node.name }}}}/greeting\", changed_when: false}}
      register: greeting
    - name: only where the greeting says so
      command: {{cmd: \"touch {w}/{{{{ node.name }}}}/conditional\", creates: \"{w}/{{{{ node.name }}}}/conditional\"}}
      when: \"'n2' in greeting.stdout\"
  handlers:
    - name: count
      command: \"echo ran >> {w}/{{{{ node.name }}}}/handler-runs\"
",
                w = work.display(),
                tool = tool.display()
            ),
        )
        .unwrap();
    };
    write_playbook("hello");

    // --check plans and changes nothing.
    let (plan, _) = run_json(&inventory, &playbook, &["--check"]);
    assert_eq!(plan["success"], true, "{plan:#}");
    assert!(changed(&plan) >= 12, "{plan:#}");
    assert!(!work.exists(), "--check must not touch the hosts");

    // Apply: files with their modes, the handler once per host, `when` over a registered value.
    let (first, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(first["success"], true, "{first:#}");
    for node in ["n1", "n2", "n3"] {
        let folder = work.join(node);
        assert_eq!(
            fs::read_to_string(folder.join("greeting")).unwrap(),
            format!("hello from {node}\n")
        );
        assert_eq!(
            fs::metadata(folder.join("greeting"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert_eq!(
            fs::metadata(&folder).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert!(fs::read_to_string(folder.join("haproxy.cfg"))
            .unwrap()
            .contains("listen pgha_write"));
        assert_eq!(
            fs::read_to_string(folder.join("handler-runs")).unwrap(),
            "ran\n"
        );
        assert_eq!(folder.join("conditional").exists(), node == "n2");
        let copied = fs::metadata(folder.join("tool")).unwrap();
        assert_eq!(
            fs::read(folder.join("tool")).unwrap(),
            fs::read(&tool).unwrap()
        );
        assert_eq!(
            copied.mtime(),
            1_700_000_000,
            "the copy keeps the local time"
        );
        assert_eq!(first["hosts"][node]["connections"], 1);
    }

    // A second run changes nothing and runs no handler.
    let (second, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(changed(&second), 0, "{:#}", second["changes"]);
    assert_eq!(
        fs::read_to_string(work.join("n1/handler-runs")).unwrap(),
        "ran\n"
    );

    // Same bytes with a new time (a rebuild that produced the same file): only the time is
    // set on the hosts, and that is no change.
    write_tool(b"\x7fELF\0\x01 tool v1", 1_700_000_050);
    let (retimed, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(changed(&retimed), 0, "{:#}", retimed["changes"]);
    assert_eq!(
        fs::metadata(work.join("n2/tool")).unwrap().mtime(),
        1_700_000_050
    );

    // A content change: --check --diff shows it, apply makes it, the handler runs again.
    // The binary changed too: --diff names it without printing it.
    write_playbook("goodbye");
    write_tool(b"\x7fELF\0\x01 tool v2!", 1_700_000_100);
    let (diff, _) = run_json(&inventory, &playbook, &["--check", "--diff"]);
    let changes = diff["changes"].as_array().unwrap();
    let greeting = changes
        .iter()
        .find(|change| change["task"] == "greeting" && change["host"] == "n1")
        .unwrap();
    let text = greeting["diff"].as_str().unwrap();
    assert!(
        text.contains("-hello from n1") && text.contains("+goodbye from n1"),
        "{text}"
    );
    let binary = changes
        .iter()
        .find(|change| change["task"] == "tool binary" && change["host"] == "n2")
        .unwrap();
    let text = binary["diff"].as_str().unwrap();
    assert!(text.contains("binary") && !text.contains("ELF"), "{text}");
    assert_eq!(
        fs::read_to_string(work.join("n1/greeting")).unwrap(),
        "hello from n1\n"
    );
    let (third, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(
        fs::read(work.join("n3/tool")).unwrap(),
        b"\x7fELF\0\x01 tool v2!"
    );
    assert_eq!(
        changed(&third),
        9,
        "greeting, binary and handler on 3 hosts: {:#}",
        third["changes"]
    );
    assert_eq!(
        fs::read_to_string(work.join("n3/handler-runs")).unwrap(),
        "ran\nran\n"
    );
}

/// Facts carry over from play to play (one probe serves the whole playbook on a converged
/// host), but a change in one play makes the next play look again.
#[test]
fn a_later_play_sees_what_an_earlier_play_changed() {
    let (sshd, inventory, _) = start();
    let work = sshd.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let playbook = sshd.dir.path().join("two-plays.yml");
    fs::write(
        &playbook,
        format!(
            "- name: make
  hosts: n1
  tasks:
    - name: scratch file
      copy: {{dest: \"{w}/scratch\", content: \"x\\n\"}}
- name: clean up
  hosts: n1
  tasks:
    - name: no scratch file
      file: {{path: \"{w}/scratch\", state: absent}}
",
            w = work.display()
        ),
    )
    .unwrap();
    let (result, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(result["success"], true, "{result:#}");
    assert_eq!(changed(&result), 2, "{:#}", result["changes"]);
    assert!(
        !work.join("scratch").exists(),
        "the second play planned from facts gathered before the first play's change"
    );
    assert_eq!(result["hosts"]["n1"]["connections"], 1);
}

#[test]
fn serial_batches_stop_on_failure_and_unreachable_hosts_are_reported() {
    let (sshd, inventory, _) = start();
    let work = sshd.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let playbook = sshd.dir.path().join("rolling.yml");
    fs::write(
        &playbook,
        format!(
            "- name: rolling
  hosts: n1,n2,n3
  serial: 1
  tasks:
    - name: fail on n2
      command: \"test {{{{ node.name }}}} != n2\"
    - name: mark
      command: \"touch {w}/{{{{ node.name }}}}\"
- name: everyone
  hosts: all
  tasks:
    - {{name: hello, command: {{cmd: \"true\", changed_when: false}}}}
",
            w = work.display()
        ),
    )
    .unwrap();
    let (result, output) = run_json(&inventory, &playbook, &[]);
    assert!(!output.status.success());
    assert!(work.join("n1").exists(), "batch 1 ran");
    assert!(
        !work.join("n2").exists() && !work.join("n3").exists(),
        "the failing batch stops the rollout"
    );
    assert_eq!(result["hosts"]["n2"]["failed"], 1);
    let failure = &result["hosts"]["n2"]["failures"][0];
    assert!(
        failure["message"].as_str().unwrap().contains("exit code 1"),
        "{failure:#}"
    );
    assert!(
        failure["place"].as_str().unwrap().contains("rolling.yml:"),
        "{failure:#}"
    );
    assert!(result["stopped"]
        .as_str()
        .unwrap()
        .contains("max_fail_percentage 0"));

    // The dead node is unreachable; the others still run and the exit code says it failed.
    let hello = sshd.dir.path().join("hello.yml");
    fs::write(&hello, "- name: everyone\n  hosts: all\n  tasks:\n    - {name: hello, command: {cmd: \"true\", changed_when: false}}\n").unwrap();
    let (result, output) = run_json(&inventory, &hello, &[]);
    assert!(!output.status.success());
    assert_eq!(result["hosts"]["dead"]["unreachable"], 1, "{result:#}");
    assert_eq!(result["hosts"]["n1"]["ok"], 1, "{result:#}");
    assert_eq!(result["hosts"]["n3"]["failed"], 0);
}

#[test]
fn bad_playbooks_are_refused_before_any_host_is_contacted() {
    let (sshd, inventory, _) = start();
    let playbook = sshd.dir.path().join("bad.yml");
    fs::write(
        &playbook,
        "- name: x\n  hosts: all\n  tasks:\n    - name: t\n      shel: {cmd: 'touch /tmp/never'}\n",
    )
    .unwrap();
    let output = pgha(&[
        "run",
        "-i",
        inventory.to_str().unwrap(),
        playbook.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yml:5:") && stderr.contains("unknown module or task key `shel`"),
        "{stderr}"
    );

    fs::write(
        &playbook,
        "- name: x\n  hosts: nosuchnode\n  tasks:\n    - {name: t, command: 'true'}\n",
    )
    .unwrap();
    let output = pgha(&[
        "run",
        "-i",
        inventory.to_str().unwrap(),
        playbook.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`nosuchnode` is neither a node"));
    drop(sshd);
}

#[test]
fn exec_runs_ad_hoc_commands_with_hostile_arguments_intact() {
    let (_sshd, inventory, _) = start();
    let output = pgha(&[
        "exec",
        "-i",
        inventory.to_str().unwrap(),
        "--limit",
        "n1,n3",
        "--json",
        "--",
        "printf '%s|' \"$(echo \"a'b\")\" '$HOME' ; echo",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        assert_eq!(result["stdout"], "a'b|$HOME|\n", "{result:#}");
    }
}

#[test]
fn a_handler_notified_by_a_failed_run_runs_in_the_next_one() {
    let (sshd, inventory, _) = start();
    let work = sshd.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let fail = work.join("fail");
    let reloads = work.join("reloads");
    let playbook = sshd.dir.path().join("pending.yml");
    fs::write(
        &playbook,
        format!(
            "- name: pending handler
  hosts: n1
  tasks:
    - name: the configuration changes
      copy: {{dest: \"{w}/conf\", content: \"v1\\n\"}}
      notify: reload
    - name: a later task fails while the flag file exists
      command: {{cmd: \"test ! -e {fail}\", changed_when: false}}
  handlers:
    - name: reload
      command: \"echo reloaded >> {reloads}\"
",
            w = work.display(),
            fail = fail.display(),
            reloads = reloads.display()
        ),
    )
    .unwrap();
    let reload_count = || {
        fs::read_to_string(&reloads)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };

    // The change is made, then the run fails before its handler: nothing reloaded yet.
    fs::write(&fail, "").unwrap();
    let (first, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(first["success"], false, "{first:#}");
    assert_eq!(fs::read_to_string(work.join("conf")).unwrap(), "v1\n");
    assert_eq!(reload_count(), 0);

    // The next run finds nothing to change but runs the handler the failed run owed.
    fs::remove_file(&fail).unwrap();
    let (second, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(second["success"], true, "{second:#}");
    assert_eq!(reload_count(), 1, "the owed reload did not run: {second:#}");

    // Owed once, run once: a third run has nothing to do.
    let (third, _) = run_json(&inventory, &playbook, &[]);
    assert_eq!(third["success"], true, "{third:#}");
    assert_eq!(changed(&third), 0, "{third:#}");
    assert_eq!(reload_count(), 1);
}
