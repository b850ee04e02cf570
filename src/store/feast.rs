//! Feast's Redis online-store layout, byte for byte, so that what Feast materializes
//! podscore reads as it is, and what `podscore features load` writes Feast would have
//! written (facts from Feast's code, entity key serialization version 3):
//! - the key of an entity is its serialized entity key followed by the project name;
//! - one hash per entity key, shared by every feature view on that entity;
//! - the field of a feature is murmur3 (x86, 32 bits, seed 0) of `"{view}:{feature}"`, as
//!   4 bytes little-endian; its value a serialized `feast.types.Value`;
//! - one more field per view, `_ts:{view}`, holds a `google.protobuf.Timestamp`.
//!
//! Also the conversions between `Value`s and the types of record fields. This module knows
//! bytes only; it knows nothing of Redis connections, records, HTTP or the model.

use std::io::Cursor;

use prost::Message;

/// Value type tags of entity key values in Feast's serialization (`ValueType.Enum`).
const KEY_TYPE_BYTES: u32 = 1;
const KEY_TYPE_STRING: u32 = 2;
const KEY_TYPE_INT32: u32 = 3;
const KEY_TYPE_INT64: u32 = 4;
/// Prefix of the per-view timestamp field.
const TIMESTAMP_FIELD_PREFIX: &str = "_ts:";

/// One join key's value, in the types Feast serializes in keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityValue<'a> {
    Bytes(&'a [u8]),
    String(&'a str),
    Int32(i32),
    Int64(i64),
}

/// The Redis key of an entity: its entity key in serialization v3, then `project`. v3
/// sorts join keys by name; writes the count (u32 LE); each name as type `2` (string),
/// byte length and UTF-8; then each value as its type, byte length and bytes (integers
/// little-endian).
pub fn redis_key(project: &str, join_keys: &[(&str, EntityValue<'_>)]) -> Vec<u8> {
    let mut sorted: Vec<&(&str, EntityValue<'_>)> = join_keys.iter().collect();
    sorted.sort_by(|left, right| left.0.cmp(right.0));
    let mut key = Vec::with_capacity(64 + project.len());
    let put_u32 = |key: &mut Vec<u8>, value: u32| key.extend_from_slice(&value.to_le_bytes());
    put_u32(&mut key, length(sorted.len()));
    for (name, _) in &sorted {
        put_u32(&mut key, KEY_TYPE_STRING);
        put_u32(&mut key, length(name.len()));
        key.extend_from_slice(name.as_bytes());
    }
    for (_, value) in &sorted {
        let (tag, bytes): (u32, Vec<u8>) = match value {
            EntityValue::Bytes(bytes) => (KEY_TYPE_BYTES, bytes.to_vec()),
            EntityValue::String(text) => (KEY_TYPE_STRING, text.as_bytes().to_vec()),
            EntityValue::Int32(number) => (KEY_TYPE_INT32, number.to_le_bytes().to_vec()),
            EntityValue::Int64(number) => (KEY_TYPE_INT64, number.to_le_bytes().to_vec()),
        };
        put_u32(&mut key, tag);
        put_u32(&mut key, length(bytes.len()));
        key.extend_from_slice(&bytes);
    }
    key.extend_from_slice(project.as_bytes());
    key
}

/// Lengths in keys are u32; ids and names are far below 4 GiB, and a longer one saturates
/// (giving a key nobody wrote, so a miss) rather than wrapping.
fn length(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The hash field of `feature` in `view`: murmur3 x86 32-bit, seed 0, of `view:feature`,
/// little-endian, as Feast's `_mmh3` computes it.
pub fn feature_field(view: &str, feature: &str) -> [u8; 4] {
    let name = format!("{view}:{feature}");
    // Reading from an in-memory slice cannot fail; the crate's signature is generic over
    // readers, so its error is mapped rather than unwrapped.
    let hash = murmur3::murmur3_32(&mut Cursor::new(name.as_bytes()), 0).unwrap_or_default();
    hash.to_le_bytes()
}

/// The hash field holding `view`'s event timestamp.
pub fn timestamp_field(view: &str) -> Vec<u8> {
    format!("{TIMESTAMP_FIELD_PREFIX}{view}").into_bytes()
}

/// `feast.types.Value` (Feast's `protos/feast/types/Value.proto`) and the list messages
/// it holds, derived by hand for the cases a podscore record can hold: the schema is
/// public and stable, and deriving eight message types here keeps protobuf compilation out
/// of the store. Cases podscore does not read (maps, sets, JSON, ...) decode as an unknown
/// value and are refused by name. `tests/redis/main.rs` checks these bytes against Feast's own
/// serializer.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(
            oneof = "value::Val",
            tags = "1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 18, 19"
        )]
        pub val: Option<value::Val>,
    }

    pub mod value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Val {
            #[prost(bytes, tag = "1")]
            BytesVal(Vec<u8>),
            #[prost(string, tag = "2")]
            StringVal(String),
            #[prost(int32, tag = "3")]
            Int32Val(i32),
            #[prost(int64, tag = "4")]
            Int64Val(i64),
            #[prost(double, tag = "5")]
            DoubleVal(f64),
            #[prost(float, tag = "6")]
            FloatVal(f32),
            #[prost(bool, tag = "7")]
            BoolVal(bool),
            #[prost(int64, tag = "8")]
            UnixTimestampVal(i64),
            #[prost(message, tag = "11")]
            BytesListVal(super::BytesList),
            #[prost(message, tag = "12")]
            StringListVal(super::StringList),
            #[prost(message, tag = "13")]
            Int32ListVal(super::Int32List),
            #[prost(message, tag = "14")]
            Int64ListVal(super::Int64List),
            #[prost(message, tag = "15")]
            DoubleListVal(super::DoubleList),
            #[prost(message, tag = "16")]
            FloatListVal(super::FloatList),
            #[prost(message, tag = "17")]
            BoolListVal(super::BoolList),
            #[prost(message, tag = "18")]
            UnixTimestampListVal(super::Int64List),
            #[prost(enumeration = "super::Null", tag = "19")]
            NullVal(i32),
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, prost::Enumeration)]
    #[repr(i32)]
    pub enum Null {
        Null = 0,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BytesList {
        #[prost(bytes, repeated, tag = "1")]
        pub val: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringList {
        #[prost(string, repeated, tag = "1")]
        pub val: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int32List {
        #[prost(int32, repeated, tag = "1")]
        pub val: Vec<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int64List {
        #[prost(int64, repeated, tag = "1")]
        pub val: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DoubleList {
        #[prost(double, repeated, tag = "1")]
        pub val: Vec<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FloatList {
        #[prost(float, repeated, tag = "1")]
        pub val: Vec<f32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BoolList {
        #[prost(bool, repeated, tag = "1")]
        pub val: Vec<bool>,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

use proto::value::Val;

/// Why a stored value cannot fill a record field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("not a feast.types.Value protobuf: {0}")]
    Protobuf(String),
    #[error("holds a value type podscore does not read")]
    Unsupported,
    #[error("holds {found}, expected {expected}")]
    WrongType {
        found: &'static str,
        expected: &'static str,
    },
    #[error("{value} is out of range for {expected}")]
    OutOfRange {
        value: String,
        expected: &'static str,
    },
}

/// Decodes a stored value; `None` when it holds nothing (Feast writes a missing value as
/// an empty `Value`) or an explicit null.
pub fn decode_value(bytes: &[u8]) -> Result<Option<Val>, ValueError> {
    let value =
        proto::Value::decode(bytes).map_err(|error| ValueError::Protobuf(error.to_string()))?;
    match value.val {
        // Bytes but no case we know: a newer case (a map, a set, JSON, ...).
        None if !bytes.is_empty() => Err(ValueError::Unsupported),
        None | Some(Val::NullVal(_)) => Ok(None),
        Some(val) => Ok(Some(val)),
    }
}

/// Encodes a value as Feast stores it: `None` as an empty `Value`.
pub fn encode_value(val: Option<Val>) -> Vec<u8> {
    proto::Value { val }.encode_to_vec()
}

/// A `google.protobuf.Timestamp` of whole seconds, as the `_ts:{view}` field holds.
pub fn encode_timestamp(seconds: i64) -> Vec<u8> {
    proto::Timestamp { seconds, nanos: 0 }.encode_to_vec()
}

fn type_name(val: &Val) -> &'static str {
    match val {
        Val::BytesVal(_) => "bytes",
        Val::StringVal(_) => "string",
        Val::Int32Val(_) => "int32",
        Val::Int64Val(_) => "int64",
        Val::DoubleVal(_) => "double",
        Val::FloatVal(_) => "float",
        Val::BoolVal(_) => "bool",
        Val::UnixTimestampVal(_) => "unix_timestamp",
        Val::BytesListVal(_) => "bytes_list",
        Val::StringListVal(_) => "string_list",
        Val::Int32ListVal(_) => "int32_list",
        Val::Int64ListVal(_) => "int64_list",
        Val::DoubleListVal(_) => "double_list",
        Val::FloatListVal(_) => "float_list",
        Val::BoolListVal(_) => "bool_list",
        Val::UnixTimestampListVal(_) => "unix_timestamp_list",
        Val::NullVal(_) => "null",
    }
}

fn wrong(val: &Val, expected: &'static str) -> ValueError {
    ValueError::WrongType {
        found: type_name(val),
        expected,
    }
}

/// A string.
pub fn to_text(val: Val) -> Result<String, ValueError> {
    match val {
        Val::StringVal(text) => Ok(text),
        other => Err(wrong(&other, "string")),
    }
}

/// A list of strings.
pub fn to_text_list(val: Val) -> Result<Vec<String>, ValueError> {
    match val {
        Val::StringListVal(list) => Ok(list.val),
        other => Err(wrong(&other, "string_list")),
    }
}

/// A vector of floats, from a float or a double list (Feast's `Array(Float64)`).
pub fn to_float_vector(val: Val) -> Result<Vec<f32>, ValueError> {
    match val {
        Val::FloatListVal(list) => Ok(list.val),
        Val::DoubleListVal(list) => Ok(list.val.into_iter().map(|value| value as f32).collect()),
        other => Err(wrong(&other, "float_list")),
    }
}

/// A number, from any numeric case. NaN reads as missing: pandas turns a null float into
/// NaN on its way into Feast, and a null is what the snapshot held.
pub fn to_number(val: Val) -> Result<Option<f64>, ValueError> {
    let number = match val {
        Val::DoubleVal(value) => value,
        Val::FloatVal(value) => f64::from(value),
        Val::Int32Val(value) => f64::from(value),
        Val::Int64Val(value) => value as f64,
        other => return Err(wrong(&other, "double")),
    };
    Ok((!number.is_nan()).then_some(number))
}

/// A small non-negative integer (a tier), from an int32 or int64.
pub fn to_small_integer(val: Val) -> Result<u8, ValueError> {
    let wide = match val {
        Val::Int32Val(value) => i64::from(value),
        Val::Int64Val(value) => value,
        other => return Err(wrong(&other, "int32")),
    };
    u8::try_from(wide).map_err(|_| ValueError::OutOfRange {
        value: wide.to_string(),
        expected: "0..=255",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector, checked with Feast 0.67 against a real materialization: user
    /// `u1` of project `podscore`, feature `country` of view `users`, value `"AU"`.
    #[test]
    fn key_field_and_value_match_feasts_bytes() {
        let key = redis_key("podscore", &[("user_id", EntityValue::String("u1"))]);
        assert_eq!(
            hex(&key),
            "010000000200000007000000757365725f696402000000020000007531706f6473636f7265"
        );
        assert_eq!(hex(&feature_field("users", "country")), "cc893131");
        assert_eq!(
            hex(&encode_value(Some(Val::StringVal("AU".into())))),
            "12024155"
        );
        assert_eq!(timestamp_field("users"), b"_ts:users");
    }

    /// Join keys are sorted by name and integers are little-endian, whatever order the
    /// caller gives.
    #[test]
    fn keys_sort_join_keys_and_encode_integers_little_endian() {
        let one = redis_key(
            "p",
            &[("b", EntityValue::Int64(1)), ("a", EntityValue::Int32(-2))],
        );
        let other = redis_key(
            "p",
            &[("a", EntityValue::Int32(-2)), ("b", EntityValue::Int64(1))],
        );
        assert_eq!(one, other);
        let expected = [
            "02000000", // two keys
            "02000000",
            "01000000",
            "61", // "a"
            "02000000",
            "01000000",
            "62", // "b"
            "03000000",
            "04000000",
            "feffffff", // int32 -2
            "04000000",
            "08000000",
            "0100000000000000", // int64 1
            "70",               // project "p"
        ]
        .concat();
        assert_eq!(hex(&one), expected);
    }

    /// Values round-trip; empty bytes and nulls read as missing; NaN reads as missing;
    /// a wrong type or an unknown case is an error that says what it found.
    #[test]
    fn values_decode_by_field_type() {
        let list = encode_value(Some(Val::StringListVal(proto::StringList {
            val: vec!["a".into(), "b".into()],
        })));
        let val = decode_value(&list).unwrap().unwrap();
        assert_eq!(to_text_list(val).unwrap(), ["a", "b"]);
        assert_eq!(decode_value(&[]).unwrap(), None);
        assert_eq!(
            decode_value(&encode_value(Some(Val::NullVal(0)))).unwrap(),
            None
        );
        let nan = decode_value(&encode_value(Some(Val::DoubleVal(f64::NAN))))
            .unwrap()
            .unwrap();
        assert_eq!(to_number(nan).unwrap(), None);
        let text = decode_value(&encode_value(Some(Val::StringVal("x".into()))))
            .unwrap()
            .unwrap();
        assert_eq!(
            to_number(text).unwrap_err().to_string(),
            "holds string, expected double"
        );
        // Field 20 (map_val), length 0: a case podscore does not read.
        assert_eq!(
            decode_value(&[0xa2, 0x01, 0x00]),
            Err(ValueError::Unsupported)
        );
        assert!(matches!(
            decode_value(&[0x12, 0x05, 0x41]),
            Err(ValueError::Protobuf(_))
        ));
        assert!(matches!(
            to_small_integer(Val::Int64Val(300)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(to_small_integer(Val::Int32Val(7)).unwrap(), 7);
        let doubles = Val::DoubleListVal(proto::DoubleList {
            val: vec![0.5, 1.5],
        });
        assert_eq!(to_float_vector(doubles).unwrap(), [0.5, 1.5]);
    }

    /// A timestamp is a `google.protobuf.Timestamp` with seconds only.
    #[test]
    fn timestamps_encode_seconds() {
        assert_eq!(hex(&encode_timestamp(1)), "0801");
        assert_eq!(
            proto::Timestamp::decode(&encode_timestamp(1_790_000_000)[..])
                .unwrap()
                .seconds,
            1_790_000_000
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
