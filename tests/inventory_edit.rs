//! `pgha inventory set|unset|add-node|remove-node` on a copy of the commented example
//! inventory: the file changes only in the edited lines, `--dry-run` and refused edits leave
//! every byte as it was, and a refused edit exits 2 naming the problem's place.

use std::path::Path;
use std::process::{Command, Output};

fn pgha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .output()
        .expect("run pgha")
}

fn lines_changed(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for change in similar::TextDiff::from_lines(old, new).iter_all_changes() {
        let line = change.value().trim_end().to_string();
        match change.tag() {
            similar::ChangeTag::Delete => removed.push(line),
            similar::ChangeTag::Insert => added.push(line),
            similar::ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

#[test]
fn edits_keep_every_other_byte_and_bad_edits_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.yml");
    let original = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/example.yml"),
    )
    .unwrap();
    std::fs::write(&file, &original).unwrap();
    let inventory = file.to_str().unwrap();

    // --dry-run prints the diff and writes nothing.
    let dry = pgha(&[
        "inventory",
        "set",
        "-i",
        inventory,
        "cluster.postgresql.parameters.work_mem",
        "64MB",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("+      work_mem: 64MB"),
        "{dry:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

    // A real edit: one line added, the rest byte for byte.
    let done = pgha(&[
        "inventory",
        "set",
        "-i",
        inventory,
        "cluster.postgresql.parameters.work_mem",
        "64MB",
    ]);
    assert!(done.status.success(), "{done:?}");
    let edited = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        lines_changed(&original, &edited),
        (vec![], vec!["      work_mem: 64MB".to_string()])
    );

    let added = pgha(&[
        "inventory",
        "add-node",
        "-i",
        inventory,
        "pg-d",
        "10.20.0.14",
        "--roles",
        "postgres,haproxy",
        "--tag",
        "nosync=true",
    ]);
    assert!(added.status.success(), "{added:?}");
    let with_node = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        lines_changed(&edited, &with_node),
        (
            vec![],
            vec![
                "  - name: pg-d".to_string(),
                "    address: 10.20.0.14".into(),
                "    roles: [postgres, haproxy]".into(),
                "    tags: {nosync: true}".into()
            ]
        )
    );

    // Refused: the edit would leave 2 etcd members (validation), an unknown value, no such
    // node. Exit 2, the place named, the file untouched.
    for (args, says) in [
        (vec!["remove-node", "pg-a"], "etcd needs at least 3"),
        (
            vec!["set", "cluster.failover_profile", "warp"],
            ":17:21: cluster.failover_profile",
        ),
        (vec!["remove-node", "pg-z"], "no node is called `pg-z`"),
        (
            vec!["set", "cluster.vip_interface", "eth0 notify /tmp/x"],
            "is not an interface name",
        ),
    ] {
        let mut full = vec!["inventory", args[0], "-i", inventory];
        full.extend_from_slice(&args[1..]);
        let output = pgha(&full);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(says),
            "{args:?}: {output:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            with_node,
            "{args:?} changed the file"
        );
    }

    // Back to the original by the opposite edits.
    assert!(pgha(&["inventory", "remove-node", "-i", inventory, "pg-d"])
        .status
        .success());
    assert!(pgha(&[
        "inventory",
        "unset",
        "-i",
        inventory,
        "cluster.postgresql.parameters.work_mem"
    ])
    .status
    .success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["example.yml"]);
}
