//! A console output queue for one producer and one consumer, without a
//! lock: a critical VM's vCPU puts its console lines here instead of
//! writing the physical UART, so it never waits for the console (the shell
//! may be printing a whole table, and on a board at 115200 baud one line
//! takes about 9 ms). Another pCPU takes the bytes out and prints them.
//!
//! One producer at a time (the caller serializes them: the VM's UART
//! lock) and one consumer at a time (the console lock). Bytes that do not
//! fit are counted, not waited for, and the consumer reports the count.

use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Bytes the queue holds; a power of two.
pub const CAPACITY: usize = 4096;

pub struct OutQueue {
    bytes: [AtomicU8; CAPACITY],
    /// Total bytes ever put in (the producer's).
    tail: AtomicUsize,
    /// Total bytes ever taken out (the consumer's).
    head: AtomicUsize,
    /// Bytes refused because the queue was full, not yet reported.
    dropped: AtomicU64,
}

impl Default for OutQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl OutQueue {
    pub const fn new() -> Self {
        Self {
            bytes: [const { AtomicU8::new(0) }; CAPACITY],
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Producer: queues all of `bytes` or, if they do not fit, none (a
    /// line is never cut) and counts them as dropped. Returns whether
    /// they were queued.
    pub fn put(&self, bytes: &[u8]) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let free = CAPACITY - tail.wrapping_sub(head);
        if bytes.len() > free {
            self.dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return false;
        }
        for (i, &b) in bytes.iter().enumerate() {
            self.bytes[tail.wrapping_add(i) % CAPACITY].store(b, Ordering::Relaxed);
        }
        self.tail
            .store(tail.wrapping_add(bytes.len()), Ordering::Release);
        true
    }

    /// Whether bytes wait to be taken out.
    pub fn is_empty(&self) -> bool {
        self.tail.load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }

    /// Consumer: takes up to `out.len()` bytes, oldest first; returns how
    /// many.
    pub fn take(&self, out: &mut [u8]) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head).min(out.len());
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            *slot = self.bytes[head.wrapping_add(i) % CAPACITY].load(Ordering::Relaxed);
        }
        self.head.store(head.wrapping_add(n), Ordering::Release);
        n
    }

    /// Whether bytes were dropped since the last [`Self::take_dropped`].
    pub fn has_dropped(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) != 0
    }

    /// Consumer: the bytes dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::vec;
    use std::vec::Vec;

    fn drain(q: &OutQueue) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = q.take(&mut buf);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let q = OutQueue::new();
        let mut want = Vec::new();
        for round in 0..50u32 {
            let line = format!("line {round} {}\n", "x".repeat(round as usize * 7));
            assert!(q.put(line.as_bytes()));
            want.extend_from_slice(line.as_bytes());
            if round % 3 == 0 {
                assert_eq!(drain(&q), want);
                want.clear();
            }
        }
        assert_eq!(drain(&q), want);
        assert!(q.is_empty());
        assert_eq!(q.take_dropped(), 0);
    }

    #[test]
    fn a_line_that_does_not_fit_is_dropped_whole_and_counted() {
        let q = OutQueue::new();
        let big = vec![b'a'; CAPACITY - 10];
        assert!(q.put(&big));
        assert!(!q.put(b"eleven byte"));
        assert!(q.put(b"ten bytes\n"));
        assert!(q.has_dropped());
        assert_eq!(q.take_dropped(), 11);
        assert_eq!(q.take_dropped(), 0);
        assert!(!q.has_dropped());
        let out = drain(&q);
        assert_eq!(out.len(), CAPACITY);
        assert!(out[..CAPACITY - 10].iter().all(|&b| b == b'a'));
        assert!(out.ends_with(b"ten bytes\n"));
        // Room again once taken.
        assert!(q.put(b"eleven byte"));
    }

    #[test]
    fn a_consumer_on_another_thread_sees_every_byte_once() {
        let q = std::sync::Arc::new(OutQueue::new());
        let p = q.clone();
        let producer = std::thread::spawn(move || {
            let mut sent = Vec::new();
            for i in 0..20_000u32 {
                let line = format!("{i}\n");
                while !p.put(line.as_bytes()) {
                    std::thread::yield_now();
                }
                sent.extend_from_slice(line.as_bytes());
            }
            sent
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 333];
        while !producer.is_finished() || !q.is_empty() {
            let n = q.take(&mut buf);
            got.extend_from_slice(&buf[..n]);
        }
        let sent = producer.join().unwrap();
        assert_eq!(got, sent);
    }
}
