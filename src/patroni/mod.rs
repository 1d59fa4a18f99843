//! The one Patroni layer: typed roles and states ([`model`]), one REST client over a direct or
//! an SSH transport ([`client`]), and the operations built on them: pending restarts in a safe
//! order and one switchover ([`rolling`]). The deploy's `patroni_*` modules, `pgha switchover`
//! and the drills all go through it.

pub mod client;
pub mod model;
pub mod rolling;

pub use client::{Credentials, Patroni, PatroniError};
pub use model::{ClusterView, Member, MemberStatus, RestartStep, Role, State};
