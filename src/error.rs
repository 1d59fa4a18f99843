//! Error kinds that decide the process exit code. Modules return `anyhow::Error`s whose root may
//! be a [`UserError`]; `cli` maps that to exit code 2 (bad input, nothing touched), anything
//! else to 1.

/// Input the user must fix (inventory, playbook, template, command line). Nothing was changed on
/// any host when this is returned.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Exit code for bad input, matching clap's own usage errors.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for a failed operation.
pub const EXIT_FAILURE: u8 = 1;

/// The exit code an error should produce.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<UserError>()) {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILURE
    }
}
