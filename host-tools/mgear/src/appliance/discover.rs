//! Finding an attached appliance without `--port`: the board enumerates as
//! a USB CDC-ACM serial port (and a HID interface) with MotionGear's USB
//! vendor and product id. Serial ports are listed with `serialport`, which
//! on Linux reads the ids from sysfs (no libudev needed).

use std::path::PathBuf;

use crate::bail;

/// USB vendor id of the appliance (pid.codes, the open-source hardware vendor id).
pub const USB_VID: u16 = 0x1209;
/// USB product id of the appliance.
pub const USB_PID: u16 = 0x4d47;

/// One attached appliance's serial console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub port: PathBuf,
    pub serial_number: Option<String>,
}

/// Every attached appliance's console, from the system's serial port list.
pub fn list() -> crate::Result<Vec<Found>> {
    let ports =
        serialport::available_ports().map_err(|e| crate::err!("listing serial ports: {e}"))?;
    Ok(ports
        .into_iter()
        .filter_map(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(u) if u.vid == USB_VID && u.pid == USB_PID => {
                Some(Found {
                    port: PathBuf::from(p.port_name),
                    serial_number: u.serial_number,
                })
            }
            _ => None,
        })
        .collect())
}

/// The one attached appliance, or a clear error saying none (or several) are attached.
pub fn find_one() -> crate::Result<PathBuf> {
    choose(list()?)
}

fn choose(found: Vec<Found>) -> crate::Result<PathBuf> {
    match found.len() {
        0 => bail!(
            "no appliance attached: no USB serial device with id {USB_VID:04x}:{USB_PID:04x} was found. \
             Plug the appliance in (and check `dmesg` for a new ttyACM device), or pass \
             --port PATH (e.g. the simulator's --console-link)."
        ),
        1 => Ok(found[0].port.clone()),
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|f| match &f.serial_number {
                    Some(s) => format!("{} (serial {s})", f.port.display()),
                    None => f.port.display().to_string(),
                })
                .collect();
            bail!(
                "{} appliances are attached ({}); choose one with --port",
                found.len(),
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_one_or_several() {
        let err = choose(Vec::new()).unwrap_err().to_string();
        assert!(err.contains("no appliance attached"), "{err}");
        assert!(err.contains("1209:4d47"), "{err}");
        let a = Found {
            port: "/dev/ttyACM0".into(),
            serial_number: Some("A1".into()),
        };
        let b = Found {
            port: "/dev/ttyACM1".into(),
            serial_number: None,
        };
        assert_eq!(
            choose(vec![a.clone()]).unwrap(),
            PathBuf::from("/dev/ttyACM0")
        );
        let err = choose(vec![a, b]).unwrap_err().to_string();
        assert!(
            err.contains("2 appliances") && err.contains("serial A1") && err.contains("ttyACM1"),
            "{err}"
        );
    }

    #[test]
    fn listing_works_on_a_machine_without_appliances() {
        // This machine has no appliance: listing must succeed and find none
        // of ours (it may find other serial ports).
        assert!(list()
            .unwrap()
            .iter()
            .all(|f| !f.port.as_os_str().is_empty()));
    }
}
