//! The memory tier: refill units of any blob, bounded in bytes, evicted by quick_cache's
//! CLOCK-Pro-like policy (recency and frequency), so a one-off scan does not flush hot data.

use bytes::Bytes;

use super::key::{BlobId, UnitKey};

#[derive(Clone, Copy, Default)]
struct ByteWeighter;

impl quick_cache::Weighter<UnitKey, Bytes> for ByteWeighter {
    fn weight(&self, _key: &UnitKey, val: &Bytes) -> u64 {
        // An empty unit would weigh 0 and never be evicted; count it as one byte.
        (val.len() as u64).max(1)
    }
}

/// Refill units held in memory, at most `capacity` bytes in all.
pub struct MemoryTier {
    cache: Option<quick_cache::sync::Cache<UnitKey, Bytes, ByteWeighter>>,
}

impl MemoryTier {
    /// A tier of at most `capacity` bytes; 0 disables it. `unit_hint` (the refill size) only
    /// sizes the internal table.
    pub fn new(capacity: u64, unit_hint: u64) -> Self {
        if capacity == 0 {
            return Self { cache: None };
        }
        let items = usize::try_from(capacity / unit_hint.max(4096))
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 20);
        Self {
            cache: Some(quick_cache::sync::Cache::with_weighter(
                items,
                capacity,
                ByteWeighter,
            )),
        }
    }

    /// The unit's bytes, if held.
    pub fn get(&self, key: &UnitKey) -> Option<Bytes> {
        self.cache.as_ref()?.get(key)
    }

    /// Whether the unit is held (without counting as a use of it).
    pub fn contains(&self, key: &UnitKey) -> bool {
        self.cache.as_ref().is_some_and(|c| c.contains_key(key))
    }

    /// Holds `data` for `key`, evicting others as needed.
    pub fn insert(&self, key: UnitKey, data: Bytes) {
        if let Some(c) = &self.cache {
            c.insert(key, data);
        }
    }

    /// Drops the unit (e.g. after a CRC failure above us).
    pub fn remove(&self, key: &UnitKey) {
        if let Some(c) = &self.cache {
            c.remove(key);
        }
    }

    /// Bytes held per blob.
    pub fn blobs(&self) -> std::collections::BTreeMap<BlobId, u64> {
        let mut held = std::collections::BTreeMap::new();
        if let Some(cache) = &self.cache {
            for (key, data) in cache.iter() {
                *held.entry(key.blob).or_default() += data.len() as u64;
            }
        }
        held
    }

    /// Drops every unit of `blob`.
    pub fn remove_blob(&self, blob: &BlobId) {
        if let Some(cache) = &self.cache {
            cache.retain(|key, _| key.blob != *blob);
        }
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::BlobId;

    fn key(i: u64) -> UnitKey {
        UnitKey {
            blob: BlobId::from_digest(
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
            ),
            index: i,
        }
    }

    #[test]
    fn bounded_in_bytes() {
        let tier = MemoryTier::new(64 * 1024, 4096);
        for i in 0..100 {
            tier.insert(key(i), Bytes::from(vec![i as u8; 4096]));
        }
        assert!(tier.used_bytes() <= 64 * 1024, "{}", tier.used_bytes());
        let held = (0..100).filter(|i| tier.get(&key(*i)).is_some()).count();
        assert!(held > 0 && held <= 16, "{held}");
        for i in 0..100 {
            if let Some(b) = tier.get(&key(i)) {
                assert_eq!(b, vec![i as u8; 4096]);
            }
        }
    }

    #[test]
    fn remove_and_disabled() {
        let tier = MemoryTier::new(1 << 20, 4096);
        tier.insert(key(1), Bytes::from_static(b"abc"));
        assert_eq!(tier.get(&key(1)).unwrap(), "abc");
        tier.remove(&key(1));
        assert!(tier.get(&key(1)).is_none());
        let off = MemoryTier::new(0, 4096);
        off.insert(key(1), Bytes::from_static(b"abc"));
        assert!(off.get(&key(1)).is_none());
    }
}
