//! The one end-to-end test binary: every scenario is a module here, so the
//! workspace is linked once and `cargo test` runs all scenarios in one
//! process, in parallel (set `RUST_TEST_THREADS` to change how many).

#[allow(dead_code)] // each scenario module uses a different subset
mod appliance_util;

mod adapt_e2e;
mod appliance_console;
mod appliance_custody;
mod appliance_journey;
mod appliance_lockout;
mod appliance_powercut;
mod appliance_sealed;
mod appliance_tamper;
mod boot_e2e;
mod boot_readiness;
mod cbt_capture;
mod cli_e2e;
mod cloud_lab;
mod ebs_snapshot;
mod field_capture;
mod field_media;
mod field_mistakes;
mod field_names;
mod field_output;
mod format_media;
mod golden;
mod hardware_board;
mod hardware_fat;
mod hardware_flash;
mod hygiene_e2e;
mod machine_sets;
mod nbd_interop;
mod readme_examples;
mod spanning;
mod sync_e2e;
mod trust_e2e;
mod virt_libvirt;
mod volume_scratch;
mod wire_cli;

/// The libvirt scenarios (`virt_libvirt`, `wire_cli`) tell their domains apart
/// by this process's id and compete for the same two cores: one at a time.
static LIBVIRT: std::sync::Mutex<()> = std::sync::Mutex::new(());
