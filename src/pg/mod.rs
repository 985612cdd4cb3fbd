//! PostgreSQL: facts read from a data directory, connections, and pg_ctl.

pub mod conf;
pub mod conn;
pub mod control;
pub mod ctl;
pub mod majors;
pub mod tools;
