//! pgha: provision and operate a PostgreSQL HA cluster (Patroni + etcd + HAProxy + Keepalived and
//! the pgha agent) on plain Linux hosts over SSH.
//!
//! Codebase map:
//! - [`agent`]: the node daemon `pgha agent run`: etcd watch, pure decision, HAProxy runtime
//!   routing, the VIP verdict file and guard, `/status` and `/metrics`.
//! - [`cli`]: clap definitions; each subcommand turns arguments into options and calls one
//!   operation. Nothing else prints results or maps errors to exit codes.
//! - [`error`]: the error kinds that decide the exit code (bad input = 2, failure = 1).
//! - [`inventory`]: the user's cluster description: raw serde structs, validation into typed
//!   values with file:line:column for every problem, the JSON Schema, and the secrets file.
//! - [`render`]: the minijinja environment (embedded templates, `--templates` override) and
//!   the per-node files it renders.
//! - [`lab`]: throw-away Debian nodes on this machine (systemd-nspawn, netns, apt proxy) and
//!   fault injection.
//! - [`ssh`]: the russh transport: strict host keys, one connection per host, exec and upload.
//! - [`engine`]: playbooks of typed tasks: facts, plan/apply per module, serial batches,
//!   handlers, the run report; `ops` holds the operations `run`, `deploy` and `exec` call.
//! - [`debian`]: the supported Debian releases and what each ships (PostgreSQL, Python, etcd).
//! - [`cluster`]: the live cluster: observation over SSH, `verify`, `status`, `switchover`.
//! - [`patroni`]: the one Patroni layer: typed members, one REST client (direct or over SSH),
//!   pending restarts in a safe order, switchover.
//! - [`drill`]: failure drills: probes through the VIP and on every node, fault injection
//!   (lab or SSH) with a guaranteed heal, and the failover-time model the results are read against.
//! - [`upgrade`]: `pgha upgrade`: rolling upgrades to the inventory's pinned versions, planned
//!   from facts (pure, in `upgrade::plan`) and run one node at a time on the Patroni layer.
//! - [`wheels`]: the pinned Patroni wheels fetched once on the control machine and shipped.
//! - [`yaml_position`]: file:line:column of YAML paths, for inventory and playbook errors.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod debian;
pub mod drill;
pub mod engine;
pub mod error;
pub mod etcd;
pub mod inventory;
pub mod lab;
pub mod patroni;
pub mod render;
pub mod scale;
pub mod ssh;
pub mod tls;
pub mod upgrade;
pub mod wheels;
pub mod yaml_position;
