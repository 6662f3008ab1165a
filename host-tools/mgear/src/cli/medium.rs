//! `--medium`/`--appliance` (every command that opens a medium) and `mgear medium`.
use std::path::PathBuf;

use mgear::spec::Medium as MediumSpec;
use mgear::units::parse_size;
use mgear::{medium, medium_admin};

/// Where the medium is: `--medium SPEC` or `--appliance PORT`; several of
/// them (in any order) for a capture that spans media.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(required = true, multiple = true)]
pub struct Where {
    /// Medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb) or dir:MOUNTPOINT; repeat it for a capture
    /// spanning several media (give them all, in any order).
    #[arg(long)]
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port (e.g. /dev/ttyACM0); repeat it
    /// for a span over several appliances.
    #[arg(long)]
    pub appliance: Vec<PathBuf>,
}

impl From<Where> for medium::Where {
    fn from(w: Where) -> Self {
        medium::Where {
            medium: w.medium,
            appliance: w.appliance,
        }
    }
}

/// Arguments of `mgear medium`.
#[derive(clap::Args, Debug)]
pub struct MediumArgs {
    #[command(subcommand)]
    pub cmd: MediumCmd,
}

/// `mgear medium ...` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum MediumCmd {
    /// Create a FAT32 file system on an image file (created at --size, or an
    /// existing one at its size) or a device (whole device), up to 16 TiB.
    Format {
        /// fat:IMAGE or fat:/dev/sdX.
        medium: String,
        /// Size of a new image file, e.g. 2GiB or 16TiB (sparse; not used for devices).
        #[arg(long, allow_hyphen_values = true)]
        size: Option<String>,
        /// Overwrite an image or device that holds a file system, a partition
        /// table or another image (its old signatures are wiped).
        #[arg(long)]
        force: bool,
    },
    /// Remove an unfinished or unwanted capture or generation (finished ones need --force).
    Rm(RmArgs),
    /// List (and with --repair remove) what a crash left on the medium; runs fsck.fat -n on fat: media.
    Fsck(FsckArgs),
}

/// Arguments of `mgear medium rm`.
#[derive(clap::Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub medium: super::medium::Where,
    /// Capture name (compared case-insensitively, as FAT does).
    #[arg(long)]
    pub name: String,
    /// Remove only this generation (and the deltas built on it, with --force).
    // A negative number is taken as a value (said as invalid), not as an unknown option.
    #[arg(long, allow_hyphen_values = true)]
    pub generation: Option<u32>,
    /// Also remove finished generations (data the target may still need).
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `mgear medium fsck`.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("where")
        .required(true)
        .multiple(true)
        .args(["medium", "appliance", "positional"])
))]
pub struct FsckArgs {
    /// Medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb) or dir:MOUNTPOINT; repeat it for a capture
    /// spanning several media (give them all, in any order).
    #[arg(long)]
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port (e.g. /dev/ttyACM0); repeat it
    /// for a span over several appliances.
    #[arg(long)]
    pub appliance: Vec<PathBuf>,
    /// The medium, as `medium format` takes it (the same as one --medium).
    #[arg(value_name = "MEDIUM")]
    pub positional: Option<String>,
    /// Remove the leftovers nothing can use (never an unfinished generation).
    #[arg(long)]
    pub repair: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl MediumArgs {
    /// The typed request: the medium spec and the size parsed (exit 2 on a bad one).
    pub fn into_plan(self) -> mgear::Result<medium_admin::Request> {
        Ok(match self.cmd {
            MediumCmd::Format {
                medium,
                size,
                force,
            } => {
                // A bare path: said for this command, which formats fat: only (the --medium
                // message offered dir: and NBD, which format refuses, and a flag it has not).
                // `FAT:x.img`: offered `fat:FAT:x.img`, an image named `FAT:x.img`.
                if let Some(rest) = medium
                    .get(..4)
                    .filter(|p| p.eq_ignore_ascii_case("fat:") && *p != "fat:")
                    .map(|_| &medium[4..])
                {
                    return Err(mgear::exit::usage(format!(
                        "medium format {medium}: the kind is written in lower case: `mgear \
                         medium format fat:{rest}`"
                    )));
                }
                if !medium.starts_with("fat:")
                    && !medium.starts_with("dir:")
                    && !medium.contains("://")
                {
                    return Err(mgear::exit::usage(format!(
                        "medium format {medium}: say it is a FAT medium to make: \
                         `mgear medium format fat:{medium}` (an image file, made at --size, or a \
                         device such as fat:/dev/sdb)"
                    )));
                }
                let medium = MediumSpec::parse(&medium)?;
                // Only a fat: image has a size; the other kinds are refused
                // (by `medium_admin::run`, which says why) whatever --size says.
                let size = match medium {
                    MediumSpec::Fat(_) => size.as_deref().map(parse_size).transpose()?,
                    _ => None,
                };
                medium_admin::Request::Format {
                    medium,
                    size,
                    force,
                }
            }
            MediumCmd::Rm(a) => medium_admin::Request::Rm(medium_admin::Rm {
                medium: a.medium.into(),
                name: a.name,
                generation: a.generation,
                force: a.force,
                json: a.json,
            }),
            MediumCmd::Fsck(mut a) => medium_admin::Request::Fsck(medium_admin::Fsck {
                // `medium fsck fat:X`, as `medium format fat:X` is written, was refused.
                medium: {
                    a.medium.extend(a.positional.take());
                    medium::Where {
                        medium: a.medium,
                        appliance: a.appliance,
                    }
                },
                repair: a.repair,
                json: a.json,
            }),
        })
    }
}
