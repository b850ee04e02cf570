//! Entity records: the raw, untransformed values the feature store holds and a request may
//! carry inline. Users, shows and episodes come from the snapshot (or Redis); context and
//! creatives come with each request or impression.
//!
//! This module knows field names and types only. It knows nothing of vocabularies,
//! tensors, Parquet, HTTP or JSON wire details beyond serde derives (and the OpenAPI
//! schema derives that describe the same fields).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Inline fields win over stored ones, field by field: how a request's own values
/// combine with the feature store's record of the same entity.
pub trait Overlay: Clone {
    /// `self`'s fields where present, `stored`'s elsewhere.
    fn overlay(&self, stored: &Self) -> Self;
}

/// The record a request's inline fields and the store's record make together; absent
/// when neither knows the entity. Borrowed, not copied, when only one side is present.
pub fn overlay<'a, T: Overlay>(inline: Option<&'a T>, stored: Option<&'a T>) -> Option<Cow<'a, T>> {
    match (inline, stored) {
        (Some(inline), Some(stored)) => Some(Cow::Owned(inline.overlay(stored))),
        (Some(only), None) | (None, Some(only)) => Some(Cow::Borrowed(only)),
        (None, None) => None,
    }
}

/// Defines an entity record from one field list: every field optional (a request may
/// carry any subset, the store may not know one), serialized only when present, unknown
/// fields refused, and its [`Overlay`]. The wire format of `POST /score` uses these same
/// types for inline entities, so that the list is written once.
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $type:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$type>,
            )*
        }

        impl Overlay for $name {
            fn overlay(&self, stored: &Self) -> Self {
                $name {
                    $( $field: self.$field.clone().or_else(|| stored.$field.clone()), )*
                }
            }
        }
    };
}

record! {
    /// What a listener looks like to the model. A user the store has never seen is just
    /// an id, and assembly fills defaults (the cold-start path).
    pub struct UserRecord {
        /// Always present in the store; a request may leave it out.
        pub id: String,
        pub country: String,
        pub platform: String,
        pub age_bucket: String,
        /// Show ids the user listened to recently, most recent first.
        pub history: Vec<String>,
        /// Show ids the user follows.
        pub follows: Vec<String>,
        /// Topics of the user's recent searches.
        pub search_topics: Vec<String>,
    }
}

record! {
    pub struct ShowRecord {
        /// Always present in the store; inline, it names the show when the candidate has
        /// no `show_id`.
        pub id: String,
        pub genres: Vec<String>,
        pub topics: Vec<String>,
        /// Output of a pretrained content encoder: a noisy view of the show's content.
        pub embedding: Vec<f32>,
        /// Streams over the rolling 30-day window; the popularity tier derives from it.
        pub streams_30d: f64,
        /// Popularity tier 0 (most streamed) to 7; absent for brand-new shows.
        #[schema(maximum = 255)]
        #[serde(deserialize_with = "whole::option")]
        pub tier: u8,
    }
}

record! {
    pub struct EpisodeRecord {
        /// Always present in the store; inline, it names the episode when the candidate
        /// has no `episode_id`.
        pub id: String,
        pub show_id: String,
        pub topics: Vec<String>,
        pub duration_s: f64,
    }
}

record! {
    /// The moment and place of an impression.
    pub struct ContextRecord {
        /// Unix seconds, UTC. The API accepts RFC 3339 and converts.
        pub timestamp: i64,
        pub surface: String,
        pub session_length_s: f64,
        /// Primary genre of the show playing when an ad runs inside it (the ad's host);
        /// absent outside playback and in worlds that do not log it.
        pub host_genre: String,
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    Ad,
    Promotion,
}

impl CandidateKind {
    pub const ALL: [CandidateKind; 2] = [CandidateKind::Ad, CandidateKind::Promotion];

    /// Position in [`CandidateKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Ad => "ad",
            CandidateKind::Promotion => "promotion",
        }
    }

    pub fn parse(text: &str) -> Option<CandidateKind> {
        match text {
            "ad" => Some(CandidateKind::Ad),
            "promotion" => Some(CandidateKind::Promotion),
            _ => None,
        }
    }
}

record! {
    /// The creative of an ad or the placement of a promotion.
    pub struct CreativeRecord {
        pub creative_id: String,
        pub campaign_id: String,
        /// Ads: `audio` or `video`.
        pub format: String,
        /// Where it shows: `preroll`, `midroll`, `home_shelf`, ...
        pub slot: String,
        /// Promotions: `card`, `banner`, ...
        pub layout: String,
    }
}

/// Everything about one request that is the same for all its candidates.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub user: Option<&'a UserRecord>,
    pub context: &'a ContextRecord,
}

/// Everything about one candidate. Show and episode are absent when neither the store
/// nor the request knows them: assembly then takes the cold-start path.
#[derive(Debug, Clone, Copy)]
pub struct CandidateView<'a> {
    pub kind: CandidateKind,
    pub show_id: Option<&'a str>,
    pub show: Option<&'a ShowRecord>,
    pub episode_id: Option<&'a str>,
    pub episode: Option<&'a EpisodeRecord>,
    pub creative: &'a CreativeRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inline fields override stored ones one by one; absent ones keep the stored value;
    /// an entity neither side knows stays absent, and one side alone is borrowed.
    #[test]
    fn inline_fields_override_stored_fields_one_by_one() {
        let stored = UserRecord {
            id: Some("u1".into()),
            country: Some("se".into()),
            platform: Some("ios".into()),
            ..UserRecord::default()
        };
        let inline = UserRecord {
            country: Some("us".into()),
            ..UserRecord::default()
        };
        let merged = overlay(Some(&inline), Some(&stored)).unwrap();
        assert_eq!(merged.id.as_deref(), Some("u1"));
        assert_eq!(merged.country.as_deref(), Some("us"));
        assert_eq!(merged.platform.as_deref(), Some("ios"));
        assert_eq!(overlay::<UserRecord>(None, None), None);
        assert!(matches!(
            overlay(None, Some(&stored)),
            Some(Cow::Borrowed(_))
        ));
    }

    /// `index` is the position in `ALL`, which fixed-size tables rely on.
    #[test]
    fn kind_index_is_its_position() {
        for (position, kind) in CandidateKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
    }
}

/// Integers as JSON Schema counts them: `type: integer` (what `/openapi.json` says of
/// every integer field) admits any number without a fractional part, `247.0` as well as
/// `247`, while serde's integer types refuse a float token. These `deserialize_with`
/// helpers take both and refuse a fraction or a value out of the type's range, with
/// serde's own `invalid type` / `invalid value` messages. Hand-written: serde_with's
/// conversions truncate or go through strings, none checks that a float is whole.
pub mod whole {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, Unexpected, Visitor};

    /// One integer of type `T`, from an integer or a whole-number float.
    struct Whole<T>(T);

    struct WholeVisitor<T>(PhantomData<T>);

    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for WholeVisitor<T> {
        type Value = Whole<T>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            write!(
                formatter,
                "an integer that fits {}",
                std::any::type_name::<T>()
            )
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<Whole<T>, E> {
            T::try_from(value)
                .map(Whole)
                .map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<Whole<T>, E> {
            T::try_from(value)
                .map(Whole)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_f64<E: Error>(self, value: f64) -> Result<Whole<T>, E> {
            // i64's range as floats: -2^63 is exact, 2^63 is the first value past it.
            const LOW: f64 = -9_223_372_036_854_775_808.0;
            const HIGH: f64 = 9_223_372_036_854_775_808.0;
            // serde_json's default number parser (without `float_roundtrip`, which would
            // rebuild every crate that uses serde_json) can land one ULP from the text's
            // value when the digits pass 2^53: `3876150617857830.0` reads as `…830.5`. A
            // float within one ULP of a whole number counts as that number; below 2^49
            // an ULP is under 1/16, so `2.5` and the like are still refused.
            let rounded = value.round();
            let whole = ((value - rounded).abs() <= value.abs() * f64::EPSILON
                && (LOW..HIGH).contains(&rounded))
            .then(|| T::try_from(rounded as i64).ok())
            .flatten();
            whole
                .map(Whole)
                .ok_or_else(|| E::invalid_value(Unexpected::Float(value), &self))
        }
    }

    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Deserialize<'de> for Whole<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(WholeVisitor(PhantomData))
        }
    }

    /// An optional integer (`null` or absent is `None`).
    pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|whole| whole.0))
    }

    /// A list of integers.
    pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        Ok(Vec::<Whole<T>>::deserialize(deserializer)?
            .into_iter()
            .map(|whole| whole.0)
            .collect())
    }

    #[cfg(test)]
    mod tests {
        use serde::Deserialize;

        /// A whole float is the integer; a fraction, a value out of range and a string
        /// are refused.
        #[test]
        fn whole_floats_are_integers_and_nothing_else_is() {
            #[derive(Deserialize)]
            struct Tier {
                #[serde(default, deserialize_with = "super::option")]
                tier: Option<u8>,
            }
            #[derive(Deserialize)]
            struct Shape {
                #[serde(deserialize_with = "super::list")]
                shape: Vec<i64>,
            }
            let tier = |text: &str| serde_json::from_str::<Tier>(text).map(|tier| tier.tier);
            assert_eq!(tier(r#"{"tier": 247.0}"#).unwrap(), Some(247));
            assert_eq!(tier(r#"{"tier": 7}"#).unwrap(), Some(7));
            assert_eq!(tier(r#"{"tier": null}"#).unwrap(), None);
            assert_eq!(tier("{}").unwrap(), None);
            assert!(tier(r#"{"tier": 2.5}"#).is_err());
            assert!(tier(r#"{"tier": 256}"#).is_err());
            assert!(tier(r#"{"tier": 256.0}"#).is_err());
            assert!(tier(r#"{"tier": -1}"#).is_err());
            let message = tier(r#"{"tier": "7"}"#).unwrap_err().to_string();
            assert!(message.starts_with("invalid type"), "{message}");
            let shape = |text: &str| serde_json::from_str::<Shape>(text).map(|shape| shape.shape);
            assert_eq!(shape(r#"{"shape": [-732.0, 3]}"#).unwrap(), vec![-732, 3]);
            assert!(shape(r#"{"shape": [1e300]}"#).is_err());
            // Read one ULP high by serde_json; still the whole number it was written as.
            assert!(shape(r#"{"shape": [3876150617857830.0]}"#).is_ok());
        }
    }
}

/// Structs from JSON objects only. serde's derive also reads a struct from an array of
/// its fields in order (`"user": [null, null]` filled the first two fields and defaulted
/// the rest), which no document describes and no client means. These `deserialize_with`
/// helpers ask for a map and refuse anything else with serde's `invalid type` message.
/// Hand-written: serde has no attribute that turns off the sequence form.
pub mod object {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

    struct Object<T>(T);

    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = Object<T>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Object)
        }
    }

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(ObjectVisitor(PhantomData))
        }
    }

    /// An optional object (`null` or absent is `None`).
    pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|object| object.0))
    }

    /// A list of objects.
    pub fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Vec::<Object<T>>::deserialize(deserializer)?
            .into_iter()
            .map(|object| object.0)
            .collect())
    }

    /// An optional list of objects.
    pub fn option_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Vec<Object<T>>>::deserialize(deserializer)?
            .map(|list| list.into_iter().map(|object| object.0).collect()))
    }

    #[cfg(test)]
    mod tests {
        use serde::Deserialize;

        use crate::entities::UserRecord;

        /// An object is read as before; an array of the fields is refused.
        #[test]
        fn structs_come_from_objects_only() {
            #[derive(Debug, Deserialize)]
            struct Request {
                #[serde(default, deserialize_with = "super::option")]
                user: Option<UserRecord>,
            }
            let user = |text: &str| serde_json::from_str::<Request>(text).map(|r| r.user);
            assert_eq!(
                user(r#"{"user": {"id": "u"}}"#)
                    .unwrap()
                    .unwrap()
                    .id
                    .as_deref(),
                Some("u")
            );
            assert!(user(r#"{"user": null}"#).unwrap().is_none());
            let message = user(r#"{"user": [null, null]}"#).unwrap_err().to_string();
            assert!(message.starts_with("invalid type: sequence"), "{message}");
            assert!(user(r#"{"user": {"nope": 1}}"#).is_err());
        }
    }
}
