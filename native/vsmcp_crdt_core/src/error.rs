//! Errors of the core, as values. The NIF maps each variant to a documented
//! atom (see `Error::reason`), so Elixir callers get `{:error, reason}`.

use std::fmt;

/// Every failure the core can report. Nothing in the core panics on input
/// that came from outside (a caller's term, a peer's bytes, a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Encoded bytes are not a valid record of the expected format.
    Decode(String),
    /// Encoded bytes carry a format version this build does not know.
    UnsupportedVersion(u8),
    /// Two values of different CRDT kinds (or OR-Set policies) were combined.
    TypeMismatch,
    /// A remote clock is further ahead of local physical time than allowed.
    ClockSkew { ahead_ms: u64 },
    /// An arithmetic result does not fit the counter's range.
    Overflow,
    /// An argument is outside its documented domain.
    InvalidArgument(&'static str),
    /// The durable tier failed (I/O, corruption, read-only, disk full).
    Storage(String),
    /// The id is unknown to the store.
    NotFound,
    /// `create` of an id that exists.
    AlreadyExists,
    /// The operation does not fit the CRDT type.
    UnsupportedOperation,
    /// A value is larger than the store's `max_value_bytes`.
    ValueTooLarge { size: usize, max: usize },
    /// The store was closed.
    Closed,
    /// The call would block (a disk read, a WAL write, or O(n) work on a
    /// large item): repeat it with `Access::MayBlock` on a dirty scheduler.
    /// Never reaches Elixir callers.
    WouldBlock,
    /// Closing could not write `ids` ids' acknowledged writes.
    Unflushed { ids: usize, reason: String },
}

impl Error {
    /// The atom name the NIF reports for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Decode(_) => "invalid_encoding",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::TypeMismatch => "type_mismatch",
            Error::ClockSkew { .. } => "clock_skew",
            Error::Overflow => "overflow",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Storage(_) => "storage_error",
            Error::NotFound => "not_found",
            Error::AlreadyExists => "already_exists",
            Error::UnsupportedOperation => "unsupported_operation",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::Closed => "closed",
            Error::WouldBlock => "dirty",
            Error::Unflushed { .. } => "unflushed",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Decode(m) => write!(f, "invalid encoding: {m}"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Error::TypeMismatch => write!(f, "CRDT kinds do not match"),
            Error::ClockSkew { ahead_ms } => {
                write!(f, "remote clock is {ahead_ms} ms ahead of local time")
            }
            Error::Overflow => write!(f, "counter overflow"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Storage(m) => write!(f, "storage error: {m}"),
            Error::NotFound => write!(f, "not found"),
            Error::AlreadyExists => write!(f, "already exists"),
            Error::UnsupportedOperation => write!(f, "unsupported operation"),
            Error::ValueTooLarge { size, max } => {
                write!(f, "value of {size} bytes exceeds max_value_bytes {max}")
            }
            Error::Closed => write!(f, "store closed"),
            Error::WouldBlock => write!(f, "the call needs a dirty scheduler"),
            Error::Unflushed { ids, reason } => {
                write!(f, "writes of {ids} ids could not be written: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
