//! Access control and secrets, testable without a daemon.
//!
//! - [`roles`]: the three roles and the one table saying which API route needs which.
//! - [`token`]: API tokens (256 bits from the OS, `tcfp_` prefix), their SHA-256 and
//!   constant-time verification against the stored hashes.
//! - [`limiter`]: failed authentications per client address (10 a minute by default); past the
//!   limit a request is refused before its token is looked at.
//! - [`secrets`]: the secrets key (a 0600 file or `TCF_SECRETS_KEY`) and XChaCha20-Poly1305
//!   sealing of each value, bound to its name.
//! - [`reference`]: `${secret:NAME}` in a service's env: finding, checking and substituting.
//! - [`cert`]: the remote API's certificate (from files, or self-signed on first start) and its
//!   SHA-256 fingerprint for pinning.
//! - [`files`]: creating the state directory 0700 and files 0600, and noticing looser modes.

pub mod cert;
pub mod files;
pub mod limiter;
pub mod reference;
pub mod roles;
pub mod secrets;
pub mod token;

pub use roles::{required_role, Role};
pub use token::{AuthError, TokenRecord};
