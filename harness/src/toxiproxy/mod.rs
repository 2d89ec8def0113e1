//! Network faults through the Toxiproxy 2.x REST API.
//!
//! - [`model`]: JSON shapes (`ProxyJson`, `ToxicJson`) and the typed [`model::ToxicKind`]
//!   both the server and the client speak, so the two cannot drift apart.
//! - [`server`]: the embedded Toxiproxy-compatible server (REST API + TCP links applying
//!   toxics). Needed because no real Toxiproxy binary can be installed where this runs; any
//!   standard Toxiproxy client works against it.
//! - [`client`]: the one path through which the harness injects faults. It never touches the
//!   embedded server's internals, so `TOXIPROXY_URL` switches everything to a real Toxiproxy.

pub mod client;
pub mod model;
pub mod server;

pub use client::{FaultProxy, ToxiproxyClient};
pub use model::{Stream, Toxic, ToxicKind};
