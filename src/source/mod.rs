//! Sources of local exports: the only code that reads services files.

pub mod file;
pub mod watch;
