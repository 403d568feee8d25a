//! The keys of both backends' device indexes: a (user name, sealed device
//! ID) pair as 128 bits of two keyed SipHash-1-3 sums, with keys drawn at
//! start, held in a set that does not hash them again. Nothing of the name
//! or the ID is held in clear; two different pairs share a key with a chance
//! of about n / 2^128.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher, RandomState};

/// The hash keys of one index.
pub(crate) struct PairKeys(RandomState, RandomState);

impl PairKeys {
    pub(crate) fn new() -> PairKeys {
        PairKeys(RandomState::new(), RandomState::new())
    }

    pub(crate) fn key(&self, name: &str, sealed_id: &[u8]) -> u128 {
        let a = self.0.hash_one((name, sealed_id));
        let b = self.1.hash_one((name, sealed_id));
        (u128::from(a) << 64) | u128::from(b)
    }
}

/// Identity hashing for keys that are already keyed hash sums (64 or 128
/// bits; of 128, the low 64).
#[derive(Default, Clone, Copy)]
pub(crate) struct PreHashed;

pub(crate) struct PreHashedHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;
    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

impl Hasher for PreHashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// A set of pair keys.
pub(crate) type KeySet = HashSet<u128, PreHashed>;
