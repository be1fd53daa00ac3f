//! How fast one session may send: a burst at once, then a steady rate.
//!
//! A send past the allowance is not refused: the session waits its turn
//! (the gateway stops reading its input meanwhile), so a client that bursts
//! now and then loses nothing. One that keeps pushing, send after send with
//! never a pause long enough to earn a turn back, is flooding: after as
//! many waiting sends again as its burst, it is cut off.
//!
//! The arithmetic is the generic cell rate algorithm: `due` is when the
//! session's sends so far would have finished at the steady rate; a send is
//! free while `due` runs at most a burst's worth ahead of now.

use std::time::{Duration, Instant};

use super::SendRate;

/// What a session must do before its next send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Send now.
    Go,
    /// Wait this long first.
    Wait(Duration),
    /// Far past the allowance: end the session; it may send again after
    /// this long.
    Flood { retry_after: Duration },
}

/// One session's allowance.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    burst: Duration,
    /// Consecutive sends made to wait allowed before the session floods.
    patience: u32,
    due: Option<Instant>,
    waited: u32,
}

impl Pacer {
    pub fn new(rate: SendRate) -> Pacer {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        Pacer {
            interval,
            burst: interval * rate.burst,
            patience: rate.burst,
            due: None,
            waited: 0,
        }
    }

    /// Whether the session has earned its whole burst back by `now`, so
    /// forgetting this pacer changes nothing.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.due.is_none_or(|due| due <= now)
    }

    /// Takes one send's place in the schedule.
    pub fn admit(&mut self, now: Instant) -> Pace {
        let due = self.due.map_or(now, |due| due.max(now)) + self.interval;
        let ahead = due - now;
        if ahead <= self.burst {
            self.due = Some(due);
            self.waited = 0;
            return Pace::Go;
        }
        let wait = ahead - self.burst;
        crate::metrics::rate_limited();
        if self.waited >= self.patience {
            return Pace::Flood { retry_after: wait };
        }
        self.due = Some(due);
        self.waited += 1;
        Pace::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(per_second: f64, burst: u32) -> Pacer {
        Pacer::new(SendRate { per_second, burst })
    }

    #[test]
    fn a_burst_goes_at_once_then_sends_wait_their_turn() {
        let mut p = pacer(10.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(p.admit(t), Pace::Go);
        }
        assert_eq!(p.admit(t), Pace::Wait(Duration::from_millis(100)));
        // Having waited its turn, the next send waits one interval more.
        let t = t + Duration::from_millis(100);
        assert_eq!(p.admit(t), Pace::Wait(Duration::from_millis(100)));
    }

    #[test]
    fn pushing_on_past_the_burst_floods_and_a_pause_forgives() {
        let mut p = pacer(10.0, 2);
        let mut t = Instant::now();
        assert_eq!(p.admit(t), Pace::Go);
        assert_eq!(p.admit(t), Pace::Go);
        for _ in 0..2 {
            let Pace::Wait(wait) = p.admit(t) else {
                panic!("expected a wait")
            };
            t += wait;
        }
        assert!(matches!(p.admit(t), Pace::Flood { .. }));

        let mut p = pacer(10.0, 2);
        let t = Instant::now();
        p.admit(t);
        p.admit(t);
        assert!(matches!(p.admit(t), Pace::Wait(_)));
        // A second's pause earns the whole burst back.
        let t = t + Duration::from_secs(1);
        assert_eq!(p.admit(t), Pace::Go);
        assert_eq!(p.admit(t), Pace::Go);
    }

    #[test]
    fn sending_at_the_rate_never_waits() {
        let mut p = pacer(50.0, 1);
        let mut t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(p.admit(t), Pace::Go);
            t += Duration::from_millis(20);
        }
    }
}
