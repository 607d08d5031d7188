//! Reverse DNS for destination addresses, off the UI task.
//!
//! [`HostNames`] is plain state inside the model: a bounded cache, the addresses waiting to be
//! asked for, and a timeout measured with the snapshots' injected clock. [`Resolver`] is the I/O
//! side: a fixed number of worker threads behind a bounded queue, each calling the system
//! resolver (`getnameinfo` through the `dns-lookup` crate), which only resolves addresses.
//! A resolver that is slow or hangs occupies its worker, never the screen: requests that find
//! the queue full are dropped and asked again later, and a name that takes longer than
//! [`LOOKUP_TIMEOUT_NS`] is shown as missing until its late answer arrives.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{mpsc, Arc, Mutex},
    thread,
};

/// A lookup without an answer after this long is given up on (the screen shows the address).
pub const LOOKUP_TIMEOUT_NS: u64 = 3_000_000_000;
/// An address without a name is asked about again after this long.
const RETRY_AFTER_NS: u64 = 300_000_000_000;
/// Most addresses remembered; beyond this the cache starts over.
const CACHE_CAPACITY: usize = 8192;
/// Worker threads, and requests that may wait for one.
pub const WORKERS: usize = 2;
const QUEUE_LEN: usize = 256;

/// What is known about one address's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostName {
    /// Asked for at this time; no answer yet.
    Pending {
        since_ns: u64,
    },
    Found(String),
    /// No name (or no answer in time), as of this time.
    Missing {
        since_ns: u64,
    },
}

/// What a worker reports about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Name(String),
    NoName,
    /// The request queue was full: nobody asked yet.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addr: IpAddr,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNames {
    enabled: bool,
    names: HashMap<IpAddr, HostName>,
    requests: Vec<IpAddr>,
}

impl HostNames {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.requests.clear();
        }
    }

    /// The name to show for `addr`, when names are on and one is known.
    pub fn name(&self, addr: IpAddr) -> Option<&str> {
        match self.names.get(&addr) {
            Some(HostName::Found(name)) if self.enabled => Some(name),
            _ => None,
        }
    }

    pub fn status(&self, addr: IpAddr) -> Option<&HostName> {
        self.names.get(&addr)
    }

    /// Notes that `addrs` are on screen at `now_ns`: unknown ones (and old misses) are queued
    /// for lookup, and lookups past their timeout are given up.
    pub fn observe(&mut self, addrs: impl Iterator<Item = IpAddr>, now_ns: u64) {
        for name in self.names.values_mut() {
            if let HostName::Pending { since_ns } = *name {
                if now_ns.saturating_sub(since_ns) >= LOOKUP_TIMEOUT_NS {
                    *name = HostName::Missing { since_ns: now_ns };
                }
            }
        }
        if !self.enabled {
            return;
        }
        for addr in addrs {
            let wanted = match self.names.get(&addr) {
                None => true,
                Some(HostName::Missing { since_ns }) => {
                    now_ns.saturating_sub(*since_ns) >= RETRY_AFTER_NS
                }
                Some(_) => false,
            };
            if wanted {
                if self.names.len() >= CACHE_CAPACITY {
                    self.names
                        .retain(|_, name| matches!(name, HostName::Pending { .. }));
                }
                self.names
                    .insert(addr, HostName::Pending { since_ns: now_ns });
                self.requests.push(addr);
            }
        }
    }

    /// Addresses to hand to the resolver (each once).
    pub fn take_requests(&mut self) -> Vec<IpAddr> {
        std::mem::take(&mut self.requests)
    }

    pub fn answer(&mut self, answer: Answer, now_ns: u64) {
        match answer.outcome {
            // Never asked: forget it, so the next snapshot asks again.
            Outcome::Busy => {
                if matches!(self.names.get(&answer.addr), Some(HostName::Pending { .. })) {
                    self.names.remove(&answer.addr);
                }
            }
            Outcome::Name(name) => {
                self.names
                    .insert(answer.addr, HostName::Found(clean(&name)));
            }
            Outcome::NoName => {
                self.names
                    .insert(answer.addr, HostName::Missing { since_ns: now_ns });
            }
        }
    }
}

/// A name as the screen may show it: no control characters, bounded length.
fn clean(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(253).collect()
}

/// How one address is looked up (the system resolver, or a fake in tests).
pub type Lookup = fn(IpAddr) -> Option<String>;

/// The system resolver: PTR lookup through `getnameinfo(NI_NAMEREQD)`.
pub fn system_lookup(addr: IpAddr) -> Option<String> {
    dns_lookup::lookup_addr(&addr).ok()
}

/// Worker threads answering lookups on a channel. Dropping it lets idle workers end; a worker
/// stuck in the system resolver ends when its call returns.
pub struct Resolver {
    queue: mpsc::SyncSender<IpAddr>,
}

impl Resolver {
    /// Starts `workers` threads; each answer is passed to `deliver` (e.g. a channel's send).
    pub fn start(
        workers: usize,
        lookup: Lookup,
        deliver: impl Fn(Answer) -> bool + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (queue, requests) = mpsc::sync_channel::<IpAddr>(QUEUE_LEN);
        let requests = Arc::new(Mutex::new(requests));
        let deliver = Arc::new(deliver);
        for n in 0..workers.max(1) {
            let requests = Arc::clone(&requests);
            let deliver = Arc::clone(&deliver);
            thread::Builder::new()
                .name(format!("sockwatch-dns-{n}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next request.
                    let next = match requests.lock() {
                        Ok(requests) => requests.recv(),
                        Err(_) => return,
                    };
                    let Ok(addr) = next else { return };
                    let outcome = lookup(addr).map_or(Outcome::NoName, Outcome::Name);
                    if !deliver(Answer { addr, outcome }) {
                        return;
                    }
                })?;
        }
        Ok(Self { queue })
    }

    /// Queues a lookup without waiting; `Busy` when the queue is full.
    pub fn request(&self, addr: IpAddr) -> Result<(), Answer> {
        self.queue.try_send(addr).map_err(|_| Answer {
            addr,
            outcome: Outcome::Busy,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use std::net::Ipv4Addr;

    const SEC: u64 = 1_000_000_000;
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn each_address_is_asked_once_and_cached() {
        let mut names = HostNames::new(true);
        names.observe([A, A, B].into_iter(), SEC);
        assert_eq!(names.take_requests(), vec![A, B]);
        names.observe([A, B].into_iter(), 2 * SEC);
        assert!(names.take_requests().is_empty());
        names.answer(
            Answer {
                addr: A,
                outcome: Outcome::Name("db.example\n".into()),
            },
            2 * SEC,
        );
        assert_eq!(names.name(A), Some("db.example"));
        assert_eq!(names.name(B), None);
    }

    #[test]
    fn slow_lookups_time_out_and_late_answers_still_count() {
        let mut names = HostNames::new(true);
        names.observe([A].into_iter(), SEC);
        names.take_requests();
        names.observe([A].into_iter(), SEC + LOOKUP_TIMEOUT_NS);
        assert!(matches!(names.status(A), Some(HostName::Missing { .. })));
        assert!(names.take_requests().is_empty(), "not asked again at once");
        names.answer(
            Answer {
                addr: A,
                outcome: Outcome::Name("late.example".into()),
            },
            10 * SEC,
        );
        assert_eq!(names.name(A), Some("late.example"));
    }

    #[test]
    fn busy_requests_are_asked_again_and_off_means_no_requests() {
        let mut names = HostNames::new(true);
        names.observe([A].into_iter(), SEC);
        let [addr] = names.take_requests()[..] else {
            panic!("one request")
        };
        names.answer(
            Answer {
                addr,
                outcome: Outcome::Busy,
            },
            SEC,
        );
        names.observe([A].into_iter(), 2 * SEC);
        assert_eq!(names.take_requests(), vec![A]);

        let mut off = HostNames::new(false);
        off.observe([A].into_iter(), SEC);
        assert!(off.take_requests().is_empty());
    }

    #[test]
    fn a_hanging_resolver_does_not_block_requests() {
        fn hang(_: IpAddr) -> Option<String> {
            thread::sleep(Duration::from_secs(3600));
            None
        }
        let (tx, rx) = mpsc::channel();
        let resolver = Resolver::start(1, hang, move |a| tx.send(a).is_ok()).expect("started");
        // The worker takes one and hangs; the queue fills; then requests fail without waiting.
        let results: Vec<_> = (0..=QUEUE_LEN + 1)
            .map(|i| resolver.request(IpAddr::V4(Ipv4Addr::from(i as u32))))
            .collect();
        assert!(results.iter().any(Result::is_err), "queue is bounded");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn workers_answer() {
        fn fake(addr: IpAddr) -> Option<String> {
            (addr == A).then(|| "a.example".to_owned())
        }
        let (tx, rx) = mpsc::channel();
        let resolver = Resolver::start(2, fake, move |a| tx.send(a).is_ok()).expect("started");
        resolver.request(A).expect("queued");
        resolver.request(B).expect("queued");
        let mut answers: Vec<_> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("answer"))
            .collect();
        answers.sort_by_key(|a| a.addr);
        assert_eq!(answers[0].outcome, Outcome::Name("a.example".into()));
        assert_eq!(answers[1].outcome, Outcome::NoName);
    }
}
