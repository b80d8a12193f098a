//! Time as the ledger stores it: microseconds since the Unix epoch, UTC.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in time, in microseconds since 1970-01-01T00:00:00Z.
///
/// Integers order, hash and store the same on every backend, which floating or
/// calendar types do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Microseconds in one second.
    pub const MICROS_PER_SECOND: i64 = 1_000_000;

    /// The current time from the system clock.
    pub fn now() -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(micros)
    }

    /// The earliest time a protobuf `Timestamp` may hold: 0001-01-01T00:00:00Z, in seconds.
    pub const MIN_SECONDS: i64 = -62_135_596_800;
    /// The latest: 9999-12-31T23:59:59Z, in seconds.
    pub const MAX_SECONDS: i64 = 253_402_300_799;
    /// What [`Timestamp::from_parts`] accepts, for error messages.
    pub const RANGE: &'static str = "0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z (the protobuf Timestamp range), nanos 0..1e9";

    /// From seconds and nanoseconds (the protobuf `Timestamp` form); `None` outside the
    /// protobuf range ([`Timestamp::RANGE`]).
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        if !(0..1_000_000_000).contains(&nanos)
            || !(Self::MIN_SECONDS..=Self::MAX_SECONDS).contains(&seconds)
        {
            return None;
        }
        seconds
            .checked_mul(Self::MICROS_PER_SECOND)
            .and_then(|m| m.checked_add(i64::from(nanos / 1000)))
            .map(Timestamp)
    }

    /// Seconds and nanoseconds (the protobuf `Timestamp` form).
    pub fn to_parts(self) -> (i64, i32) {
        let seconds = self.0.div_euclid(Self::MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(Self::MICROS_PER_SECOND);
        // rem_euclid keeps micros in 0..1_000_000, so the product fits an i32.
        (seconds, i32::try_from(micros * 1000).unwrap_or(0))
    }

    /// This time plus `micros`, saturating at the ends of the range.
    pub fn saturating_add(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = self.to_parts();
        match u64::try_from(secs) {
            Ok(secs) => {
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::new(secs, u32::try_from(nanos).unwrap_or(0));
                write!(f, "{}", humantime::format_rfc3339_micros(t))
            }
            Err(_) => write!(f, "{}us", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            -1,
            -1_000_001,
            1_763_000_000_123_456,
        ] {
            let t = Timestamp(micros);
            let (s, n) = t.to_parts();
            assert_eq!(Timestamp::from_parts(s, n), Some(t), "{micros}");
        }
    }

    #[test]
    fn rejects_bad_nanos() {
        assert_eq!(Timestamp::from_parts(0, -1), None);
        assert_eq!(Timestamp::from_parts(0, 1_000_000_000), None);
        assert_eq!(Timestamp::from_parts(i64::MAX, 0), None);
    }

    #[test]
    fn accepts_exactly_the_protobuf_range() {
        assert!(Timestamp::from_parts(Timestamp::MIN_SECONDS, 0).is_some());
        assert!(Timestamp::from_parts(Timestamp::MAX_SECONDS, 999_999_999).is_some());
        assert_eq!(Timestamp::from_parts(Timestamp::MIN_SECONDS - 1, 0), None);
        assert_eq!(Timestamp::from_parts(Timestamp::MAX_SECONDS + 1, 0), None);
        assert_eq!(
            Timestamp::from_parts(Timestamp::MAX_SECONDS, 0).map(|t| t.to_string()),
            Some("9999-12-31T23:59:59.000000Z".to_string())
        );
    }
}

/// Where "now" comes from: the system clock in service, a hand-moved one in tests (so a test
/// moves 30 days on without sleeping).
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until moved: for tests.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(at.as_micros()))
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(
            secs.saturating_mul(Timestamp::MICROS_PER_SECOND),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: Timestamp) {
        self.0
            .store(at.as_micros(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
