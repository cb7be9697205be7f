//! The one error a configuration section reports: which setting is wrong
//! and why. A leaf: every module that owns a config section validates it
//! into this type without knowing where the section is mounted; `config`
//! names the section (see [`Invalid::within`]) when it assembles them.
//! Depends on nothing.

/// A setting whose value breaks a rule serde cannot check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct Invalid {
    /// The setting's dotted name (`task.fresh` inside its section,
    /// `cache.task.fresh` once [`Invalid::within`] named the section).
    pub setting: String,
    /// What is wrong with it, for the operator.
    pub message: String,
}

impl Invalid {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The same error, its setting named from the section `section`
    /// (`task.fresh` within `cache` is `cache.task.fresh`). An empty
    /// setting names the whole section.
    pub fn within(self, section: &str) -> Invalid {
        let setting = if self.setting.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{}", self.setting)
        };
        Invalid { setting, ..self }
    }
}

/// An error unless `value` is above zero (durations, counts).
pub fn positive<T: Default + PartialOrd>(setting: &str, value: T) -> Result<(), Invalid> {
    if value > T::default() {
        Ok(())
    } else {
        Err(Invalid::new(setting, "must be greater than zero"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_names_the_section() {
        let e = Invalid::new("task.fresh", "must be greater than zero").within("cache");
        assert_eq!(e.setting, "cache.task.fresh");
        assert_eq!(
            e.to_string(),
            "invalid setting `cache.task.fresh`: must be greater than zero"
        );
        assert_eq!(Invalid::new("", "x").within("tls").setting, "tls");
    }

    #[test]
    fn positive_refuses_zero() {
        assert!(positive("n", 1usize).is_ok());
        assert!(positive("n", 0usize).is_err());
        assert!(positive("d", std::time::Duration::ZERO).is_err());
    }
}
