//! Architecture layer. Only AArch64 today; the policy code above uses the
//! re-exported names, so a host fake or another architecture slots in here.
pub mod aarch64;
pub use aarch64::*;
