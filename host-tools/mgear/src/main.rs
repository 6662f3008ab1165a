//! `mgear`: MotionGear host tools.
mod appliance;
mod boot_cmd;

fn main() {}
