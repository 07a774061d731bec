//! What recovery can reach from the repository, between the commands and the catalog:
//! the archive view (gathered through the catalog), walks over it, the search for where an
//! xid target's transaction ended, and the restore plan, decided by a pure function over
//! what was gathered.

pub mod plan;
pub mod retention;
pub mod timelines;
pub mod view;
pub mod walk;
pub mod window;
pub mod xid;

#[cfg(test)]
mod no_panic;

pub use plan::{PlanError, RestorePlan};
pub use view::ArchiveView;
pub use walk::Walk;
