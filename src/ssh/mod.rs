//! placeholder, filled by the ssh work
