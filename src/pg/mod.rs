//! Facts read from a PostgreSQL data directory.

pub mod control;
