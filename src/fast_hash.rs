//! Hash maps for the decision path: the snapshot's tables by action, entity type
//! and scope. Their keys come from the schema and the policies, loaded and trusted;
//! a request only looks keys up, so a fast hasher (foldhash, seeded per process)
//! replaces std's SipHash, which cost a few hundred instructions per uid hashed.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
