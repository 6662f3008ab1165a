//! The pinned-trust flags of `ingest` and `verify`.
use std::path::PathBuf;

use mgear::trust;

/// The trust flags of `ingest` and `verify`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Trust generations signed by this capture site (its .pub from `mgear keygen --signing`); repeatable.
    #[arg(long = "trust", value_name = "SITE.pub")]
    pub trust: Vec<PathBuf>,
    /// Trust this appliance (full fingerprint from `mgear appliance info`): its commit witness or seal + arrival; repeatable.
    #[arg(long = "trust-appliance", value_name = "FINGERPRINT")]
    pub trust_appliance: Vec<String>,
    /// Accept a capture without a signature by a pinned key (loud warning): ingest installs it, verify passes it. Nothing then proves who wrote it.
    #[arg(long)]
    pub allow_untrusted: bool,
    /// Seal and arrival attestations exported by `mgear appliance attestations --out DIR`.
    #[arg(long, value_name = "DIR")]
    pub attestations: Option<PathBuf>,
    /// Refuse a generation older than N (the generation on the capture receipt; 1 or more).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub expect_generation: Option<u32>,
    /// Refuse any generation but the one with this commit digest (the `commit` line of the capture receipt, sent apart from the medium; 16 or more hex digits): an older or another capture of the same name, swapped onto the medium, is refused (ingest installs nothing, verify fails).
    #[arg(long, value_name = "HEX")]
    pub expect_commit: Option<String>,
}

impl From<TrustArgs> for trust::Pins {
    fn from(t: TrustArgs) -> Self {
        trust::Pins {
            trust: t.trust,
            trust_appliance: t.trust_appliance,
            allow_untrusted: t.allow_untrusted,
            attestations: t.attestations,
            expect_generation: t.expect_generation,
            expect_commit: t.expect_commit,
        }
    }
}
