//! JSON values read with every object's keys checked unique.
//!
//! serde_json keeps the last of repeated keys; a proxy or logger in front of the
//! sidecar may read the first. `{"principal": A, "principal": B}` or a context with
//! `"authentication"` twice would then be checked as one thing and decided as
//! another, so the wire contract refuses a repeated key at any depth, as the
//! request's own fields already are (serde's derive refuses those).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// A JSON value whose objects had no repeated key.
pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            // Refused as soon as the key is read, so that the error's position is the
            // repeated key's, not the end of its value.
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    let Strict(value) = access.next_value()?;
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key();
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

/// A field holding any JSON value, read strictly.
pub fn value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Strict::deserialize(deserializer).map(|s| s.0)
}

/// An optional field holding a JSON object (`null` or absent: `None`), read strictly.
pub fn object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Map<String, Value>>, D::Error> {
    match Option::<Strict>::deserialize(deserializer)? {
        None | Some(Strict(Value::Null)) => Ok(None),
        Some(Strict(Value::Object(map))) => Ok(Some(map)),
        Some(Strict(other)) => Err(de::Error::invalid_type(
            unexpected(&other),
            &"a JSON object",
        )),
    }
}

/// An optional field holding a JSON array (`null` or absent: `None`), read strictly.
pub fn array<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<Value>>, D::Error> {
    match Option::<Strict>::deserialize(deserializer)? {
        None | Some(Strict(Value::Null)) => Ok(None),
        Some(Strict(Value::Array(items))) => Ok(Some(items)),
        Some(Strict(other)) => Err(de::Error::invalid_type(unexpected(&other), &"a JSON array")),
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

/// A `T` read from a JSON object only. serde's derived structs also read a JSON
/// array of their fields in order (`["User::\"u\"", …]`), which no backend means
/// and a proxy in front of the sidecar would not read as a request.
pub fn struct_from_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Value, serde_json::Error> {
        serde_json::from_str::<Strict>(text).map(|s| s.0)
    }

    #[test]
    fn reads_what_serde_json_reads_when_no_key_repeats() {
        let text = r#"{"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": {"d": []}}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn a_repeated_key_at_any_depth_is_refused() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": {"b": 1, "b": 1}}"#,
            r#"[{"x": [{"k": 1, "k": 2}]}]"#,
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("duplicate key"), "{text}: {err}");
        }
    }

    #[test]
    fn a_repeated_key_is_refused_where_it_is_written() {
        let text = "{\n  \"a\": 1,\n  \"a\": {\"long\": [\n1, 2, 3]}\n}";
        let err = parse(text).unwrap_err();
        // Line 3, just past the repeated key, not line 4 where its value ends.
        assert_eq!((err.line(), err.column()), (3, 5), "{err}");
    }
}
