//! A fenced register: the protected resource of the fencing cases. It
//! remembers the highest fencing token it accepted and rejects writes that
//! carry a lower one.

use std::sync::Mutex;

/// A value guarded by fencing tokens.
#[derive(Debug, Default)]
pub struct FencedRegister {
    state: Mutex<(u64, Option<String>)>,
}

impl FencedRegister {
    /// An empty register that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` if `token` is at least the highest token seen;
    /// otherwise refuses and returns the highest token seen.
    pub fn write(&self, token: u64, value: impl Into<String>) -> Result<(), u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if token < state.0 {
            return Err(state.0);
        }
        *state = (token, Some(value.into()));
        Ok(())
    }

    /// The last accepted value.
    pub fn value(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_token_is_rejected_and_value_kept() {
        let register = FencedRegister::new();
        register.write(2, "new").unwrap();
        assert_eq!(register.write(1, "stale"), Err(2));
        assert_eq!(register.value().as_deref(), Some("new"));
    }
}
