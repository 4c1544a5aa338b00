//! The outcome taxonomy every adapter answers in. Errors are classified, not counted: the worker
//! decides retry, refresh, reject or pause from the class alone.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    /// Transient: network, timeout, 5xx, rate limit, gateway trouble. `after` is the vendor's own hint.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Rate limited although paced: wait `after` and try again. Not a failure of the file: it
    /// counts neither as an attempt nor towards `give_up_after`.
    Throttled {
        after: Option<Duration>,
        reason: String,
    },
    /// The vendor said yes but its answer cannot be read: what it stored cannot be named, and
    /// sending again could store it twice. The file waits for a person; the vendor is paused.
    Unconfirmed {
        reason: String,
    },
    /// The token was refused: drop it, fetch a new one, try again at once.
    Reauth {
        reason: String,
    },
    /// The file itself is unacceptable to the vendor; never retried.
    Rejected {
        reason: String,
    },
    /// The vendor refuses *us* (credentials, signature, clock, permission, quota): pause the vendor.
    VendorDown {
        reason: String,
    },
}

/// An outcome with what the wire said, for `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<T> {
    pub outcome: Outcome<T>,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    /// It failed inside imgsyncd (a bug caught around the call), not at the vendor: whatever
    /// the vendor's state, it says nothing about it.
    internal: bool,
    /// It failed before its request went out (fetching a token for it): the vendor carried
    /// nothing out.
    unsent: bool,
}

impl<T> Call<T> {
    pub fn new(outcome: Outcome<T>, http_status: Option<u16>, vendor_code: Option<String>) -> Self {
        Call {
            outcome,
            http_status,
            vendor_code,
            internal: false,
            unsent: false,
        }
    }

    /// The same failure, for a call whose own request never went out (it failed fetching the
    /// token the request needed).
    pub fn unsent(self) -> Self {
        Call {
            unsent: true,
            ..self
        }
    }

    /// Whether the call's request never went out ([`Call::unsent`]).
    pub fn was_unsent(&self) -> bool {
        self.unsent
    }

    /// A call that failed inside imgsyncd's own code: it says nothing about the vendor, so it
    /// neither counts towards an outage nor ends one (a paused vendor's probe that failed so
    /// leaves the pause as it is).
    pub fn internal(outcome: Outcome<T>) -> Self {
        Call {
            internal: true,
            ..Call::new(outcome, None, None)
        }
    }

    /// The same call with its success turned into `U`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Call<U> {
        match self.outcome {
            Outcome::Done(value) => Call {
                outcome: Outcome::Done(f(value)),
                http_status: self.http_status,
                vendor_code: self.vendor_code,
                internal: self.internal,
                unsent: self.unsent,
            },
            _ => self.cast(),
        }
    }

    /// The same failure, carried over to a call that would have returned `U`.
    pub fn cast<U>(self) -> Call<U> {
        let outcome = match self.outcome {
            Outcome::Done(_) => Outcome::Retry {
                after: None,
                reason: "internal: a successful call cast as a failure".into(),
            },
            Outcome::Retry { after, reason } => Outcome::Retry { after, reason },
            Outcome::Throttled { after, reason } => Outcome::Throttled { after, reason },
            Outcome::Unconfirmed { reason } => Outcome::Unconfirmed { reason },
            Outcome::Reauth { reason } => Outcome::Reauth { reason },
            Outcome::Rejected { reason } => Outcome::Rejected { reason },
            Outcome::VendorDown { reason } => Outcome::VendorDown { reason },
        };
        Call {
            outcome,
            http_status: self.http_status,
            vendor_code: self.vendor_code,
            internal: self.internal,
            unsent: self.unsent,
        }
    }

    /// Whether it failed inside imgsyncd's own code, not at the vendor.
    pub fn is_internal(&self) -> bool {
        self.internal
    }

    /// Whether the call failed for want of an answer: a transport error, a timeout or a 5xx (not a
    /// rate limit, not a refusal). Several in a row mean the vendor is down.
    pub fn is_outage(&self) -> bool {
        !self.internal
            && matches!(self.outcome, Outcome::Retry { .. })
            && self.http_status.is_none_or(|status| status >= 500)
    }

    /// A transport failure: nothing was answered.
    pub fn network(error: &reqwest::Error) -> Self {
        let what = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "cannot connect"
        } else {
            "transport error"
        };
        Call::new(
            Outcome::Retry {
                after: None,
                reason: format!("{what}: {}", without_url(error)),
            },
            None,
            None,
        )
    }
}

/// reqwest's deepest cause, which unlike its own message carries no URL (a query string could
/// carry a signature).
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    last.unwrap_or_else(|| "request failed".to_string())
}
