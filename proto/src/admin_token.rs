//! The admin token, now one role of [`crate::token`] (kept as a path of its
//! own for the code that names it).

pub use crate::token::{Admin, AdminToken};

/// The metadata key carrying the admin token.
pub const METADATA_KEY: &str = "authorization";
