//! The playbook engine: Ansible-like plays of typed tasks run over SSH.
//!
//! - [`playbook`]: parsing and checking playbooks (nothing touches a host before this passes).
//! - [`facts`]: one probe script per host and its parsers.
//! - [`modules`]: each module's pure `plan` from facts and its `apply`; [`default_data`]: the
//!   module that removes a package's default data only when that is provably safe;
//!   [`patroni_tasks`]: the `patroni_*` modules, on the one Patroni layer.
//! - [`runner`]: host selection, batches, connections, handlers.
//! - [`report`]: the only place that prints a run.

pub mod default_data;
pub mod etcd_join;
pub mod etcd_restart;
pub mod facts;
pub mod modules;
pub mod ops;
pub mod patroni_tasks;
pub mod playbook;
pub mod report;
pub mod runner;

pub use playbook::Playbook;
pub use report::RunResult;
pub use runner::{Run, RunOptions};
