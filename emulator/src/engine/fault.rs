//! Deliberate engine faults (`icelab serve --fault`), to prove that the
//! lab's on-disk verifier catches a wrong engine.
//!
//! Each fault is applied the same way to CRYPTO_OUT and CRYPTO_IN, so the
//! guest reads back what it wrote and cannot notice: only a check of the
//! image against the policy's definition can.

use std::fmt;

/// A way the engine can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every data unit uses the DUN one higher than the guest asked for.
    DunOffByOne,
    /// The key is used as K2 || K1 instead of K1 || K2.
    SwapKeyHalves,
    /// Data is stored and returned without encryption.
    Plaintext,
}

impl Fault {
    /// Every fault, for help texts and errors.
    pub const ALL: [Fault; 3] = [Fault::DunOffByOne, Fault::SwapKeyHalves, Fault::Plaintext];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DunOffByOne => "dun-off-by-one",
            Self::SwapKeyHalves => "swap-key-halves",
            Self::Plaintext => "plaintext",
        }
    }

    /// Looks a fault up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|fault| fault.name() == name)
    }
}

/// A `--fault` name that is none of [`Fault::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown --fault {0:?}; choose one of dun-off-by-one, swap-key-halves, plaintext")]
pub struct UnknownFault(pub String);

impl std::str::FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_name(name).ok_or_else(|| UnknownFault(name.to_owned()))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_every_fault_and_rejects_others_with_the_choices() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        let error = "dun-off-by-two".parse::<Fault>().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("\"dun-off-by-two\""), "{text}");
        for fault in Fault::ALL {
            assert!(text.contains(fault.name()), "{text}");
        }
    }
}
