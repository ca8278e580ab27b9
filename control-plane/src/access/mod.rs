//! Who may call the admin API, and what each caller may do.
//!
//! An operator authenticates with a bearer token: the bootstrap token given
//! by `--admin-token` (the `bootstrap` caller, role `admin`), or a named
//! token created through the API itself (`tollgatectl tokens create NAME
//! --role editor`), which the control plane keeps only as a SHA-256 digest in
//! the store ([`tokens`]). Each token has a [`Role`]; [`roles::required`]
//! names the least role of every admin call, and a call missing from that
//! table needs `admin`, so a new RPC stays closed until someone decides who
//! may use it. [`gate::AdminGate`] checks both before the call reaches a
//! handler and hands the handler an [`Actor`](crate::auth::Actor) (name,
//! role, peer address) for the audit log. Refusals are logged with the peer
//! and the token's name when it has one (never the token) and counted in
//! `tollgate_cp_admin_refusals_total`.
//!
//! Without `--admin-token` the admin API may only listen on loopback and a
//! call without a token is the `local` caller with role `admin`; a named
//! token still identifies (and limits) a caller that presents it.

pub mod gate;
pub mod roles;
pub mod tokens;

pub use roles::Role;
pub use tokens::TokenBook;
