//! Pure allocation logic, no I/O: what the agent decides, tested without a
//! kernel or a cloud.

pub mod eni_pool;

pub use eni_pool::{EniPool, PoolLimits, PoolPlan, PoolTargets};
