//! What a chat client's receiving side printed, for tests that run it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A writer that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Screen(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Screen {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Screen {
    /// Every line shown so far.
    pub fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// The message lines shown so far (notices, which start with `*`, left out).
    pub fn messages(&self) -> Vec<String> {
        let mut lines = self.lines();
        lines.retain(|l| !l.starts_with('*'));
        lines
    }

    /// Waits until the screen shows `line`; panics after 20 s.
    pub async fn shows(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.lines().iter().any(|l| l == line) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never showed {line:?}: {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until as many messages as `expected` are shown, then checks
    /// they are those, with nothing repeated right behind.
    pub async fn shows_messages(&self, expected: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.messages().len() < expected.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.messages(), expected);
    }
}
