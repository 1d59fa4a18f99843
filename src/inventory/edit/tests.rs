//! Each edit against inventories full of comments, anchors, flow mappings and unusual
//! indentation: the result parses, holds the new value, and differs from the original only in
//! the lines that belong to the edit.

use super::*;

/// Four-space indentation, a list whose dashes are not indented, flow and block items,
/// comments everywhere, an anchor and an alias.
const RICH: &str = "\
# yaml-language-server: $schema=./pgha-inventory.schema.json
# Production: edited by hand and by pgha.
cluster:
    name: prod            # the Patroni scope
    postgres_version: 15
    vip: 10.0.0.100/24
    synchronous_mode: \"on\"
    ports: {write: 5000, read: 5001}   # what applications use

    postgresql:
        parameters:
            work_mem: 32MB    # keep me
            max_connections: &conns 200
        client_cidrs: [10.1.0.0/16]

ssh:
    user: root   # passwordless sudo otherwise

nodes:
- {name: pg-a, address: 10.0.0.11}     # rack 1
- name: pg-b
  address: 10.0.0.12
  tags: {nofailover: true}
# the third one, in rack 3
- {name: pg-c, address: 10.0.0.13}
";

fn edit(text: &str, edit: Edit) -> String {
    let edited = apply(text, &edit).unwrap_or_else(|error| panic!("{edit:?}: {error:?}"));
    // Still YAML, and the same as the original where the edit did not reach.
    serde_yaml::from_str::<serde_yaml::Value>(&edited)
        .unwrap_or_else(|error| panic!("{edit:?} gave invalid YAML ({error}):\n{edited}"));
    edited
}

/// The lines removed and added, in order.
fn changes(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let diff = similar::TextDiff::from_lines(old, new);
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for change in diff.iter_all_changes() {
        let line = change.value().trim_end_matches('\n').to_string();
        match change.tag() {
            similar::ChangeTag::Delete => removed.push(line),
            similar::ChangeTag::Insert => added.push(line),
            similar::ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

fn set(path: &str, value: &str) -> Edit {
    Edit::Set {
        path: path.into(),
        value: value.into(),
    }
}

fn unset(path: &str) -> Edit {
    Edit::Unset { path: path.into() }
}

fn value(text: &str, path: &str) -> serde_yaml::Value {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    for key in path.split('.') {
        value = value.get(key).cloned().unwrap_or(serde_yaml::Value::Null);
    }
    value
}

#[test]
fn set_replaces_only_the_value_keeping_comments_and_quoting() {
    let edited = edit(RICH, set("cluster.postgresql.parameters.work_mem", "64MB"));
    assert_eq!(
        changes(RICH, &edited),
        (
            vec!["            work_mem: 32MB    # keep me".into()],
            vec!["            work_mem: 64MB    # keep me".into()]
        )
    );
    let edited = edit(RICH, set("cluster.synchronous_mode", "off"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    synchronous_mode: \"off\""],
        "a quoted value stays quoted"
    );
    let edited = edit(RICH, set("cluster.ports.write", "6000"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    ports: {write: 6000, read: 5001}   # what applications use"]
    );
    assert_eq!(
        value(&edited, "cluster.ports.write"),
        serde_yaml::Value::from(6000)
    );
    // The anchor stays on the value it names.
    let edited = edit(
        RICH,
        set("cluster.postgresql.parameters.max_connections", "300"),
    );
    assert_eq!(
        changes(RICH, &edited).1,
        ["            max_connections: &conns 300"]
    );
}

#[test]
fn set_adds_missing_keys_in_the_style_around_them() {
    // A new key of a block mapping: one line at its keys' indentation, after its last entry.
    let edited = edit(RICH, set("cluster.failover_profile", "fast"));
    assert_eq!(
        changes(RICH, &edited),
        (vec![], vec!["    failover_profile: fast".into()])
    );
    assert_eq!(
        value(&edited, "cluster.failover_profile"),
        serde_yaml::Value::from("fast")
    );
    assert_eq!(
        value(&edited, "cluster.postgresql.client_cidrs")[0],
        serde_yaml::Value::from("10.1.0.0/16")
    );
    // Missing mappings on the way are created with the file's indentation step (4 here).
    let edited = edit(RICH, set("cluster.haproxy.rise", "3"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    haproxy:", "        rise: 3"]
    );
    // A new key of a flow mapping stays in the braces.
    let edited = edit(RICH, set("cluster.ports.agent", "9651"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    ports: {write: 5000, read: 5001, agent: 9651}   # what applications use"]
    );
    // A value that YAML would misread is quoted.
    let edited = edit(
        RICH,
        set(
            "cluster.postgresql.parameters.search_path",
            "\"$user\", public",
        ),
    );
    assert_eq!(
        value(&edited, "cluster.postgresql.parameters.search_path"),
        serde_yaml::Value::from("\"$user\", public")
    );
}

#[test]
fn unset_removes_the_entry_and_nothing_else() {
    let edited = edit(RICH, unset("cluster.vip"));
    assert_eq!(
        changes(RICH, &edited),
        (vec!["    vip: 10.0.0.100/24".into()], vec![])
    );
    let edited = edit(RICH, unset("cluster.postgresql"));
    let (removed, added) = changes(RICH, &edited);
    assert_eq!(removed.len(), 5, "{removed:?}");
    assert!(added.is_empty());
    assert!(edited.contains("ssh:\n    user: root   # passwordless sudo otherwise"));
    let edited = edit(RICH, unset("cluster.ports.read"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    ports: {write: 5000}   # what applications use"]
    );
    let edited = edit(RICH, unset("cluster.ports.write"));
    assert_eq!(
        changes(RICH, &edited).1,
        ["    ports: {read: 5001}   # what applications use"]
    );
}

#[test]
fn nodes_are_added_and_removed_in_the_list_s_style() {
    let add = Edit::AddNode {
        name: "pg-d".into(),
        address: "10.0.0.14".into(),
        roles: Some(vec!["postgres".into(), "haproxy".into()]),
        tags: vec![("nosync".into(), "true".into())],
    };
    let edited = edit(RICH, add.clone());
    assert_eq!(
        changes(RICH, &edited),
        (
            vec![],
            vec!["- {name: pg-d, address: 10.0.0.14, roles: [postgres, haproxy], tags: {nosync: true}}".into()]
        )
    );
    // A block item in the middle, with its comment-free lines only; the comment above the
    // next item stays.
    let edited = edit(
        RICH,
        Edit::RemoveNode {
            name: "pg-b".into(),
        },
    );
    let (removed, added) = changes(RICH, &edited);
    assert_eq!(
        removed,
        [
            "- name: pg-b",
            "  address: 10.0.0.12",
            "  tags: {nofailover: true}"
        ]
    );
    assert!(added.is_empty());
    assert!(edited.contains("# the third one, in rack 3\n- {name: pg-c"));
    let edited = edit(
        RICH,
        Edit::RemoveNode {
            name: "pg-c".into(),
        },
    );
    assert_eq!(
        changes(RICH, &edited).0,
        ["- {name: pg-c, address: 10.0.0.13}"]
    );

    // Block items: the new one is written like them.
    let block = "nodes:\n  - name: a   # first\n    address: 10.0.0.1\n\n  - name: b\n    address: 10.0.0.2\nssh: {user: root}\n";
    let edited = edit(
        block,
        Edit::AddNode {
            name: "c".into(),
            address: "10.0.0.3".into(),
            roles: None,
            tags: vec![],
        },
    );
    assert_eq!(
        changes(block, &edited).1,
        ["  - name: c", "    address: 10.0.0.3"]
    );
    assert!(
        edited.ends_with("    address: 10.0.0.3\nssh: {user: root}\n"),
        "{edited}"
    );

    // A flow list.
    let flow = "nodes: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}]  # two\n";
    let edited = edit(
        flow,
        Edit::AddNode {
            name: "c".into(),
            address: "10.0.0.3".into(),
            roles: None,
            tags: vec![],
        },
    );
    assert_eq!(edited, "nodes: [{name: a, address: 10.0.0.1}, {name: b, address: 10.0.0.2}, {name: c, address: 10.0.0.3}]  # two\n");
    let edited = edit(flow, Edit::RemoveNode { name: "a".into() });
    assert_eq!(edited, "nodes: [{name: b, address: 10.0.0.2}]  # two\n");
    let edited = edit(flow, Edit::RemoveNode { name: "b".into() });
    assert_eq!(edited, "nodes: [{name: a, address: 10.0.0.1}]  # two\n");
}

#[test]
fn what_cannot_be_edited_losslessly_is_refused_with_a_reason() {
    for (text, edit, says) in [
        (RICH, set("nodes.0.name", "x"), "add-node"),
        (RICH, unset("cluster.haproxy"), "is not set"),
        (
            RICH,
            set("cluster.ports", "5000"),
            "holds a mapping or a list",
        ),
        (RICH, set("cluster..name", "x"), "is not a path"),
        (RICH, set("cluster.name.inner", "x"), "is not a mapping"),
        (
            RICH,
            Edit::RemoveNode {
                name: "pg-z".into(),
            },
            "no node is called `pg-z`",
        ),
        (
            RICH,
            Edit::AddNode {
                name: "pg-a".into(),
                address: "10.0.0.99".into(),
                roles: None,
                tags: vec![],
            },
            "already listed",
        ),
        (
            "cluster:\n  name: |\n    demo\n",
            set("cluster.name", "x"),
            "block scalar",
        ),
        (RICH, set("cluster.\"unclosed", "x"), "is not a path"),
        (
            "cluster: [unclosed\n",
            set("cluster.name", "x"),
            "not valid YAML",
        ),
    ] {
        match apply(text, &edit) {
            Err(error) => assert!(error.message.contains(says), "{edit:?}: {error:?}"),
            Ok(edited) => panic!("{edit:?} was accepted:\n{edited}"),
        }
    }
}

#[test]
fn the_shipped_inventories_take_every_edit() {
    for file in ["inventories/lab.yml", "inventories/example.yml"] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap();
        let edited = edit(&text, set("cluster.postgresql.parameters.work_mem", "64MB"));
        assert_eq!(
            value(&edited, "cluster.postgresql.parameters.work_mem"),
            serde_yaml::Value::from("64MB"),
            "{file}"
        );
        let edited = edit(&text, set("cluster.failover_profile", "fast"));
        assert_eq!(
            changes(&text, &edited).1.len() + changes(&text, &edited).0.len() <= 2,
            true,
            "{file}:\n{edited}"
        );
        let edited = edit(
            &text,
            Edit::AddNode {
                name: "node9".into(),
                address: "10.231.0.19".into(),
                roles: None,
                tags: vec![],
            },
        );
        assert_eq!(changes(&text, &edited).0, Vec::<String>::new(), "{file}");
        let edited = edit(
            &edited,
            Edit::RemoveNode {
                name: "node9".into(),
            },
        );
        assert_eq!(
            edited, text,
            "{file}: adding then removing a node gives the file back"
        );
    }
}

#[test]
fn values_yaml_would_misread_are_quoted_and_numbers_and_booleans_are_not() {
    let base = "cluster:\n  name: demo\n";
    for (input, written) in [
        ("64MB", "64MB"),
        ("200", "200"),
        ("-1", "-1"),
        ("0.9", "0.9"),
        ("true", "true"),
        ("false", "false"),
        ("on", "\"on\""),
        ("off", "\"off\""),
        ("yes", "\"yes\""),
        ("null", "\"null\""),
        ("~", "\"~\""),
        ("True", "\"True\""),
        ("1e3", "\"1e3\""),
        ("0x10", "\"0x10\""),
        (".inf", "\".inf\""),
        ("+5", "\"+5\""),
        ("a # b", "\"a # b\""),
        ("key: value", "\"key: value\""),
        ("", "\"\""),
    ] {
        let edited = edit(base, set("cluster.value", input));
        assert_eq!(edited, format!("{base}  value: {written}\n"), "{input:?}");
        let read = value(&edited, "cluster.value");
        let expected: serde_yaml::Value = serde_yaml::from_str(written).unwrap();
        assert_eq!(read, expected, "{input:?}");
    }
}

#[test]
fn empty_values_dotted_keys_and_block_scalars_elsewhere() {
    // `key:` with nothing after it gets the value after its colon.
    let text = "cluster:\n  vip_interface:\n  vip: 10.0.0.100/24\n";
    assert_eq!(
        edit(text, set("cluster.vip_interface", "eth1")),
        "cluster:\n  vip_interface: eth1\n  vip: 10.0.0.100/24\n"
    );
    // An empty mapping-to-be is refused with what to do, not misread.
    let text = "cluster:\n  patroni:\n    # nothing yet\n  name: demo\n";
    let error = apply(text, &set("cluster.patroni.ttl", "30")).unwrap_err();
    assert!(
        error.message.contains("`cluster.patroni` is empty"),
        "{error:?}"
    );
    // A key holding dots, quoted in the path.
    let text = "cluster:\n  postgresql:\n    parameters: {work_mem: 4MB}\n";
    let edited = edit(
        text,
        set(
            "cluster.postgresql.parameters.\"pg_stat_statements.track\"",
            "all",
        ),
    );
    assert_eq!(
        edited,
        "cluster:\n  postgresql:\n    parameters: {work_mem: 4MB, pg_stat_statements.track: all}\n"
    );
    // A block scalar elsewhere in the file does not stop other edits; it refuses its own.
    let text = "cluster:\n  name: demo\n  note: |\n    free text\n    over lines\nnodes: []\n";
    assert_eq!(
        edit(text, set("cluster.name", "prod")),
        text.replace("name: demo", "name: prod")
    );
    let error = apply(text, &set("cluster.note", "x")).unwrap_err();
    assert!(error.message.contains("block scalar"), "{error:?}");
    // Unsetting it removes its lines.
    assert_eq!(
        edit(text, unset("cluster.note")),
        "cluster:\n  name: demo\nnodes: []\n"
    );
}
