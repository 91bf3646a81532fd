//! Logging in SPDK's manner: a level that decides what is logged, a print level that
//! decides what reaches stderr, and named debug flags (`-L nvmf_tcp`) that switch on
//! debug messages per component. A check of a disabled flag is one relaxed load.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warning = 1,
    Notice = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [Level::Error, Level::Warning, Level::Notice, Level::Info, Level::Debug];

    /// SPDK's spelling, as `log_get_level` returns it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warning => "WARNING",
            Level::Notice => "NOTICE",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(text.trim()))
    }

    fn from_u8(value: u8) -> Level {
        Level::ALL.get(value as usize).copied().unwrap_or(Level::Debug)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Notice as u8);
static PRINT_LEVEL: AtomicU8 = AtomicU8::new(Level::Notice as u8);

pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn print_level() -> Level {
    Level::from_u8(PRINT_LEVEL.load(Ordering::Relaxed))
}

pub fn set_print_level(level: Level) {
    PRINT_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// A named component whose debug messages can be switched on at run time.
pub struct Flag {
    pub name: &'static str,
    enabled: AtomicBool,
}

impl Flag {
    const fn new(name: &'static str) -> Self {
        Flag { name, enabled: AtomicBool::new(false) }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

/// Every flag, in one table so that `-L` can be checked when the command line is parsed,
/// before any module has run. Names follow SPDK's where a counterpart exists.
pub mod flags {
    use super::Flag;
    pub static APP: Flag = Flag::new("app");
    pub static REACTOR: Flag = Flag::new("reactor");
    pub static THREAD: Flag = Flag::new("thread");
    pub static MEM: Flag = Flag::new("mem");
    pub static ACCEL: Flag = Flag::new("accel");
    pub static RPC: Flag = Flag::new("rpc");
    pub static BDEV: Flag = Flag::new("bdev");
    pub static NVMF: Flag = Flag::new("nvmf");
    pub static NVMF_TCP: Flag = Flag::new("nvmf_tcp");
    pub static P2P: Flag = Flag::new("p2p");
}

static ALL_FLAGS: [&Flag; 10] = [
    &flags::APP,
    &flags::REACTOR,
    &flags::THREAD,
    &flags::MEM,
    &flags::ACCEL,
    &flags::RPC,
    &flags::BDEV,
    &flags::NVMF,
    &flags::NVMF_TCP,
    &flags::P2P,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown log flag '{name}'; known flags: all, {known}")]
pub struct UnknownFlag {
    pub name: String,
    pub known: String,
}

/// Switches a flag (or `all`) on or off.
pub fn set_flag(name: &str, enabled: bool) -> Result<(), UnknownFlag> {
    let mut found = false;
    for flag in ALL_FLAGS {
        if name == "all" || flag.name == name {
            flag.enabled.store(enabled, Ordering::Relaxed);
            found = true;
        }
    }
    if found {
        Ok(())
    } else {
        Err(UnknownFlag { name: name.to_string(), known: ALL_FLAGS.map(|flag| flag.name).join(", ") })
    }
}

/// Every flag and whether it is on, in table order (`log_get_flags`).
pub fn flag_states() -> Vec<(&'static str, bool)> {
    ALL_FLAGS.iter().map(|flag| (flag.name, flag.enabled())).collect()
}

#[doc(hidden)]
pub fn emit(level: Level, module: &str, args: fmt::Arguments<'_>) {
    if level > self::level() || level > print_level() {
        return;
    }
    // `peerless_core::reactor::app` reads as `reactor::app`; the crate adds nothing.
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    let line = format!("[{}] {}: *{}*: {}\n", timestamp(), module, level, args);
    // One write per line so lines from different reactors do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `YYYY-MM-DD HH:MM:SS.uuuuuu` in UTC, without a calendar crate.
fn timestamp() -> String {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Error, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Warning, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_notice {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Notice, module_path!(), format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Info, module_path!(), format_args!($($arg)*)) };
}

/// A debug message of one component; costs one relaxed load while its flag is off.
#[macro_export]
macro_rules! log_debug {
    ($flag:expr, $($arg:tt)*) => {
        if $flag.enabled() {
            $crate::log::emit($crate::log::Level::Debug, $flag.name, format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_spdk_spelling() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
        }
        assert_eq!(Level::parse("warning"), Some(Level::Warning));
        assert_eq!(Level::parse("LOUD"), None);
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn flags_switch_and_unknown_flags_are_named() {
        set_flag("p2p", true).unwrap();
        assert!(flags::P2P.enabled());
        set_flag("p2p", false).unwrap();
        assert!(!flags::P2P.enabled());
        let err = set_flag("nvmf_tpc", true).unwrap_err();
        assert_eq!(err.name, "nvmf_tpc");
        assert!(err.to_string().contains("nvmf_tcp"), "{err}");
        assert!(flag_states().iter().any(|(name, _)| *name == "bdev"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        assert_eq!(timestamp().len(), "2026-11-25 12:00:00.000000".len());
    }
}
