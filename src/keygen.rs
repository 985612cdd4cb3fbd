//! `walvault keygen`: make an age identity and print its recipient.

use anyhow::Result;
use std::path::Path;

pub fn run(output: &Path) -> Result<()> {
    let recipient = crate::codec::keys::generate_identity_file(output)?;
    println!("{recipient}");
    eprintln!(
        "walvault: wrote identity {} (mode 0600). Keep a copy off this host: without it nothing encrypted can be restored.\n\
         walvault: on the database host configure only the public recipient:\n  [encryption]\n  recipients = [\"{recipient}\"]\n\
         walvault: and where restores run, also:\n  identity_file = \"{}\"",
        output.display(),
        output.display()
    );
    Ok(())
}
