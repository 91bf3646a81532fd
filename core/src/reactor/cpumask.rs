//! Core masks in SPDK's syntax: a hex mask (`0x3`, `3`) or a core list (`[0,2-3]`).

use std::fmt;

/// The largest core index a mask may name. Reactors are pinned one per core and a
/// `u128` covers every machine this targets; a larger index is an input error.
pub const MAX_CORES: u32 = 128;

/// A set of CPU cores, one reactor per member.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoreMask(u128);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreMaskError {
    #[error("core mask '{0}' is empty: name at least one core, e.g. 0x1")]
    Empty(String),
    #[error("core mask '{mask}' is not a hex mask (0x3) or a core list ([0,2-3]): {why}")]
    Syntax { mask: String, why: String },
    #[error("core {core} in mask '{mask}' is beyond the supported {MAX_CORES} cores")]
    TooLarge { mask: String, core: u32 },
}

impl CoreMask {
    pub fn single(core: u32) -> Self {
        assert!(core < MAX_CORES, "core {core} out of range");
        CoreMask(1u128 << core)
    }

    pub fn parse(text: &str) -> Result<Self, CoreMaskError> {
        let text = text.trim();
        let mask = if let Some(list) = text.strip_prefix('[') {
            let Some(list) = list.strip_suffix(']') else {
                return Err(syntax(text, "a core list must end with ']'"));
            };
            parse_list(text, list)?
        } else {
            parse_hex(text)?
        };
        if mask == 0 {
            return Err(CoreMaskError::Empty(text.to_string()));
        }
        Ok(CoreMask(mask))
    }

    pub fn contains(self, core: u32) -> bool {
        core < MAX_CORES && self.0 & (1u128 << core) != 0
    }

    pub fn cores(self) -> impl Iterator<Item = u32> {
        (0..MAX_CORES).filter(move |core| self.contains(*core))
    }

    pub fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// The lowest core: it hosts the app thread, as SPDK's main core does.
    pub fn first(self) -> u32 {
        self.0.trailing_zeros()
    }
}

fn syntax(mask: &str, why: &str) -> CoreMaskError {
    CoreMaskError::Syntax { mask: mask.to_string(), why: why.to_string() }
}

fn parse_hex(text: &str) -> Result<u128, CoreMaskError> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if digits.is_empty() {
        return Err(CoreMaskError::Empty(text.to_string()));
    }
    if digits.len() > (MAX_CORES / 4) as usize {
        return Err(syntax(text, "more hex digits than supported cores"));
    }
    u128::from_str_radix(digits, 16).map_err(|err| syntax(text, &err.to_string()))
}

fn parse_list(text: &str, list: &str) -> Result<u128, CoreMaskError> {
    let mut mask = 0u128;
    for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (parse_core(text, low)?, parse_core(text, high)?),
            None => {
                let core = parse_core(text, item)?;
                (core, core)
            }
        };
        if low > high {
            return Err(syntax(text, &format!("range {low}-{high} runs backwards")));
        }
        for core in low..=high {
            mask |= 1u128 << core;
        }
    }
    Ok(mask)
}

fn parse_core(text: &str, item: &str) -> Result<u32, CoreMaskError> {
    let core: u32 = item.trim().parse().map_err(|_| syntax(text, &format!("'{item}' is not a core number")))?;
    if core >= MAX_CORES {
        return Err(CoreMaskError::TooLarge { mask: text.to_string(), core });
    }
    Ok(core)
}

impl fmt::Display for CoreMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

impl fmt::Debug for CoreMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CoreMask({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[u32]) {
        let mask = CoreMask::parse(text).unwrap();
        assert_eq!(mask.cores().collect::<Vec<_>>(), expected, "{text}");
        assert_eq!(mask.count() as usize, expected.len());
    }

    #[test]
    fn hex_and_list_forms() {
        check("0x1", &[0]);
        check("0x3", &[0, 1]);
        check("C", &[2, 3]);
        check("[0]", &[0]);
        check("[0,2-4]", &[0, 2, 3, 4]);
        check(" [1, 3] ", &[1, 3]);
        assert_eq!(CoreMask::parse("0x6").unwrap().first(), 1);
        assert_eq!(CoreMask::parse("0x3").unwrap().to_string(), "0x3");
    }

    #[test]
    fn bad_masks_say_why() {
        assert!(matches!(CoreMask::parse("0x0"), Err(CoreMaskError::Empty(_))));
        assert!(matches!(CoreMask::parse(""), Err(CoreMaskError::Empty(_))));
        assert!(matches!(CoreMask::parse("[]"), Err(CoreMaskError::Empty(_))));
        assert!(matches!(CoreMask::parse("0xzz"), Err(CoreMaskError::Syntax { .. })));
        assert!(matches!(CoreMask::parse("[3-1]"), Err(CoreMaskError::Syntax { .. })));
        assert!(matches!(CoreMask::parse("[0"), Err(CoreMaskError::Syntax { .. })));
        assert!(matches!(CoreMask::parse("[200]"), Err(CoreMaskError::TooLarge { core: 200, .. })));
        let err = CoreMask::parse("[x]").unwrap_err().to_string();
        assert!(err.contains("'x' is not a core number"), "{err}");
    }
}
