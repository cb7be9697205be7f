//! Dragonfly's host types: what the bare number in `Host.type` means.
//! The GraphQL enum, `dfgraph status` and the manager's REST names all
//! read it through here.

/// A host's role in the P2P network (`Host.type` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostType {
    Normal,
    SuperSeed,
    StrongSeed,
    WeakSeed,
    /// A type this gateway does not know (a newer scheduler).
    Unknown,
}

impl HostType {
    pub fn from_wire(t: u32) -> Self {
        match t {
            0 => Self::Normal,
            1 => Self::SuperSeed,
            2 => Self::StrongSeed,
            3 => Self::WeakSeed,
            _ => Self::Unknown,
        }
    }

    /// The name GraphQL and `dfgraph status` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::SuperSeed => "SUPER_SEED",
            Self::StrongSeed => "STRONG_SEED",
            Self::WeakSeed => "WEAK_SEED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HostType;

    #[test]
    fn wire_numbers_are_dragonflys() {
        let named: Vec<_> = (0..5).map(|t| HostType::from_wire(t).as_str()).collect();
        assert_eq!(
            named,
            [
                "NORMAL",
                "SUPER_SEED",
                "STRONG_SEED",
                "WEAK_SEED",
                "UNKNOWN"
            ]
        );
    }
}
