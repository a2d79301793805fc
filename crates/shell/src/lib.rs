//! The hypervisor shell on the console: a line editor fed byte by byte, and
//! the command language. Pure code; the hypervisor executes the commands.
#![no_std]
#![deny(unsafe_code)]

/// Ctrl-] (0x1d): moves console input focus to the next VM, then to this
/// shell, then back to the first VM. (Ctrl-A is QEMU's own escape.)
pub const FOCUS_KEY: u8 = 0x1d;

/// A parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    List,
    Info(&'a str),
    Start(&'a str),
    Stop(&'a str),
    Restart(&'a str),
    /// Counters of every VM, or of one.
    Stats(Option<&'a str>),
    /// The pools' run queues and their vCPUs.
    Sched,
    /// Move a pool VM's vCPU to another pCPU of its pool.
    Move {
        vm: &'a str,
        vcpu: u16,
        pcpu: u16,
    },
    /// Send a VM's state to the snapshot store under `name` (default: the
    /// VM's name); the VM runs on.
    Snapshot {
        vm: &'a str,
        name: Option<&'a str>,
    },
    /// Replace a stopped VM with snapshot `name` (default: the VM's name)
    /// from the store, and run it.
    Restore {
        vm: &'a str,
        name: Option<&'a str>,
    },
    /// Move a running VM to the machine at IPv4 address `to`, which waits
    /// for it with `incoming`.
    Migrate {
        vm: &'a str,
        to: [u8; 4],
    },
    /// Wait for a migration into stopped VM `vm`.
    Incoming(&'a str),
    /// Track a running pool VM's dirty pages as a migration's pre-copy
    /// does (stage 2 split into pages, all write-protected), to measure
    /// what that costs the guest.
    Track(&'a str),
    /// Stop `track`: stage 2 as it was.
    Untrack(&'a str),
}

/// Why a line is not a command; `Display` is the one-line error shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    Empty,
    Unknown(&'a str),
    MissingVm(&'static str),
    TooManyArguments(&'static str),
    /// `move` needs VM, a vCPU number and a pCPU number.
    MoveUsage,
    /// `snapshot` / `restore` need VM and at most a snapshot name.
    SnapshotUsage(&'static str),
    /// `migrate` needs VM and an IPv4 address.
    MigrateUsage,
}

impl core::fmt::Display for ParseError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParseError::Empty => Ok(()),
            ParseError::Unknown(c) => write!(f, "unknown command '{c}' (try 'help')"),
            ParseError::MissingVm(c) => write!(f, "usage: {c} VM"),
            ParseError::TooManyArguments(c) => write!(f, "{c}: too many arguments"),
            ParseError::MoveUsage => write!(f, "usage: move VM VCPU PCPU (numbers from 0)"),
            ParseError::SnapshotUsage(c) => write!(f, "usage: {c} VM [NAME]"),
            ParseError::MigrateUsage => write!(
                f,
                "usage: migrate VM A.B.C.D (the other machine's board.address)"
            ),
        }
    }
}

/// The help text, one command a line.
pub const HELP: &[&str] = &[
    "list             every VM: state, vCPUs, pCPUs, memory, restarts",
    "info VM          one VM in detail",
    "start VM         boot a stopped VM from a fresh image",
    "stop VM          stop a VM (its memory is scrubbed at the next start)",
    "restart VM       stop and boot again from a fresh image",
    "stats [VM]       exits by reason and interrupts injected",
    "sched            pools: run queues, load; vCPUs: state, pCPU, runtime",
    "move VM V P      move pool VM's vCPU V to pCPU P of its pool",
    "snapshot VM [N]  send VM's state to the snapshot store as N (default VM)",
    "restore VM [N]   run stopped VM from snapshot N of the store",
    "migrate VM ADDR  move running VM to the machine at ADDR (it waits: incoming)",
    "incoming VM      wait for a migration into stopped VM",
    "track VM         track VM's dirty pages as a migration does (untrack VM: stop)",
    "help             this text",
    "Ctrl-]           move console input to the next VM / this shell",
];

pub fn parse(line: &str) -> Result<Command<'_>, ParseError<'_>> {
    let mut words = line.split_ascii_whitespace();
    let Some(cmd) = words.next() else {
        return Err(ParseError::Empty);
    };
    let arg = words.next();
    let extra = words.next().is_some();
    let one_vm = |name: &'static str| match (arg, extra) {
        (None, _) => Err(ParseError::MissingVm(name)),
        (Some(_), true) => Err(ParseError::TooManyArguments(name)),
        (Some(vm), false) => Ok(vm),
    };
    let none = |name: &'static str, c: Command<'static>| match arg {
        Some(_) => Err(ParseError::TooManyArguments(name)),
        None => Ok(c),
    };
    match cmd {
        "help" | "?" => none("help", Command::Help),
        "list" | "ls" => none("list", Command::List),
        "info" => one_vm("info").map(Command::Info),
        "start" => one_vm("start").map(Command::Start),
        "stop" => one_vm("stop").map(Command::Stop),
        "restart" => one_vm("restart").map(Command::Restart),
        "stats" if extra => Err(ParseError::TooManyArguments("stats")),
        "stats" => Ok(Command::Stats(arg)),
        "sched" => none("sched", Command::Sched),
        "move" => {
            let mut w = line.split_ascii_whitespace().skip(1);
            let (Some(vm), Some(v), Some(p), None) = (w.next(), w.next(), w.next(), w.next())
            else {
                return Err(ParseError::MoveUsage);
            };
            match (v.parse(), p.parse()) {
                (Ok(vcpu), Ok(pcpu)) => Ok(Command::Move { vm, vcpu, pcpu }),
                _ => Err(ParseError::MoveUsage),
            }
        }
        "snapshot" | "restore" => {
            let c = if cmd == "snapshot" {
                "snapshot"
            } else {
                "restore"
            };
            let mut w = line.split_ascii_whitespace().skip(1);
            let (Some(vm), name, None) = (w.next(), w.next(), w.next()) else {
                return Err(ParseError::SnapshotUsage(c));
            };
            Ok(if c == "snapshot" {
                Command::Snapshot { vm, name }
            } else {
                Command::Restore { vm, name }
            })
        }
        "migrate" => {
            let mut w = line.split_ascii_whitespace().skip(1);
            let (Some(vm), Some(addr), None) = (w.next(), w.next(), w.next()) else {
                return Err(ParseError::MigrateUsage);
            };
            let to = parse_ipv4(addr).ok_or(ParseError::MigrateUsage)?;
            Ok(Command::Migrate { vm, to })
        }
        "incoming" => one_vm("incoming").map(Command::Incoming),
        "track" => one_vm("track").map(Command::Track),
        "untrack" => one_vm("untrack").map(Command::Untrack),
        other => Err(ParseError::Unknown(other)),
    }
}

/// `a.b.c.d`, each part 0 to 255 in decimal.
fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub const LINE_MAX: usize = 80;

/// What a byte typed at the shell did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Echo this byte.
    Echo(u8),
    /// Erase the last character on the screen.
    Erase,
    /// A full line is ready in [`LineEditor::line`].
    Enter,
    /// Nothing to show (ignored byte, or the line is full).
    None,
}

/// A minimal line editor: printable ASCII, backspace/DEL, Ctrl-U, Enter.
pub struct LineEditor {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    pub fn feed(&mut self, b: u8) -> Key {
        match b {
            b'\r' | b'\n' => Key::Enter,
            0x08 | 0x7f if self.len > 0 => {
                self.len -= 1;
                Key::Erase
            }
            0x15 => {
                self.len = 0;
                Key::None
            }
            0x20..=0x7e if self.len < LINE_MAX => {
                self.buf[self.len] = b;
                self.len += 1;
                Key::Echo(b)
            }
            _ => Key::None,
        }
    }

    /// The line typed so far (only printable ASCII, so always UTF-8).
    pub fn line(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or("")
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_with_a_vm_name_parse() {
        assert_eq!(
            parse("restart infotainment"),
            Ok(Command::Restart("infotainment"))
        );
        assert_eq!(parse("  info   safety "), Ok(Command::Info("safety")));
        assert_eq!(parse("stop a"), Ok(Command::Stop("a")));
        assert_eq!(parse("start a"), Ok(Command::Start("a")));
    }

    #[test]
    fn stats_takes_an_optional_vm() {
        assert_eq!(parse("stats"), Ok(Command::Stats(None)));
        assert_eq!(parse("stats safety"), Ok(Command::Stats(Some("safety"))));
        assert_eq!(
            parse("stats a b"),
            Err(ParseError::TooManyArguments("stats"))
        );
    }

    #[test]
    fn migrate_and_incoming_parse() {
        assert_eq!(
            parse("migrate web 10.0.2.16"),
            Ok(Command::Migrate {
                vm: "web",
                to: [10, 0, 2, 16]
            })
        );
        assert_eq!(parse("incoming web"), Ok(Command::Incoming("web")));
        assert_eq!(parse("track web"), Ok(Command::Track("web")));
        assert_eq!(parse("untrack web"), Ok(Command::Untrack("web")));
        assert_eq!(parse("track"), Err(ParseError::MissingVm("track")));
        assert_eq!(
            parse("untrack web x"),
            Err(ParseError::TooManyArguments("untrack"))
        );
        for bad in [
            "migrate",
            "migrate web",
            "migrate web 10.0.2",
            "migrate web 10.0.2.256",
            "migrate web 10.0.2.1.5",
            "migrate web 10.0.2.+1",
            "migrate web 10.0.2.16 x",
        ] {
            assert_eq!(parse(bad), Err(ParseError::MigrateUsage), "{bad}");
        }
        assert_eq!(parse("incoming"), Err(ParseError::MissingVm("incoming")));
    }

    #[test]
    fn snapshot_and_restore_parse() {
        assert_eq!(
            parse("snapshot web"),
            Ok(Command::Snapshot {
                vm: "web",
                name: None
            })
        );
        assert_eq!(
            parse("restore web monday"),
            Ok(Command::Restore {
                vm: "web",
                name: Some("monday")
            })
        );
        for bad in ["snapshot", "restore", "snapshot a b c"] {
            assert!(
                matches!(parse(bad), Err(ParseError::SnapshotUsage(_))),
                "{bad}"
            );
        }
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            parse("restore").unwrap_err().to_string(),
            "usage: restore VM [NAME]"
        );
    }

    #[test]
    fn sched_and_move_parse() {
        assert_eq!(parse("sched"), Ok(Command::Sched));
        assert_eq!(parse("sched a"), Err(ParseError::TooManyArguments("sched")));
        assert_eq!(
            parse("move web 1 2"),
            Ok(Command::Move {
                vm: "web",
                vcpu: 1,
                pcpu: 2
            })
        );
        for bad in [
            "move",
            "move web",
            "move web 1",
            "move web x 2",
            "move web 1 -2",
            "move web 1 2 3",
        ] {
            assert_eq!(parse(bad), Err(ParseError::MoveUsage), "{bad}");
        }
    }

    #[test]
    fn bad_lines_get_one_line_errors() {
        assert_eq!(parse("reboot"), Err(ParseError::Unknown("reboot")));
        assert_eq!(parse("restart"), Err(ParseError::MissingVm("restart")));
        assert_eq!(parse("list all"), Err(ParseError::TooManyArguments("list")));
        assert_eq!(parse("info a b"), Err(ParseError::TooManyArguments("info")));
        assert_eq!(parse("   "), Err(ParseError::Empty));
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            ParseError::Unknown("x").to_string(),
            "unknown command 'x' (try 'help')"
        );
        assert_eq!(ParseError::MissingVm("stop").to_string(), "usage: stop VM");
    }

    #[test]
    fn editor_echoes_erases_and_submits() {
        let mut e = LineEditor::new();
        for &b in b"lisx" {
            assert_eq!(e.feed(b), Key::Echo(b));
        }
        assert_eq!(e.feed(0x7f), Key::Erase);
        assert_eq!(e.feed(b't'), Key::Echo(b't'));
        assert_eq!(e.feed(b'\r'), Key::Enter);
        assert_eq!(e.line(), "list");
        e.clear();
        assert_eq!(e.line(), "");
        assert_eq!(e.feed(0x7f), Key::None, "nothing to erase");
    }

    #[test]
    fn editor_ignores_control_bytes_and_stops_at_the_limit() {
        let mut e = LineEditor::new();
        assert_eq!(e.feed(0x1b), Key::None);
        assert_eq!(e.feed(0xff), Key::None);
        for _ in 0..LINE_MAX {
            e.feed(b'a');
        }
        assert_eq!(e.feed(b'b'), Key::None);
        assert_eq!(e.line().len(), LINE_MAX);
        e.feed(0x15);
        assert_eq!(e.line(), "", "Ctrl-U clears the line");
    }
}
