//! Component versions: the core of Semantic Versioning 2.0, `MAJOR.MINOR.PATCH`, and nothing
//! else. Pre-release and build suffixes are refused rather than half-supported, because
//! rollback protection compares versions and their precedence rules are easy to get wrong.

use core::fmt;
use core::str::FromStr;

/// `MAJOR.MINOR.PATCH`; ordered numerically, major first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: use MAJOR.MINOR.PATCH, decimal numbers without leading zeros (e.g. 1.2.0); pre-release and build suffixes are not supported")]
pub struct VersionError(pub alloc::string::String);

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, VersionError> {
        let err = || VersionError(s.chars().take(64).collect());
        let number = |part: &str| -> Option<u64> {
            let ok = !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            ok.then(|| part.parse().ok()).flatten()
        };
        let mut parts = s.split('.');
        let mut next = || parts.next().and_then(number).ok_or_else(err);
        let version = Version::new(next()?, next()?, next()?);
        match parts.next() {
            None => Ok(version),
            Some(_) => Err(err()),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_and_orders() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert_eq!(v("1.2.3"), Version::new(1, 2, 3));
        assert_eq!(v("0.0.0").to_string(), "0.0.0");
        assert_eq!(
            v("18446744073709551615.0.10"),
            Version::new(u64::MAX, 0, 10)
        );
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("1.2.3") < v("1.2.4"));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "v1.2.3",
            "1.2.3-rc1",
            "1.2.3+build",
            " 1.2.3",
            "1.2.3 ",
            "1..3",
            "1.2.",
            "+1.2.3",
            "-1.2.3",
            "18446744073709551616.0.0",
            "١.٢.٣",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
        }
    }
}
