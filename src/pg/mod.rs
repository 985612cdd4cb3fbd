//! PostgreSQL: facts read from a data directory, configuration files,
//! connections, the programs of each major, and running a postmaster.

pub mod conf;
pub mod conn;
pub mod control;
pub mod majors;
pub mod postmaster;
pub mod server_bin;
pub mod tools;
