//! Allocation logic: what the agent decides. `eni_pool` (vpc mode) is pure;
//! `block_store` (overlay mode) runs on a [`podwire_store::Datastore`].

pub mod block;
pub mod block_store;
pub mod eni_gc;
pub mod eni_pool;
pub mod handle;
mod index;
pub mod keys;
pub mod nodes;
pub mod reconcile;
pub mod schema;
pub mod warm;

pub use eni_pool::{EniPool, PoolLimits, PoolPlan, Surplus};
pub use handle::Handle;
pub use reconcile::{reconcile, Expected, ObservedEni, ReconcileReport};
pub use warm::{PoolTargets, WarmSettings, WarmTarget};

/// Every key podwire keeps in the datastore lives under this prefix (node
/// records, IPAM blocks); the overlay agent follows all of it.
pub const ROOT: &str = "/podwire/";
