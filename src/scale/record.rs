//! What pgha deployed: the nodes of a cluster, kept beside its secrets file
//! (`<secrets>.deployed.yml`). A node in the record but gone from the inventory was removed by
//! the user, and the next deploy takes it out of the cluster; a node in the inventory that does
//! not answer is a failure, never a removal.
//!
//! The record only grows before a deploy touches anything (every node of the inventory is in it
//! before the first task), and a node leaves it only once its removal is done, so a run cut off
//! anywhere leaves a record that still names every node that may run something of the cluster.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, Node, Role, Tags};

/// One deployed node, as the inventory named it when it was deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedNode {
    pub name: String,
    pub address: IpAddr,
    pub roles: BTreeSet<Role>,
}

impl DeployedNode {
    pub fn of(node: &Node) -> DeployedNode {
        DeployedNode {
            name: node.name.clone(),
            address: node.address,
            roles: node.roles.clone(),
        }
    }

    /// The node as an inventory node (no tags), to reach and render for it.
    pub fn node(&self) -> Node {
        Node {
            name: self.name.clone(),
            address: self.address,
            roles: self.roles.clone(),
            tags: Tags::default(),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub nodes: Vec<DeployedNode>,
}

const HEADER: &str = "# Written by `pgha deploy`: the nodes it deployed. A node listed here and gone from the\n\
# inventory is taken out of the cluster by the next `pgha deploy`. Keep it with the secrets file.\n";

/// Where the record of `inventory`'s cluster lives.
pub fn path(inventory: &Inventory) -> PathBuf {
    inventory
        .cluster
        .secrets_file
        .with_extension("deployed.yml")
}

impl Record {
    /// The record at `path`; empty when there is none (a cluster deployed before pgha kept one,
    /// or none deployed yet).
    pub fn load(path: &Path) -> anyhow::Result<Record> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml::from_str(&text).with_context(|| {
                format!(
                    "cannot read pgha's record of deployed nodes `{}`; hint: it is pgha's own file, restore it from a backup or delete it (nodes removed from the inventory are then not taken out)",
                    path.display()
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(error) => Err(error).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }

    /// Replace the file at `path` at once.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!("{HEADER}{}", serde_yaml::to_string(self)?);
        use std::io::Write;
        let partial = path.with_extension("partial");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write().with_context(|| format!("cannot write `{}`", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot replace `{}`", path.display()))?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|dir| dir.sync_all()).ok();
        }
        Ok(())
    }

    /// Every node of `inventory` added (or updated: its address or roles as now), the others
    /// kept.
    pub fn with_inventory(&self, inventory: &Inventory) -> Record {
        let mut nodes: Vec<DeployedNode> = self
            .nodes
            .iter()
            .filter(|node| inventory.node(&node.name).is_none())
            .cloned()
            .collect();
        nodes.extend(inventory.nodes.iter().map(DeployedNode::of));
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Record { nodes }
    }

    /// The nodes deployed and gone from `inventory`.
    pub fn departed(&self, inventory: &Inventory) -> Vec<DeployedNode> {
        self.nodes
            .iter()
            .filter(|node| inventory.node(&node.name).is_none())
            .cloned()
            .collect()
    }

    /// The record without `name`.
    pub fn without(&self, name: &str) -> Record {
        Record {
            nodes: self
                .nodes
                .iter()
                .filter(|node| node.name != name)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::scale::test_inventory as inventory;

    const THREE: &str = "  - {name: a, address: 10.0.0.1}\n  - {name: b, address: 10.0.0.2}\n  - {name: c, address: 10.0.0.3}\n";

    #[test]
    fn a_node_gone_from_the_inventory_is_departed_and_stays_recorded_until_removed() {
        let record = Record::default().with_inventory(&inventory(THREE));
        assert!(record.departed(&inventory(THREE)).is_empty());
        let fewer = inventory(
            "  - {name: a, address: 10.0.0.1}\n  - {name: b, address: 10.0.0.2}\n  - {name: d, address: 10.0.0.4}\n",
        );
        let merged = record.with_inventory(&fewer);
        let names: Vec<&str> = merged.nodes.iter().map(|node| node.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let departed = merged.departed(&fewer);
        assert_eq!(departed.len(), 1);
        assert_eq!(departed[0].name, "c");
        assert_eq!(departed[0].address.to_string(), "10.0.0.3");
        assert!(merged.without("c").departed(&fewer).is_empty());
    }

    #[test]
    fn the_record_survives_a_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.secrets.deployed.yml");
        assert_eq!(Record::load(&file).unwrap(), Record::default());
        let record = Record::default().with_inventory(&inventory(THREE));
        record.save(&file).unwrap();
        assert_eq!(Record::load(&file).unwrap(), record);
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("# Written by"));
        std::fs::write(&file, "nodes: [oops").unwrap();
        let error = format!("{:#}", Record::load(&file).unwrap_err());
        assert!(error.contains("hint:"), "{error}");
    }
}
