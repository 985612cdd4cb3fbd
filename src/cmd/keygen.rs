//! `keygen`: a new age identity file, its recipient printed; needs no configuration.

use crate::exit;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the identity; an existing file is never overwritten
    #[arg(long, short)]
    output: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<u8> {
        let output = &self.output;
        let recipient = crate::codec::keys::generate_identity_file(output)?;
        println!("{recipient}");
        eprintln!(
            "walvault: wrote identity {} (mode 0600). Keep a copy off this host: without it nothing encrypted can be restored.\n\
             walvault: on the database host configure only the public recipient:\n  [encryption]\n  recipients = [\"{recipient}\"]\n\
             walvault: and where restores run, also:\n  identity_file = \"{}\"",
            output.display(),
            output.display()
        );
        Ok(exit::OK)
    }
}
