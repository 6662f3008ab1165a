//! Exit codes, and how an error is mapped to one.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | a failure was found: `verify` found a bad record, `ingest` met a record that does not authenticate, a volume does not match its digest |
//! | 2 | usage or key error: bad arguments, a key that does not open the capture, an unreadable key file |
//! | 3 | I/O error: source, medium or target could not be read or written (includes "medium full") |
//! | 4 | pending: `ingest` wrote what the media given hold; the rest is on media still to come |
//!
//! Commands raise an [`Error::Coded`] where they know the class ([`coded`],
//! [`usage`]); otherwise the links of the error's chain are matched by type
//! (image-format errors by kind: a wrong key is 2, corrupt data 1; a boot
//! error's and a volume error's own classes) and anything left is 3, because
//! an unclassified failure is almost always the environment. [`kind`] names the class for `--json` errors
//! (`failure`, `usage`, `io`) and [`hint`] says what to do next.

use crate::Error;

/// Success.
pub const OK: i32 = 0;
/// A failure was found (verification).
pub const FOUND: i32 = 1;
/// Usage or key error.
pub const USAGE: i32 = 2;
/// I/O error.
pub const IO: i32 = 3;
/// Ingest wrote what the media given hold and waits for the others.
pub const PENDING: i32 = 4;

/// An error with exit code `code`.
pub fn coded(code: i32, message: impl Into<String>) -> Error {
    Error::Coded {
        code,
        message: message.into(),
        hint: None,
    }
}

/// An error with exit code `code` and the next step `hint`.
pub fn coded_hint(code: i32, message: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::Coded {
        code,
        message: message.into(),
        hint: Some(hint.into()),
    }
}

/// An error with exit code `code` whose message says what is wrong (`what`)
/// and then what to do (`next`): the `mgear: error:` line shows only the
/// message, so the next step is in it, and `--json` carries it as the hint.
pub fn coded_next(code: i32, what: impl std::fmt::Display, next: impl Into<String>) -> Error {
    let next = next.into();
    Error::Coded {
        code,
        message: format!("{what}; {next}"),
        hint: Some(next),
    }
}

/// Shorthand for a usage/key error (exit 2).
pub fn usage(message: impl Into<String>) -> Error {
    coded(USAGE, message)
}

/// The exit code for `err`: from the outermost [`Coded`] or image-format
/// error in its chain, else 3.
pub fn code_of(err: &Error) -> i32 {
    classified(err).unwrap_or(IO)
}

/// The exit code `err` was classified with, if any error in its chain says:
/// for callers that wrap errors and must keep a usage or I/O class while
/// defaulting the rest to their own (e.g. a refused ingest is 1).
pub fn classified(err: &Error) -> Option<i32> {
    err.chain().find_map(|e| {
        coded_of(e).map(|(code, _)| code).or_else(|| {
            e.downcast_ref::<image_format::Error>()
                .map(format_code)
                .or_else(|| e.downcast_ref::<mgear_boot::BootError>().map(boot_code))
                .or_else(|| e.downcast_ref::<mgear_volume::Error>().map(volume_code))
                // Damage met reading the file system (a directory loop through the root, met
                // as the medium opened): a finding about the medium, as everywhere else, not a
                // failing device (exit 3 beside exit 1 for the same loop one level down).
                .or_else(|| match e.downcast_ref::<image_format::StoreError>() {
                    Some(image_format::StoreError::Damaged(_)) => Some(FOUND),
                    _ => None,
                })
        })
    })
}

/// The class name `--json` errors carry for an exit code.
pub fn kind(code: i32) -> &'static str {
    match code {
        FOUND => "failure",
        USAGE => "usage",
        PENDING => "pending",
        _ => "io",
    }
}

/// The generic next step for exit `code` of `command` (an error without a hint of its own).
pub fn class_hint(code: i32, command: &str) -> String {
    hint(&coded(code, String::new()), command)
}

/// What the user should do next: the raiser's hint if it gave one, else
/// the generic next step for the error's class.
pub fn hint(err: &Error, command: &str) -> String {
    if let Some(h) = err
        .chain()
        .find_map(|e| coded_of(e).and_then(|(_, hint)| hint.clone()))
    {
        return h;
    }
    // A host tool missing: install it (the generic hint said to check a path and run the
    // same command again, which finds it missing again).
    if let Some(package) = err.chain().find_map(|e| match e.downcast_ref() {
        Some(mgear_boot::BootError::MissingTool { package, .. }) => Some(package.clone()),
        _ => None,
    }) {
        return format!(
            "install it (`apt-get install {package}`), then run the same command again"
        );
    }
    // A boot stopped on request: nothing is wrong with the volume.
    if err
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(mgear_boot::BootError::Stopped)))
    {
        return "nothing is wrong with the volume: the boot was stopped before it proved \
                anything; run the same command again to prove it"
            .to_string();
    }
    match code_of(err) {
        // Damage in the medium's file system, whatever the code the command gave it (ingest
        // refuses it as data that did not check out): "do not use it" had an operator throw
        // away a shipment a repaired copy still delivers.
        // A link or a FIFO planted in a `dir:` medium: nothing a FAT repair mends.
        _ if is_damaged(err)
            && err
                .chain()
                .any(|e| e.to_string().contains(image_format::store::dir::NOT_ON_A_MEDIUM)) =>
        {
            "a medium mgear wrote holds only directories and plain files: on a copy of the \
             medium (never the original), remove what the message names, then run the same \
             command again with the copy; every record is still checked against what was \
             signed"
                .to_string()
        }
        _ if is_damaged(err) => DAMAGED_HINT.to_string(),
        // Two capture directories a case apart, made by hand: nothing is wrong with the data
        // ("do not use it" had the shipment thrown away).
        _ if err
            .chain()
            .any(|e| e.to_string().contains(image_format::verify::NAME_CLASH)) =>
        {
            "nothing says the data is damaged: on this copy of the medium, move or rename all \
             but one of those directories (mount it, or `mmove -i IMAGE` for a FAT image), then \
             run the same command again"
                .to_string()
        }
        FOUND => "the data did not check out: do not use it; see the message for what is wrong where"
            .to_string(),
        // Credentials, region or a signature AWS refused: no argument of ours is wrong, and
        // `--help` does not say how to set them.
        // (By the settings the message names: "a snapshot is booted in AWS" is no setting.)
        USAGE
            if err.chain().any(|e| {
                let t = e.to_string();
                t.contains("AWS_") || t.contains("~/.aws") || t.contains("AWS credentials")
            }) =>
        {
            "set what the message names in the environment (AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY, AWS_REGION) or in ~/.aws/credentials and ~/.aws/config \
             (CLI-README, \"AWS EBS snapshots\"), then run the same command again"
                .to_string()
        }
        USAGE => format!("check the arguments and key files: `mgear {command} --help`"),
        // Ingest only reads the medium: "on the medium or target" sent the operator to free
        // room where none was needed.
        _ if is_no_space(err) && command.starts_with("ingest") => {
            "free space on the file system or device that holds the target (or give a larger \
             target; the medium is only read), then run the same command again: it goes on from \
             its last checkpoint"
                .to_string()
        }
        _ if is_no_space(err) => {
            "free space on the medium or target (or use a larger one), then run the same command again"
                .to_string()
        }
        _ if is_read_only(err) => {
            "the medium or target refuses writes (mounted read-only, write-protected, or a sealed \
             appliance): make it writable, or give one that is, then run the same command again"
                .to_string()
        }
        // A read-only file system or a path not permitted (the key cache or state dir on a
        // read-only mount, an immutable image): "reconnect it" said nothing that helps.
        _ if refused_by_host(err) => {
            "the host refused this user the path the message names (permissions, a read-only \
             file system, or an immutable file: `lsattr`): give the user access to it (to read \
             a source, a medium or a key; to write a medium being written, a target, the key \
             cache or the state dir), or point mgear at another place (--key-cache DIR for \
             capture's key cache, --state-dir DIR for ingest's state, another --target or \
             medium), then run the same command again"
                .to_string()
        }
        // Said of every I/O error without a hint of its own: where the message itself says
        // what to do (remove a link, give the partition, stop a serve), "run the same command
        // again" alone contradicted it.
        _ => "do what the message says; where it names a path, device, appliance or peer that \
              is missing or unreachable, reconnect it, then run the same command again"
            .to_string(),
    }
}

/// What to do about a damaged file system on the medium.
const DAMAGED_HINT: &str = "the medium's file system is damaged: never repair the original; on \
     a copy of it, `fsck.fat -n COPY` names the damage and `fsck.fat -a COPY` repairs what it \
     can from the first FAT. Where it says the FATs differ, the first may be the damaged one: \
     on another copy, copy the second FAT over the first (`fsck.fat -v -n COPY` prints where \
     each starts and their size in sectors, and the bytes per logical sector, 512 or 4096: \
     `dd if=COPY of=COPY bs=BYTES-PER-SECTOR skip=SECOND seek=FIRST count=SECTORS \
     conv=notrunc`) and try that copy too; then give the copy that reads (every record is \
     still checked against what was signed)";

/// A medium that would not open because its file system is damaged (`message` says where):
/// damage found, exit 1, as the same damage met further in is (it was exit 3 with "reconnect
/// it"). A damaged boot sector's message names the copy that repairs it.
pub fn damaged_medium(message: String) -> Error {
    let hint = if message.contains("boot sector") {
        "nothing was read or written: do what the message says (the `dd` it shows, on a copy of \
         the medium first if it is the only one), then run the same command again; `mgear \
         verify` then says which captures are whole"
            .to_string()
    } else {
        DAMAGED_HINT.to_string()
    };
    coded_hint(FOUND, message, hint)
}

/// Whether `err` is damage in the medium's file system (a FAT chain cut, looping or leaving
/// the volume).
fn is_damaged(err: &Error) -> bool {
    use image_format::StoreError;
    err.chain().any(|e| {
        matches!(
            e.downcast_ref(),
            Some(image_format::Error::Store {
                error: StoreError::Damaged(_),
                ..
            })
        ) || matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Damaged(_)))
    })
}

/// Whether `err` is the host refusing a path: a read-only file system, or permission denied.
fn refused_by_host(err: &Error) -> bool {
    use nix::errno::Errno;
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| {
                [Errno::EROFS, Errno::EACCES, Errno::EPERM].contains(&Errno::from_raw(n))
            })
    })
}

/// Whether `err` is a medium that refused a write as read-only.
fn is_read_only(err: &Error) -> bool {
    use image_format::StoreError;
    err.chain().any(|e| {
        matches!(
            e.downcast_ref(),
            Some(image_format::Error::Store {
                error: StoreError::ReadOnly,
                ..
            })
        ) || e.downcast_ref::<StoreError>() == Some(&StoreError::ReadOnly)
            // A read-only ingest target (an NBD export served `-r`): the generic hint said to
            // check it is reachable and run the same command again, which cannot help.
            || matches!(
                e.downcast_ref::<mgear_volume::Error>(),
                Some(mgear_volume::Error::ReadOnly(_))
            )
    })
}

/// The exit code an image-format error calls for.
fn format_code(e: &image_format::Error) -> i32 {
    use image_format::Error as E;
    match e {
        E::WrongKey { .. }
        | E::NeedKey { .. }
        | E::InvalidName { .. }
        | E::InvalidParams(_)
        | E::NoCapture { .. }
        | E::NoGeneration { .. }
        | E::NotOnMediaGiven(_)
        | E::ResumeMismatch { .. } => USAGE,
        // A damaged file system on the medium is a finding about it, not a failed device.
        E::Corrupt { .. }
        | E::Store {
            error: image_format::StoreError::Damaged(_),
            ..
        } => FOUND,
        _ => IO,
    }
}

/// A link of an error chain that is a [`Error::Coded`] or a [`Pending`]: its code and hint.
fn coded_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<(i32, &'a Option<String>)> {
    match e.downcast_ref::<Error>() {
        Some(Error::Coded { code, hint, .. }) => Some((*code, hint)),
        _ => e.downcast_ref::<Pending>().map(|p| (PENDING, &p.hint)),
    }
}

/// An ingest that wrote what the media given hold and waits for others (exit 4), with what
/// must be given again beside them apart from its message: a machine set gathers that per disk
/// from this field (it once cut it out of the hint's text).
#[derive(Debug)]
pub struct Pending {
    /// What was written and what is still missing, for the user.
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
    /// The media needed again in the run that completes the disk, as "with M again (why)".
    pub again: Option<String>,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Pending {}

/// The exit code a boot library error calls for: a bad option or an unsupported guest is 2, a
/// guest that did not come up 1, the rest 3.
fn boot_code(e: &mgear_boot::BootError) -> i32 {
    use mgear_boot::BootError as E;
    match e {
        E::Usage(_) | E::Unsupported(_) => USAGE,
        E::NotBooted(_) => FOUND,
        _ => IO,
    }
}

/// The exit code a volume error calls for: what the operator fixes on the command line is 2,
/// everything else (the target failed) 3.
fn volume_code(e: &mgear_volume::Error) -> i32 {
    if e.is_usage() {
        USAGE
    } else {
        IO
    }
}

/// Whether `err` says the medium is full.
pub fn is_no_space(err: &Error) -> bool {
    use image_format::StoreError;
    err.chain().any(|e| {
        if let Some(image_format::Error::Store { error, .. }) = e.downcast_ref() {
            return *error == StoreError::NoSpace;
        }
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return *s == StoreError::NoSpace;
        }
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Context;

    /// A full target on ingest is freed on the target (the medium is only read); a read
    /// refused names reading as well as writing (it said "refused to write" of a source).
    #[test]
    fn the_hint_for_a_full_or_refused_path_fits_the_command() {
        let full = Error::from(std::io::Error::from_raw_os_error(28));
        assert!(hint(&full, "ingest").contains("holds the target"));
        assert!(hint(&full, "ingest").contains("the medium is only read"));
        assert!(hint(&full, "capture").contains("on the medium or target"));
        let denied = Error::from(std::io::Error::from_raw_os_error(13));
        let h = hint(&denied, "capture");
        assert!(h.contains("to read a source"), "{h}");
        assert!(!h.contains("refused to write"), "{h}");
    }

    #[test]
    fn a_missing_tool_is_installed_not_looked_for() {
        let e: Error = mgear_boot::BootError::MissingTool {
            tool: "grub-mkimage".into(),
            package: "grub-common".into(),
        }
        .into();
        let e = Err::<(), _>(e).context("demo step 1").unwrap_err();
        assert_eq!(
            hint(&e, "demo"),
            "install it (`apt-get install grub-common`), then run the same command again"
        );
    }

    /// Damage met as the medium's file system is read (a directory loop through the root)
    /// is a finding, exit 1 as everywhere else, with the damaged-medium hint; it was exit 3.
    #[test]
    fn damage_read_from_the_file_system_is_a_finding() {
        let e = Err::<(), _>(image_format::StoreError::Damaged("a directory loop".into()))
            .context("reading fat:m.img")
            .unwrap_err();
        assert_eq!(code_of(&e), FOUND);
        assert!(hint(&e, "verify").contains("never repair the original"));
    }

    /// The key cache or state dir on a read-only mount, an immutable medium image: said
    /// what to make writable or where else to point (it said "do what the message says").
    #[test]
    fn a_path_the_host_refuses_says_make_it_writable_or_go_elsewhere() {
        for errno in [nix::libc::EROFS, nix::libc::EACCES, nix::libc::EPERM] {
            let e = Err::<(), _>(std::io::Error::from_raw_os_error(errno))
                .context("creating key cache /x/mgear/keys")
                .unwrap_err();
            assert_eq!(code_of(&e), IO);
            let h = hint(&e, "capture");
            assert!(
                h.contains("give the user access to it") && h.contains("--key-cache"),
                "{h}"
            );
        }
        let e = Err::<(), _>(std::io::Error::from_raw_os_error(nix::libc::ENOENT))
            .context("opening x")
            .unwrap_err();
        assert!(hint(&e, "capture").starts_with("do what the message says"));
    }

    #[test]
    fn code_survives_context() {
        let e: crate::Result<()> = Err(usage("bad key"));
        let e = e.context("opening web01").unwrap_err();
        assert_eq!(code_of(&e), USAGE);
        let io: crate::Error = std::io::Error::other("disk").into();
        assert_eq!(code_of(&io), IO);
        assert_eq!(code_of(&coded(FOUND, "bad record")), FOUND);
        let wrong = crate::Error::from(image_format::Error::WrongKey {
            name: "web01".into(),
        })
        .context("opening the medium");
        assert_eq!(code_of(&wrong), USAGE);
        assert_eq!(
            format!("{wrong:#}")
                .matches("this key does not open capture web01")
                .count(),
            1
        );
        let full = crate::Error::from(image_format::Error::Store {
            path: "x".into(),
            error: image_format::StoreError::NoSpace,
        });
        assert!(is_no_space(&full));
        assert_eq!(code_of(&full), IO);
        assert!(hint(&full, "capture").contains("free space"));
        let enospc: crate::Error = std::io::Error::from_raw_os_error(28).into();
        assert!(is_no_space(&enospc.context("writing SEG-00001")));
        // A read-only medium is told as such, not as a path to check for reachability.
        let ro = crate::Error::from(image_format::Error::Store {
            path: "MGEAR/web01".into(),
            error: image_format::StoreError::ReadOnly,
        })
        .context("capturing web01");
        assert_eq!(code_of(&ro), IO);
        assert!(
            hint(&ro, "capture").contains("refuses writes"),
            "{}",
            hint(&ro, "capture")
        );
        assert!(!hint(&full, "capture").contains("refuses writes"));
    }

    #[test]
    fn classes_and_hints() {
        assert_eq!(classified(&crate::err!("plain")), None);
        let wrapped =
            coded_hint(USAGE, "no capture web9", "run `mgear inspect`").context("ingest refused");
        assert_eq!(classified(&wrapped), Some(USAGE));
        assert_eq!(hint(&wrapped, "ingest"), "run `mgear inspect`");
        assert_eq!(
            hint(&usage("bad flag"), "verify"),
            "check the arguments and key files: `mgear verify --help`"
        );
        let e = coded_next(IO, "port 7410 is taken", "give another --listen");
        assert_eq!(e.to_string(), "port 7410 is taken; give another --listen");
        assert_eq!(hint(&e, "serve"), "give another --listen");
        assert_eq!(code_of(&e), IO);
        assert_eq!(
            [kind(FOUND), kind(USAGE), kind(IO), kind(PENDING)],
            ["failure", "usage", "io", "pending"]
        );
    }
}
