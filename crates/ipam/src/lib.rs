//! Allocation logic: what the agent decides. `eni_pool` (vpc mode) is pure;
//! `block_store` (overlay mode) runs on a [`podwire_store::Datastore`].

pub mod block;
pub mod block_store;
pub mod eni_pool;
pub mod handle;
mod index;
pub mod keys;
pub mod nodes;
pub mod schema;

pub use eni_pool::{EniPool, PoolLimits, PoolPlan, PoolTargets};
pub use handle::Handle;

/// Every key podwire keeps in the datastore lives under this prefix (node
/// records, IPAM blocks); the overlay agent follows all of it.
pub const ROOT: &str = "/podwire/";
