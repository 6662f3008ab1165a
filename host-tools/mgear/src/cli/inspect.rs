//! `mgear inspect`'s flags, as an [`inspect::Request`].
use mgear::inspect;

/// Arguments of `mgear inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Medium: fat:IMAGE-OR-DEVICE or dir:MOUNTPOINT; repeat it to list a shipment of several media.
    #[arg(long, required_unless_present = "appliance")]
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port; repeat it (beside
    /// --medium too) to list a shipment of several appliances.
    #[arg(long)]
    pub appliance: Vec<std::path::PathBuf>,
    /// Only this capture or machine set (compared without case, as FAT does).
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// The typed request.
    pub fn into_plan(self) -> inspect::Request {
        let a = self;
        inspect::Request {
            medium: a.medium,
            appliance: a.appliance,
            name: a.name,
            json: a.json,
        }
    }
}
