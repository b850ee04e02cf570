//! Which Feast feature fills which record field: the mapping file (project, each entity's
//! join key, and `record field -> "view:feature"`), and the [`Layout`] compiled from it
//! once at start: every entity's hash fields, murmur3 computed once, and the decoders and
//! encoders between stored values and [`UserRecord`], [`ShowRecord`], [`EpisodeRecord`].
//!
//! The built-in default matches the Feast repository in `deploy/feast/`; a test holds
//! `deploy/feast/mapping.json` to it. This module knows records and Feast's byte layout
//! (through [`super::feast`]); it knows nothing of Redis connections, HTTP or the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::feast::{self, EntityValue, ValueError, proto::value::Val};
use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};

/// Feast's project in `deploy/feast/feature_store.yaml`; part of every key.
pub const DEFAULT_PROJECT: &str = "podscore";

/// The mapping file as written (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Feast's project name: the suffix of every key.
    pub project: String,
    pub user: EntityMapping,
    pub show: EntityMapping,
    pub episode: EntityMapping,
}

/// One entity: its join key and the features that fill its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityMapping {
    /// The Feast entity's join key; its values are the record ids, as strings.
    pub join_key: String,
    /// Record field -> `"view:feature"`. A record field left out is never read (it stays
    /// missing, and assembly uses its default).
    pub features: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("reading feast mapping {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("feast mapping {}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    /// Every problem at once, so that one edit fixes the file.
    #[error("feast mapping: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
}

impl Default for Mapping {
    /// The layout `deploy/feast/` defines: project `podscore`, views `users`, `shows`,
    /// `episodes` over the snapshot files, each feature named as its record field.
    fn default() -> Mapping {
        fn entity(join_key: &str, view: &str, fields: &[&str]) -> EntityMapping {
            EntityMapping {
                join_key: join_key.to_string(),
                features: fields
                    .iter()
                    .map(|field| (field.to_string(), format!("{view}:{field}")))
                    .collect(),
            }
        }
        Mapping {
            project: DEFAULT_PROJECT.to_string(),
            user: entity("user_id", "users", &field_names(UserRecord::FIELDS)),
            show: entity("show_id", "shows", &field_names(ShowRecord::FIELDS)),
            episode: entity(
                "episode_id",
                "episodes",
                &field_names(EpisodeRecord::FIELDS),
            ),
        }
    }
}

fn field_names<R>(fields: &[RecordField<R>]) -> Vec<&'static str> {
    fields.iter().map(|field| field.name).collect()
}

impl Mapping {
    /// Reads a mapping file; a JSON error names the path of the bad field.
    pub fn read(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read(path).map_err(|source| MappingError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|source| MappingError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks every entry and computes every hash field once.
    pub fn layout(&self) -> Result<Layout, MappingError> {
        let mut problems = Vec::new();
        if self.project.is_empty() {
            problems.push("`project` is empty".to_string());
        }
        let user = EntityLayout::new(&self.project, "user", &self.user, &mut problems);
        let show = EntityLayout::new(&self.project, "show", &self.show, &mut problems);
        let episode = EntityLayout::new(&self.project, "episode", &self.episode, &mut problems);
        if problems.is_empty() {
            Ok(Layout {
                user,
                show,
                episode,
            })
        } else {
            Err(MappingError::Invalid { problems })
        }
    }
}

/// The compiled mapping: for each entity, its keys, hash fields and record conversions.
#[derive(Debug)]
pub struct Layout {
    pub user: EntityLayout<UserRecord>,
    pub show: EntityLayout<ShowRecord>,
    pub episode: EntityLayout<EpisodeRecord>,
}

/// A record field: its name in the mapping, and how it meets a Feast value.
pub struct RecordField<R> {
    pub name: &'static str,
    /// The field's value as Feast stores it; `None` when the record has none.
    encode: fn(&R) -> Option<Val>,
    /// Fills the field from a stored value.
    decode: fn(&mut R, Val) -> Result<(), ValueError>,
}

impl<R> std::fmt::Debug for RecordField<R> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name)
    }
}

/// A record the store holds: its id and its fields.
pub trait Record: Sized + 'static {
    const FIELDS: &'static [RecordField<Self>];
    fn with_id(id: &str) -> Self;
}

fn text(value: &Option<String>) -> Option<Val> {
    value.clone().map(Val::StringVal)
}

fn text_list(value: &Option<Vec<String>>) -> Option<Val> {
    value
        .clone()
        .map(|val| Val::StringListVal(feast::proto::StringList { val }))
}

impl Record for UserRecord {
    const FIELDS: &'static [RecordField<UserRecord>] = &[
        RecordField {
            name: "country",
            encode: |user| text(&user.country),
            decode: |user, val| {
                user.country = Some(feast::to_text(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "platform",
            encode: |user| text(&user.platform),
            decode: |user, val| {
                user.platform = Some(feast::to_text(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "age_bucket",
            encode: |user| text(&user.age_bucket),
            decode: |user, val| {
                user.age_bucket = Some(feast::to_text(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "history",
            encode: |user| text_list(&user.history),
            decode: |user, val| {
                user.history = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "follows",
            encode: |user| text_list(&user.follows),
            decode: |user, val| {
                user.follows = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "search_topics",
            encode: |user| text_list(&user.search_topics),
            decode: |user, val| {
                user.search_topics = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
    ];

    fn with_id(id: &str) -> UserRecord {
        UserRecord {
            id: Some(id.to_string()),
            ..UserRecord::default()
        }
    }
}

impl Record for ShowRecord {
    const FIELDS: &'static [RecordField<ShowRecord>] = &[
        RecordField {
            name: "genres",
            encode: |show| text_list(&show.genres),
            decode: |show, val| {
                show.genres = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "topics",
            encode: |show| text_list(&show.topics),
            decode: |show, val| {
                show.topics = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "embedding",
            encode: |show| {
                show.embedding
                    .clone()
                    .map(|val| Val::FloatListVal(feast::proto::FloatList { val }))
            },
            decode: |show, val| {
                show.embedding = Some(feast::to_float_vector(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "streams_30d",
            encode: |show| show.streams_30d.map(Val::DoubleVal),
            decode: |show, val| {
                show.streams_30d = feast::to_number(val)?;
                Ok(())
            },
        },
        RecordField {
            // Feast reads the snapshot's UInt8 column as Int32.
            name: "tier",
            encode: |show| show.tier.map(|tier| Val::Int32Val(i32::from(tier))),
            decode: |show, val| {
                show.tier = Some(feast::to_small_integer(val)?);
                Ok(())
            },
        },
    ];

    fn with_id(id: &str) -> ShowRecord {
        ShowRecord {
            id: Some(id.to_string()),
            ..ShowRecord::default()
        }
    }
}

impl Record for EpisodeRecord {
    const FIELDS: &'static [RecordField<EpisodeRecord>] = &[
        RecordField {
            name: "show_id",
            encode: |episode| text(&episode.show_id),
            decode: |episode, val| {
                episode.show_id = Some(feast::to_text(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "topics",
            encode: |episode| text_list(&episode.topics),
            decode: |episode, val| {
                episode.topics = Some(feast::to_text_list(val)?);
                Ok(())
            },
        },
        RecordField {
            name: "duration_s",
            encode: |episode| episode.duration_s.map(Val::DoubleVal),
            decode: |episode, val| {
                episode.duration_s = feast::to_number(val)?;
                Ok(())
            },
        },
    ];

    fn with_id(id: &str) -> EpisodeRecord {
        EpisodeRecord {
            id: Some(id.to_string()),
            ..EpisodeRecord::default()
        }
    }
}

/// A stored value that does not fit its record field: the data or the mapping is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{entity} `{id}`: feature `{feature}` (record field `{field}`) {error}")]
pub struct DecodeError {
    pub entity: &'static str,
    pub id: String,
    pub feature: String,
    pub field: &'static str,
    #[source]
    pub error: ValueError,
}

/// One mapped feature of an entity.
#[derive(Debug)]
struct Column<R: 'static> {
    field: &'static RecordField<R>,
    /// `view:feature`, for messages.
    feature: String,
    hash_field: [u8; 4],
}

/// One entity's part of the layout.
#[derive(Debug)]
pub struct EntityLayout<R: 'static> {
    entity: &'static str,
    project: String,
    join_key: String,
    columns: Vec<Column<R>>,
    /// Views the features come from, each once, in first-mention order.
    views: Vec<String>,
    /// What one `HMGET` asks for: every column's field, then `_ts:{view}` per view.
    hash_fields: Vec<Vec<u8>>,
}

impl<R: Record> EntityLayout<R> {
    fn new(
        project: &str,
        entity: &'static str,
        mapping: &EntityMapping,
        problems: &mut Vec<String>,
    ) -> EntityLayout<R> {
        if mapping.join_key.is_empty() {
            problems.push(format!("`{entity}.join_key` is empty"));
        }
        let mut columns = Vec::new();
        let mut views: Vec<String> = Vec::new();
        for (field_name, feature) in &mapping.features {
            let Some(field) = R::FIELDS.iter().find(|field| field.name == field_name) else {
                problems.push(format!(
                    "`{entity}.features.{field_name}` is not a {entity} field (known: {})",
                    field_names(R::FIELDS).join(", ")
                ));
                continue;
            };
            let Some((view, name)) = feature
                .split_once(':')
                .filter(|(view, name)| !view.is_empty() && !name.is_empty())
            else {
                problems.push(format!(
                    "`{entity}.features.{field_name}` is `{feature}`, expected `view:feature`"
                ));
                continue;
            };
            if !views.iter().any(|known| known == view) {
                views.push(view.to_string());
            }
            columns.push(Column {
                field,
                feature: feature.clone(),
                hash_field: feast::feature_field(view, name),
            });
        }
        let hash_fields = columns
            .iter()
            .map(|column| column.hash_field.to_vec())
            .chain(views.iter().map(|view| feast::timestamp_field(view)))
            .collect();
        EntityLayout {
            entity,
            project: project.to_string(),
            join_key: mapping.join_key.clone(),
            columns,
            views,
            hash_fields,
        }
    }

    /// The Redis key of the entity with this id.
    pub fn key(&self, id: &str) -> Vec<u8> {
        feast::redis_key(
            &self.project,
            &[(self.join_key.as_str(), EntityValue::String(id))],
        )
    }

    /// The fields one read asks for (`HMGET key fields...`), in the order
    /// [`EntityLayout::decode`] expects their values.
    pub fn hash_fields(&self) -> &[Vec<u8>] {
        &self.hash_fields
    }

    /// The record from the values of [`EntityLayout::hash_fields`]; `None` when no view
    /// has a timestamp for it (Feast never wrote this entity: a miss).
    pub fn decode(&self, id: &str, values: Vec<Option<Vec<u8>>>) -> Result<Option<R>, DecodeError> {
        let written = values[self.columns.len().min(values.len())..]
            .iter()
            .any(Option::is_some);
        if !written {
            return Ok(None);
        }
        let mut record = R::with_id(id);
        for (column, value) in self.columns.iter().zip(values) {
            let Some(bytes) = value else { continue };
            let fill = feast::decode_value(&bytes).and_then(|val| match val {
                Some(val) => (column.field.decode)(&mut record, val),
                None => Ok(()),
            });
            fill.map_err(|error| DecodeError {
                entity: self.entity,
                id: id.to_string(),
                feature: column.feature.clone(),
                field: column.field.name,
                error,
            })?;
        }
        Ok(Some(record))
    }

    /// The hash of `record` as Feast's materialization writes it: every mapped feature
    /// (a missing value as an empty `Value`) and each view's timestamp, `as_of` seconds.
    pub fn encode(&self, record: &R, as_of: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let timestamp = feast::encode_timestamp(as_of);
        self.columns
            .iter()
            .map(|column| {
                (
                    column.hash_field.to_vec(),
                    feast::encode_value((column.field.encode)(record)),
                )
            })
            .chain(
                self.views
                    .iter()
                    .map(|view| (feast::timestamp_field(view), timestamp.clone())),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show() -> ShowRecord {
        ShowRecord {
            id: Some("s1".into()),
            genres: Some(vec!["comedy".into()]),
            topics: Some(vec![]),
            embedding: Some(vec![0.25, -1.0]),
            streams_30d: Some(1234.5),
            tier: Some(3),
        }
    }

    /// The default mapping maps every record field, and the file in `deploy/feast/` is that
    /// default: the Feast repository and the built-in layout cannot drift apart.
    #[test]
    fn the_default_covers_every_field_and_matches_the_deploy_file() {
        let mapping = Mapping::default();
        assert_eq!(mapping.user.features.len(), UserRecord::FIELDS.len());
        assert_eq!(mapping.show.features["tier"], "shows:tier");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/feast/mapping.json");
        assert_eq!(Mapping::read(&path).unwrap(), mapping);
        mapping.layout().unwrap();
    }

    /// A record written with the layout reads back the same, a missing field included;
    /// a hash with no timestamp is a miss.
    #[test]
    fn records_round_trip_through_hash_fields() {
        let layout = Mapping::default().layout().unwrap();
        let mut record = show();
        record.streams_30d = None;
        let written = layout.show.encode(&record, 1_790_000_000);
        let stored: BTreeMap<Vec<u8>, Vec<u8>> = written.into_iter().collect();
        let values: Vec<Option<Vec<u8>>> = layout
            .show
            .hash_fields()
            .iter()
            .map(|field| stored.get(field).cloned())
            .collect();
        assert_eq!(layout.show.decode("s1", values).unwrap(), Some(record));
        let nothing = vec![None; layout.show.hash_fields().len()];
        assert_eq!(layout.show.decode("s1", nothing).unwrap(), None);
    }

    /// A value of the wrong type names the entity, the id and the feature.
    #[test]
    fn a_wrong_value_names_where_it_is() {
        let layout = Mapping::default().layout().unwrap();
        let mut values = vec![None; layout.user.hash_fields().len()];
        values[0] = Some(feast::encode_value(Some(Val::Int64Val(3))));
        *values.last_mut().unwrap() = Some(feast::encode_timestamp(0));
        let error = layout.user.decode("u9", values).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user `u9`: feature `users:age_bucket` (record field `age_bucket`) holds int64, expected string"
        );
    }

    /// Every bad entry of a mapping is reported at once.
    #[test]
    fn a_bad_mapping_lists_every_problem() {
        let mut mapping = Mapping::default();
        mapping.project.clear();
        mapping
            .user
            .features
            .insert("colour".into(), "users:colour".into());
        mapping.show.features.insert("tier".into(), "tier".into());
        let Err(MappingError::Invalid { problems }) = mapping.layout() else {
            panic!("expected the mapping to be refused");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("`user.features.colour` is not a user field"));
        assert!(problems[2].contains("expected `view:feature`"));
    }
}
