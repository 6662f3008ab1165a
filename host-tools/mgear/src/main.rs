//! `mgear`: MotionGear host tools.
//!
//! The thin binary over the `mgear` library (`lib.rs`): the clap tree (the
//! subcommands here, their flags in `cli/`, one file per command), which
//! turns the command line into the library's typed plans; usage errors,
//! `--json` errors and exit codes. Each library module's `//!` doc explains
//! its command for users.
/// `eprintln!` that never panics: std's panics when standard error is gone
/// (`mgear capture ... 2>&1 | head -1`), which stopped a set capture between
/// two disks. A message that cannot be written is lost; the work goes on.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

use mgear::{
    appliance, bench, boot_cmd, demo, exit, inspect, keys, machine, medium_admin, output, sync,
    verify,
};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  a failure was found (verify found a bad record; ingest met data that does not authenticate;
     an appliance check or the custody log failed; the machine did not boot)
  2  usage or key error (bad arguments, a key, PIN or trust file that is missing or does not fit,
     a medium or target refused for what it is: mounted, a VM's disk, another program's volume)
  3  I/O error (source, medium, target, appliance or peer unreadable/unwritable/unreachable, medium
     full, busy with another mgear command); also a stop by one Ctrl-C or SIGTERM at a checkpoint
  4  pending: ingest wrote what the media given hold; the rest is on media still to come
  130  a second Ctrl-C (or SIGTERM) a second or more after the first: exit at once, no result;
     the same command resumes from the last checkpoint

With --json every command prints one JSON object on stdout, errors included:
  {\"ok\":false,\"command\":...,\"error\":{\"code\":N,\"kind\":\"failure|usage|io|pending\",\"message\":...,\"hint\":...}}";

/// MotionGear: capture disks onto an encrypted, verifiable appliance medium and ingest them at the target.
#[derive(Parser, Debug)]
#[command(name = "mgear", version, after_help = EXIT_CODES)]
struct Cli {
    /// Print the result as one JSON object on stdout (errors too).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a target key pair (--out target.key writes target.key, 0600, and target.pub for the capture site), or with --signing a capture site's signing key.
    Keygen(cli::keys::KeygenArgs),
    /// The data keys this capture host keeps for deltas and syncs: list, forget.
    Keys(cli::keys::KeysArgs),
    /// Format a medium (FAT32 image or device), remove captures from it (rm), check it (fsck).
    Medium(cli::medium::MediumArgs),
    /// Capture a disk onto the medium (encrypted; resumable: re-run the same command).
    Capture(cli::capture::Cli),
    /// Check a medium: keyless, or with --identity/--passphrase-file decrypting everything (exit 1 if bad).
    Verify(cli::verify::Args),
    /// Verify, decrypt and write a capture onto a volume (file:, qcow2:, dev:, nbd://, libvirt:, rbd:, cinder:, ebs-snapshot:); resumable.
    Ingest(cli::ingest::Cli),
    /// List the captures on a medium (no key needed).
    Inspect(cli::inspect::Args),
    /// The whole journey on this machine: sample disk, keygen, medium, capture, verify, ingest, compare, boot.
    Demo(cli::demo::Args),
    /// Benchmark capture and ingest against dd and qemu-img on a generated disk; prints peak RSS.
    Bench(cli::bench::Args),
    /// Talk to the appliance over its console.
    Appliance(cli::appliance::Args),
    /// Boot a volume under QEMU and prove it came up.
    Boot(cli::boot::Args),
    /// Target: keep an ingested volume in sync with its running source (see `mgear sync`).
    Serve(cli::sync::ServeArgs),
    /// Source: send the chunks that changed since the capture to `mgear serve`.
    Sync(cli::sync::SyncArgs),
    /// Final sync with the source quiesced, then boot the target and report the downtime.
    Cutover(cli::sync::CutoverArgs),
}

/// Keep chunk-sized buffers on the heap. Capture, ingest and sync allocate
/// and free buffers of a chunk (1 MiB by default) thousands of times a
/// second across threads; glibc serves each one with a fresh mmap and
/// returns it with munmap, so every buffer is page-faulted and zeroed again:
/// profiled at ~300k page faults and half the system time per GiB captured.
/// Buffers up to 4 MiB (chunks up to 2 MiB with their records) now stay on
/// the heap; larger chunks keep mmap, so freed memory goes back at once and
/// peak RSS stays bounded whatever the chunk size.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc allocator parameters; it is called
    // before any other thread exists, and both values are in range.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 4 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Set while `--help --json` prints a command's help: nothing that command does has run.
static PRINTING_HELP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `println!` panics when standard output cannot be written: EPIPE once the
/// reader is gone (`mgear appliance log | head`; Rust ignores SIGPIPE), ENOSPC
/// or EIO for a full or failing output file. End with exit 3 (the output could
/// not be written) instead, quietly for EPIPE, and keep real panics loud.
fn stdout_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") {
            // A reader that went away (`| head`) needs no message; a full or failing
            // output file does: exit 101 and a backtrace after a finished capture or
            // ingest read as "it failed", and its re-run is refused as already done.
            // A command whose work stands once done (a capture on its medium, an ingested
            // volume) says so even then: exit 3 with nothing on stderr read as a failure to
            // resume, and the re-run was refused as already done.
            // `help capture --json` prints help, and did nothing that stands.
            let help = PRINTING_HELP.load(std::sync::atomic::Ordering::Relaxed);
            let command = output::command();
            let first = command.split(' ').next().unwrap_or("");
            let lasting = !help && ["capture", "ingest", "cutover", "medium"].contains(&first);
            // keygen's keys and an appliance's change of state stand too: "run it again" was
            // refused (the key exists), or signed and logged a second arrival.
            let changed_appliance = !help
                && [
                    "appliance provision",
                    "appliance unlock",
                    "appliance lock",
                    "appliance seal",
                    "appliance arrival",
                    "appliance erase",
                ]
                .contains(&command);
            let why = text.trim_start_matches("failed printing to stdout: ");
            if lasting {
                eprintln!(
                    "mgear: error: could not write the output to standard output ({why}): what \
                     the command did before that stands (a capture on its medium, an ingested \
                     volume); only its printed report is lost: `mgear inspect` shows the medium, \
                     and --report FILE keeps a report on a disk with room"
                );
            } else if first == "keygen" && !help {
                eprintln!(
                    "mgear: error: could not write the output to standard output ({why}): the \
                     key files were written before that and stand (do not run keygen again: it \
                     refuses to overwrite them); the public key is in the .pub file beside the \
                     key"
                );
            } else if changed_appliance {
                eprintln!(
                    "mgear: error: could not write the output to standard output ({why}): what \
                     the appliance did before that stands; `mgear appliance info` shows its \
                     state, `mgear appliance log` and `attestations` read what it recorded"
                );
            } else if !text.contains("Broken pipe") {
                // A listing or a check: its result is what was lost.
                eprintln!(
                    "mgear: error: could not write the output to standard output ({why}): its \
                     result is lost; run it again with the output going where there is room"
                );
            }
            std::process::exit(exit::IO);
        }
        default(info);
    }));
}

/// `--json` anywhere before a `--`: known before (and even when) parsing fails. `--json=...`
/// too, which the parser refuses (the flag takes no value): its refusal is then JSON as well
/// (it was plain text, and stdout empty).
fn wants_json() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json" || a.to_string_lossy().starts_with("--json="))
}

/// The subcommand path of `m`: `"appliance log"`, `"medium format"`, `"capture"`.
fn command_name(m: &clap::ArgMatches) -> String {
    let mut names = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        names.push(name.to_string());
        cur = sub;
    }
    names.join(" ")
}

/// The subcommands named on the command line (`["appliance", "log"]`), as
/// far as they exist in `cmd`'s tree: what a usage error is about, when
/// clap could not parse far enough to say.
fn named_subcommands(cmd: &clap::Command, args: &[std::ffi::OsString]) -> Vec<String> {
    let mut names = Vec::new();
    let mut cur = cmd;
    for a in args.iter().take_while(|a| *a != "--") {
        let Some(a) = a.to_str().filter(|a| !a.starts_with('-')) else {
            continue;
        };
        // Other words are option values or operands, not subcommands.
        if let Some(sub) = cur.find_subcommand(a) {
            names.push(sub.get_name().to_string());
            cur = sub;
        }
    }
    names
}

/// A clap error as one `--json` message and hint. clap renders a message
/// over several lines (`the following required arguments were not
/// provided:` and the arguments below it), then a blank line and a usage;
/// the message keeps all of the first part. A missing subcommand renders
/// the command's whole help: say which subcommands exist instead.
fn usage_message(e: &clap::Error, cmd: &clap::Command, named: &[String]) -> (String, String) {
    use clap::error::ErrorKind;
    let mut leaf = cmd;
    for n in named {
        leaf = leaf.find_subcommand(n).unwrap_or(leaf);
    }
    let path = std::iter::once("mgear")
        .chain(named.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let help = format!("see `{path} --help`");
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) && leaf.has_subcommands()
    {
        let subs: Vec<&str> = leaf
            .get_subcommands()
            .map(clap::Command::get_name)
            .filter(|n| *n != "help")
            .collect();
        let msg = format!("`{path}` needs a subcommand: {}", subs.join(", "));
        let hint = format!("e.g. `{path} {}`; {help}", subs.first().unwrap_or(&"help"));
        return (msg, hint);
    }
    let rendered = e.to_string();
    let mut parts = rendered.split("\n\n");
    let msg = parts
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string();
    let msg = if msg.is_empty() {
        "bad arguments".to_string()
    } else {
        msg
    };
    let hint = match rendered.lines().find_map(|l| l.strip_prefix("Usage: ")) {
        // clap lists the `--json` given among the arguments of the usage it
        // prints; it is not one the command needs.
        Some(usage) => format!("usage: {}; {help}", usage.trim().replace(" --json", "")),
        None => help,
    };
    (msg, hint)
}

/// The subcommand the command line names (`medium fsck`), as the JSON envelope's `command`
/// says it before the line is parsed; `mgear` when it names none.
fn named_on_command_line() -> String {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let named = named_subcommands(&Cli::command(), &args);
    if named.is_empty() {
        "mgear".to_string()
    } else {
        named.join(" ")
    }
}

/// The command line to parse. `mgear help capture --json` is `mgear capture --json --help`,
/// and `mgear help --help` is `mgear --help`: clap's `help` takes command names only, and
/// refused the flag as "an unrecognized subcommand".
fn argv(json: bool) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    // Where `help` stands among the leading subcommand names (`mgear keys help list`).
    let at = args
        .iter()
        .skip(1)
        .take_while(|a| !a.to_string_lossy().starts_with('-'))
        .position(|a| a == "help")
        .map(|i| i + 1);
    let asks_help = at.is_some_and(|i| args.iter().skip(i + 1).any(|a| a == "--help" || a == "-h"));
    if let (Some(i), true) = (at, json || asks_help) {
        // `help help --json` too: help's own help is its parent's.
        while args.get(i).is_some_and(|a| a == "help") {
            args.remove(i);
        }
        if !asks_help {
            args.push("--help".into());
        }
    }
    args
}

/// Parse the command line; a usage error is exit 2 (as JSON with `--json`,
/// and the `mgear: error:` line on stderr), `--help` and `--version` print
/// and exit 0.
fn parse(json: bool) -> Cli {
    use clap::error::ErrorKind;
    let parsed = Cli::command()
        .try_get_matches_from(argv(json))
        .and_then(|m| Ok((command_name(&m), Cli::from_arg_matches(&m)?)));
    match parsed {
        Ok((name, cli)) => {
            output::init(&name, json || cli.json);
            cli
        }
        // `--version --json`: the version in the JSON envelope, as every other answer.
        Err(e) if json && e.kind() == ErrorKind::DisplayVersion => {
            output::init("mgear", true);
            let v = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") });
            match output::emit(&v) {
                Ok(()) => std::process::exit(exit::OK),
                Err(_) => std::process::exit(exit::IO),
            }
        }
        // `--help --json`: the help text in the envelope (it printed plain text, which no JSON
        // reader takes).
        Err(e) if json && e.kind() == ErrorKind::DisplayHelp => {
            output::init(&named_on_command_line(), true);
            PRINTING_HELP.store(true, std::sync::atomic::Ordering::Relaxed);
            let v = serde_json::json!({ "help": e.render().to_string() });
            match output::emit(&v) {
                Ok(()) => std::process::exit(exit::OK),
                Err(_) => std::process::exit(exit::IO),
            }
        }
        // Help and version written where they cannot be (`> /dev/full`): exit 3, as any
        // other output that cannot be written (clap's own exit said 0).
        Err(e)
            if !json && matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            use std::io::Write as _;
            match e.print().and_then(|()| std::io::stdout().flush()) {
                Ok(()) => std::process::exit(exit::OK),
                // A reader that went away (`| head`) needs no message.
                Err(w) if w.kind() == std::io::ErrorKind::BrokenPipe => {
                    std::process::exit(exit::IO)
                }
                Err(w) => {
                    eprintln!("mgear: error: could not write the text to standard output ({w})");
                    std::process::exit(exit::IO)
                }
            }
        }
        // Rendered here, not by clap: a secret key given as a value (`--sign "$(cat
        // site.key)"`, taken for an option) was quoted whole.
        Err(e) if !json => {
            eprint!("{}", output::redact_secrets(&e.render().to_string()));
            std::process::exit(e.exit_code())
        }
        Err(e) => {
            let cmd = Cli::command();
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let named = named_subcommands(&cmd, &args);
            let (message, hint) = usage_message(&e, &cmd, &named);
            output::init(&named_on_command_line(), true);
            println!("{}", output::error_line(exit::USAGE, &message, &hint));
            eprintln!("mgear: error: {}", output::redact_secrets(&message));
            std::process::exit(exit::USAGE);
        }
    }
}

/// The environment variables the README documents, checked before anything runs: a value
/// that is not what they take was ignored without a word (`MGEAR_NBD_TIMEOUT=abc` waited the
/// default 300 s, `MGEAR_FSCK_FAT_TIMEOUT=0` stopped fsck.fat at once and called a clean
/// medium damaged), and an empty `MGEAR_APPLIANCE` was refused as a `--port` never given.
fn check_env(json: bool) {
    let wrong = |message: String, hint: &str| -> ! {
        // Named as a usage error of the command line names it (it said "mgear").
        output::init(&named_on_command_line(), json);
        if json {
            println!("{}", output::error_line(exit::USAGE, &message, hint));
        }
        eprintln!("mgear: error: {message}");
        eprintln!("mgear: what to do: {hint}");
        std::process::exit(exit::USAGE);
    };
    for (var, default) in [
        ("MGEAR_NBD_TIMEOUT", "300 s"),
        ("MGEAR_STOP_GRACE", "30 s"),
        (
            "MGEAR_FSCK_FAT_TIMEOUT",
            "300 s and 1 s per GiB of the medium",
        ),
    ] {
        let Some(v) = std::env::var_os(var) else {
            continue;
        };
        let v = v.to_string_lossy();
        // At most about 31 years: a limit past that is no limit, and a deadline that far
        // overflowed the clock (a panic).
        if !v
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > 0 && n <= 1_000_000_000)
        {
            wrong(
                format!(
                    "{var}={v:?} is not a number of seconds (a whole number from 1 to \
                     1000000000; unset, the limit is {default})"
                ),
                &format!("set {var} to a whole number of seconds, or unset it"),
            );
        }
    }
    if std::env::var_os("MGEAR_APPLIANCE").is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
        wrong(
            "MGEAR_APPLIANCE is set but empty: it names the appliance's console port (e.g. \
             /dev/ttyACM0) for the `appliance` commands"
                .to_string(),
            "set MGEAR_APPLIANCE to the console port, or unset it and give --port",
        );
    }
}

fn main() {
    tune_allocator();
    stdout_failures();
    check_env(wants_json());
    let cli = parse(wants_json());
    let result = match cli.cmd {
        Cmd::Keygen(a) => keys::keygen(a.into_plan()),
        Cmd::Keys(a) => keys::keys(a.into_plan()),
        Cmd::Medium(a) => a.into_plan().and_then(medium_admin::run),
        Cmd::Capture(a) => a.into_plan().and_then(machine::capture),
        Cmd::Verify(a) => verify::run(a.into_plan()),
        Cmd::Ingest(a) => a.into_plan().and_then(machine::ingest),
        Cmd::Inspect(a) => inspect::run(a.into_plan()),
        Cmd::Demo(a) => demo::run(a.into_plan()),
        Cmd::Bench(a) => a.into_plan().and_then(bench::run),
        Cmd::Appliance(a) => appliance::run(a.into_plan()),
        Cmd::Boot(a) => a.into_plan().and_then(boot_cmd::run),
        Cmd::Serve(a) => sync::serve(a.into_plan()),
        Cmd::Sync(a) => a.into_plan().and_then(sync::sync),
        Cmd::Cutover(a) => a.into_plan().and_then(sync::cutover),
    };
    let code = match result {
        Ok(code) => {
            // `ok` is true only on exit 0: a command that exits non-zero
            // must print its verdict with `output::emit_ok`.
            debug_assert!(
                code == exit::OK || !output::emitted_ok(),
                "{} printed \"ok\":true and exits {code}",
                output::command()
            );
            code
        }
        Err(err) => {
            let code = exit::code_of(&err);
            let hint = exit::hint(&err, output::command());
            let message = format!("{err:#}");
            // A command that printed its report (`"ok":false` with its `error`) before it
            // failed: --json prints one object, not a second.
            // Written without the panic of `println!`: a full or closed stdout must not turn
            // this failure into "what the command did stands" (exit 3).
            if output::json() && !output::emitted_error() {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    output::error_line(code, &message, &hint)
                );
            }
            // Exit 4 is the expected end of a run that waits for media still to come, no error.
            let what = match code == exit::PENDING {
                true => "pending",
                false => "error",
            };
            // A message may quote what a medium or a peer holds: no raw control bytes; nor a
            // secret key given where a path belongs.
            eprintln!(
                "mgear: {what}: {}",
                output::printable_lines(&output::redact_secrets(&message))
            );
            // The next step was only in --json: a person reading the terminal got "No space
            // left on device" and nothing on what to do. Said once, unless the message has it.
            // ("check the arguments: --help", the fallback of a usage error, is left to --json:
            // the message itself names the argument.)
            let generic = hint.starts_with("check the arguments and key files");
            // The fallback of an I/O error beside a message that already says how to go on
            // ("stopped; run the same command to resume", "medium full: ... with one more
            // medium") only contradicts it.
            let fallback = hint.starts_with("do what the message says")
                || hint.starts_with("free space on the");
            let advised = [
                "same command",
                "re-run",
                "run this again",
                "run it again",
                "check that the path",
                "check the path",
                "then pass --",
                "format it with",
                "copy the backup",
                "copy the boot sector",
                "or stop it first",
                "Give a volume",
                "give a path",
            ]
            .iter()
            .any(|p| message.contains(p));
            let said = hint.is_empty() || message.contains(&hint) || (fallback && advised);
            if !said && !generic {
                eprintln!("mgear: what to do: {hint}");
            }
            code
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_error(args: &[&str]) -> (Vec<String>, String, String) {
        let cmd = Cli::command();
        let e = cmd
            .clone()
            .try_get_matches_from(std::iter::once("mgear").chain(args.iter().copied()))
            .unwrap_err();
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let named = named_subcommands(&cmd, &args);
        let (msg, hint) = usage_message(&e, &cmd, &named);
        (named, msg, hint)
    }

    #[test]
    fn json_usage_errors_name_the_missing_arguments_and_the_command() {
        let (named, msg, hint) =
            usage_error(&["--json", "capture", "--medium", "dir:m", "--name", "x"]);
        assert_eq!(named, ["capture"]);
        assert_eq!(
            msg,
            "the following required arguments were not provided: --source <SOURCE>"
        );
        assert!(hint.starts_with("usage: mgear capture "), "{hint}");
        assert!(hint.ends_with("see `mgear capture --help`"), "{hint}");
        // The `--json` given is not among the arguments the usage asks for.
        let (_, _, hint) = usage_error(&["capture", "--json"]);
        assert!(
            hint.starts_with("usage: mgear capture --name <NAME> --source"),
            "{hint}"
        );
        assert!(!hint.contains("--json"), "{hint}");
    }

    #[test]
    fn json_usage_errors_list_the_subcommands_of_a_bare_group() {
        let (named, msg, _) = usage_error(&["--json", "keys"]);
        assert_eq!(named, ["keys"]);
        assert_eq!(msg, "`mgear keys` needs a subcommand: list, forget");
        let (named, msg, _) = usage_error(&["medium", "--json"]);
        assert_eq!(named, ["medium"]);
        assert!(
            msg.starts_with("`mgear medium` needs a subcommand: format, "),
            "{msg}"
        );
        let (named, msg, _) = usage_error(&["--json", "inspect", "--bogus"]);
        assert_eq!(named, ["inspect"]);
        assert!(
            msg.starts_with("unexpected argument '--bogus' found"),
            "{msg}"
        );
    }
}
