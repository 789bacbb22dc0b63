//! The stored entities by uid, for the decision path.
//!
//! Cedar keeps entities in a map hashed with std's SipHash: about 480 instructions a
//! look-up, and a consultation looks up six or seven stored entities (its principal
//! and resource, then the partner, habilitation, mission, bulletin and convention its
//! conditions read). This index finds the same entities with foldhash, whose keys are
//! the loaded store's own (a request only looks keys up), as [`crate::fast_hash`]
//! explains. It holds each entity through the `Arc` Cedar's map holds, so it copies
//! none: the index costs a pointer and a control byte an entity.

use std::hash::BuildHasher;
use std::sync::Arc;

use cedar_policy::Entities;
use cedar_policy_core::ast::{Entity, EntityUID};
use cedar_policy_core::entities::{
    err::EntitiesError, Entities as CoreEntities, NoEntitiesSchema, TCComputation,
};
use cedar_policy_core::extensions::Extensions;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// The entities of one store, by uid. A clone shares every entity.
#[derive(Clone)]
pub struct StoredIndex {
    table: HashTable<Arc<Entity>>,
    hasher: RandomState,
}

impl StoredIndex {
    /// Indexes `entities`: returns them again, each entity now shared with the index,
    /// and the index. Their hierarchy is already closed, and is kept as it is.
    pub fn share(entities: Entities) -> Result<(Entities, Self), Box<EntitiesError>> {
        // Cedar's public store gives its core store up only by reference: a copy
        // of the map (its `Arc`s counted twice), and the original dropped, leaves
        // each entity with one owner again, taken out without a copy.
        let core: CoreEntities = entities.as_ref().clone();
        drop(entities);
        let shared: Vec<Arc<Entity>> = core.into_iter().map(Arc::new).collect();
        let hasher = RandomState::default();
        let mut table = HashTable::with_capacity(shared.len());
        for entity in &shared {
            let hash = hasher.hash_one(entity.uid());
            table.insert_unique(hash, Arc::clone(entity), |e| hasher.hash_one(e.uid()));
        }
        let core = CoreEntities::new()
            .add_entities(
                shared,
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map_err(Box::new)?;
        Ok((core.into(), Self { table, hasher }))
    }

    /// The stored entity `uid`, if there is one.
    pub fn get(&self, uid: &EntityUID) -> Option<&Entity> {
        let hash = self.hasher.hash_one(uid);
        self.table
            .find(hash, |entity| entity.uid() == uid)
            .map(AsRef::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde_json::json;

    use super::*;

    /// The index finds each entity of the store, the very entity the store holds
    /// (one allocation, shared), and no other; the store keeps its hierarchy.
    #[test]
    fn finds_each_stored_entity_shared_with_the_store_and_no_other() {
        let entities = Entities::from_json_value(
            json!([
                {"uid": {"type": "User", "id": "a"}, "attrs": {"n": 1},
                 "parents": [{"type": "Group", "id": "g"}]},
                {"uid": {"type": "Group", "id": "g"}, "attrs": {},
                 "parents": [{"type": "Group", "id": "top"}]},
                {"uid": {"type": "Group", "id": "top"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "a"}, "attrs": {}, "parents": []}
            ]),
            None,
        )
        .unwrap();
        let (entities, index) = StoredIndex::share(entities).unwrap();
        let core: &CoreEntities = entities.as_ref();
        assert_eq!(index.table.len(), 4);
        for entity in core.iter() {
            let found = index.get(entity.uid()).expect("every stored entity");
            assert!(std::ptr::eq(found, entity), "{} is shared", entity.uid());
        }
        for absent in [r#"User::"g""#, r#"Group::"b""#, r#"Other::"a""#] {
            assert!(index.get(&EntityUID::from_str(absent).unwrap()).is_none());
        }
        let user = index.get(&EntityUID::from_str(r#"User::"a""#).unwrap());
        let top = EntityUID::from_str(r#"Group::"top""#).unwrap();
        assert!(
            user.unwrap().is_descendant_of(&top),
            "the closed hierarchy is kept"
        );
    }
}
