//! One error type for the whole shim, mapped to ttrpc status codes in one place.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    InvalidArgument(String),
    Unimplemented(String),
    /// Anything else: runc failures, IO errors. Surfaces as UNKNOWN, as in the Go shim.
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn code(&self) -> ttrpc::Code {
        match self {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Other(_) => ttrpc::Code::UNKNOWN,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::InvalidArgument(m)
            | Error::Unimplemented(m)
            | Error::Other(m) => m,
        }
    }

    /// Prefixes the message with what was being done, keeping the code.
    pub(crate) fn context(self, what: impl fmt::Display) -> Error {
        let msg = format!("{what}: {}", self.message());
        self.with_message(msg)
    }

    /// Appends `tail` to the message, keeping the code.
    pub(crate) fn suffix(self, tail: impl fmt::Display) -> Error {
        let msg = format!("{}{tail}", self.message());
        self.with_message(msg)
    }

    fn with_message(self, msg: String) -> Error {
        match self {
            Error::NotFound(_) => Error::NotFound(msg),
            Error::AlreadyExists(_) => Error::AlreadyExists(msg),
            Error::FailedPrecondition(_) => Error::FailedPrecondition(msg),
            Error::InvalidArgument(_) => Error::InvalidArgument(msg),
            Error::Unimplemented(_) => Error::Unimplemented(msg),
            Error::Other(_) => Error::Other(msg),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Other(e.to_string())
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Other(e.to_string())
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
    }
}

/// Adds context to io/nix results: `fs::read(p).ctx(|| format!("reading {p}"))?`.
pub(crate) trait Context<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_ttrpc() {
        let e: ttrpc::Error = Error::Unimplemented("x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::UNIMPLEMENTED);
                assert_eq!(s.message(), "x");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(Error::NotFound("a".into()).context("b").to_string(), "b: a");
        assert_eq!(Error::NotFound("a".into()).context("b").code(), ttrpc::Code::NOT_FOUND);
    }
}
