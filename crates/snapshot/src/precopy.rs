//! Live migration's pre-copy policy (docs/snapshot.md, "Auto-converge"):
//! after each round, whether the VM runs on for another one, is slowed
//! down first, or is paused for the last.

/// With at most this many dirty pages left, the VM is paused.
pub const FEW_PAGES: u64 = 8;
/// With at most this many left, another round is worth it only while each
/// round halves what is left; else the VM is paused.
pub const FINAL_PAGES: u64 = 64;
/// The VM is paused after this many rounds whatever is left.
pub const MAX_ROUNDS: usize = 16;
/// The first cap (percent of a pCPU) a VM that out-dirties the link gets;
/// each further such round halves it, down to [`THROTTLE_MIN`].
pub const THROTTLE_FIRST: u8 = 50;
pub const THROTTLE_MIN: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another round while the VM runs as it does.
    Round,
    /// Another round with the VM's vCPUs capped at this percentage.
    SlowDown(u8),
    /// Pause the VM and send what is left.
    Last,
}

/// Round number `rounds` (1 is the first, which sent all of RAM) sent
/// `sent` pages and left `dirty`. `throttle` is the cap the VM runs at
/// now (`None`: as configured); `can_slow` says whether it can be slowed
/// down at all (its vCPUs are in a pool).
pub fn next(rounds: usize, sent: u64, dirty: u64, throttle: Option<u8>, can_slow: bool) -> Next {
    if dirty <= FEW_PAGES || rounds + 1 >= MAX_ROUNDS {
        return Next::Last;
    }
    let halved = u128::from(dirty) * 2 <= u128::from(sent);
    if dirty <= FINAL_PAGES {
        // A round of a few dozen pages takes tens of ms on the link: worth
        // it while it shrinks the pause's pages, not after.
        return if halved { Next::Round } else { Next::Last };
    }
    if rounds < 2 || halved {
        return Next::Round;
    }
    match throttle {
        _ if !can_slow => {}
        None => return Next::SlowDown(THROTTLE_FIRST),
        Some(c) if c > THROTTLE_MIN => return Next::SlowDown((c / 2).max(THROTTLE_MIN)),
        Some(_) => {}
    }
    // As slow as it gets: on while rounds shrink at all.
    if dirty >= sent {
        Next::Last
    } else {
        Next::Round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the policy over a guest that dirties `rate(cap)` pages in the
    /// time a round of `n` pages takes (`n * per_page`), from a first
    /// round of `first` pages; returns (rounds, pages at the pause, cap).
    fn simulate(first: u64, rate: impl Fn(u8) -> f64, can_slow: bool) -> (usize, u64, Option<u8>) {
        let (mut rounds, mut sent, mut throttle) = (1, first, None);
        loop {
            let cap = throttle.unwrap_or(100);
            let dirty = ((sent as f64) * rate(cap)).round() as u64;
            match next(rounds, sent, dirty, throttle, can_slow) {
                Next::Last => return (rounds, dirty, throttle),
                Next::Round => {}
                Next::SlowDown(c) => throttle = Some(c),
            }
            rounds += 1;
            sent = dirty;
        }
    }

    #[test]
    fn an_idle_vm_goes_on_while_its_few_pages_halve() {
        // Round 1 sent 14,598 pages; 56 left, then the guest dirties ~5
        // pages while a round of 56 goes.
        assert_eq!(next(1, 14_598, 56, None, true), Next::Round);
        assert_eq!(next(2, 56, 5, None, true), Next::Last);
        assert_eq!(next(2, 56, 20, None, true), Next::Round);
        assert_eq!(next(3, 20, 12, None, true), Next::Last);
    }

    #[test]
    fn a_vm_that_out_dirties_the_link_is_slowed_down_step_by_step() {
        // Dirty pages in a round's time, proportional to the cap: at full
        // speed 1.2 times what the round sent.
        let (rounds, left, cap) = simulate(30_000, |cap| 1.2 * f64::from(cap) / 100.0, true);
        assert!(left <= FINAL_PAGES, "{left} pages at the pause");
        assert!(cap.is_some_and(|c| c < 50), "{cap:?}");
        assert!(rounds < MAX_ROUNDS, "{rounds} rounds");
    }

    #[test]
    fn caps_halve_down_to_the_floor_and_no_further() {
        assert_eq!(next(2, 1000, 900, None, true), Next::SlowDown(50));
        assert_eq!(next(3, 900, 800, Some(50), true), Next::SlowDown(25));
        assert_eq!(next(4, 800, 700, Some(3), true), Next::SlowDown(1));
        // At the floor: on while rounds shrink, paused once they do not.
        assert_eq!(next(5, 700, 600, Some(1), true), Next::Round);
        assert_eq!(next(6, 600, 600, Some(1), true), Next::Last);
    }

    #[test]
    fn a_vm_that_cannot_be_slowed_is_paused_once_rounds_stop_shrinking() {
        assert_eq!(next(2, 1000, 900, None, false), Next::Round);
        assert_eq!(next(3, 900, 950, None, false), Next::Last);
        let (_, left, cap) = simulate(30_000, |_| 1.2, false);
        assert_eq!(cap, None);
        assert!(left > FINAL_PAGES);
    }

    #[test]
    fn the_first_round_is_always_followed_and_the_last_is_bounded() {
        // However much the first round left (everything was sent once).
        assert_eq!(next(1, 100, 100, None, true), Next::Round);
        assert_eq!(next(MAX_ROUNDS - 1, 1000, 10, None, true), Next::Last);
        assert_eq!(next(3, 0, 0, None, true), Next::Last);
        assert_eq!(next(3, u64::MAX, u64::MAX, Some(1), true), Next::Last);
    }
}
