//! placeholder, filled by the lab work
