//! Key locks for strict two-phase locking at a participant (rule 12).
//!
//! Shared locks for reads, exclusive for writes, held until the tid's
//! decision is applied. A conflicting request is refused with the tids
//! holding the lock; the participant decides by age whether the requester
//! waits or dies (wait-die, see `participant`).

use std::collections::BTreeMap;

use crate::Tid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Holders {
    Shared(Vec<Tid>),
    Exclusive(Tid),
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct LockTable {
    locks: BTreeMap<Vec<u8>, Holders>,
}

/// Outcome of a lock request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Acquired {
    /// Newly granted (or upgraded): the caller must release it later.
    Granted,
    /// `tid` already held a lock at least this strong.
    AlreadyHeld,
}

impl LockTable {
    /// Grants `mode` on `key` to `tid`, or returns the other tids holding it.
    pub fn acquire(&mut self, key: &[u8], tid: Tid, mode: Mode) -> Result<Acquired, Vec<Tid>> {
        let Some(holders) = self.locks.get_mut(key) else {
            let h = match mode {
                Mode::Shared => Holders::Shared(vec![tid]),
                Mode::Exclusive => Holders::Exclusive(tid),
            };
            self.locks.insert(key.to_vec(), h);
            return Ok(Acquired::Granted);
        };
        match (holders, mode) {
            (Holders::Exclusive(h), _) if *h == tid => Ok(Acquired::AlreadyHeld),
            (Holders::Exclusive(h), _) => Err(vec![*h]),
            (Holders::Shared(hs), Mode::Shared) => {
                if hs.contains(&tid) {
                    Ok(Acquired::AlreadyHeld)
                } else {
                    hs.push(tid);
                    Ok(Acquired::Granted)
                }
            }
            (h @ Holders::Shared(_), Mode::Exclusive) => {
                let Holders::Shared(hs) = &*h else { unreachable!() };
                let others: Vec<Tid> = hs.iter().copied().filter(|&o| o != tid).collect();
                if !others.is_empty() {
                    return Err(others);
                }
                // The sole reader upgrades; it already holds the key.
                *h = Holders::Exclusive(tid);
                Ok(Acquired::AlreadyHeld)
            }
        }
    }

    /// Releases whatever `tid` holds on `key`.
    pub fn release(&mut self, key: &[u8], tid: Tid) {
        let remove = match self.locks.get_mut(key) {
            Some(Holders::Exclusive(h)) => *h == tid,
            Some(Holders::Shared(hs)) => {
                hs.retain(|&h| h != tid);
                hs.is_empty()
            }
            None => false,
        };
        if remove {
            self.locks.remove(key);
        }
    }

    /// Number of locked keys (for listings and liveness checks).
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// The tids holding `key`, if any.
    pub fn holders(&self, key: &[u8]) -> Vec<Tid> {
        match self.locks.get(key) {
            Some(Holders::Exclusive(h)) => vec![*h],
            Some(Holders::Shared(hs)) => hs.clone(),
            None => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn tid(n: u128) -> Tid {
        Uuid::from_u128(n)
    }

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let mut t = LockTable::default();
        assert_eq!(t.acquire(b"k", tid(1), Mode::Shared), Ok(Acquired::Granted));
        assert_eq!(t.acquire(b"k", tid(2), Mode::Shared), Ok(Acquired::Granted));
        assert_eq!(t.acquire(b"k", tid(1), Mode::Exclusive), Err(vec![tid(2)]));
        assert_eq!(t.acquire(b"k", tid(3), Mode::Exclusive), Err(vec![tid(1), tid(2)]));
        t.release(b"k", tid(2));
        assert_eq!(t.acquire(b"k", tid(1), Mode::Exclusive), Ok(Acquired::AlreadyHeld));
        assert_eq!(t.acquire(b"k", tid(2), Mode::Shared), Err(vec![tid(1)]));
        t.release(b"k", tid(1));
        assert!(t.is_empty());
    }

    #[test]
    fn exclusive_holder_may_read_and_write_again() {
        let mut t = LockTable::default();
        assert_eq!(t.acquire(b"k", tid(1), Mode::Exclusive), Ok(Acquired::Granted));
        assert_eq!(t.acquire(b"k", tid(1), Mode::Shared), Ok(Acquired::AlreadyHeld));
        assert_eq!(t.acquire(b"k", tid(1), Mode::Exclusive), Ok(Acquired::AlreadyHeld));
        assert_eq!(t.holders(b"k"), vec![tid(1)]);
    }
}
