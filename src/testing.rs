//! Helpers of the unit tests.

use std::path::PathBuf;

/// A path named `name` in a new temporary directory, which lives as long as
/// the returned guard.
pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// A new, empty directory `name` in a fresh temporary directory, by its
/// canonical path (what the code under test compares paths with).
pub fn temp_dir_at(name: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = temp_path(name);
    std::fs::create_dir(&path).unwrap();
    let path = path.canonicalize().unwrap();
    (dir, path)
}
