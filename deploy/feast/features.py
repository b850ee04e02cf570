"""Entities and feature views over podscore's feature snapshot (users, shows, episodes
Parquet files). Each view is named after its file and each feature after its column, so
that the layout matches podscore's built-in mapping (deploy/feast/mapping.json).

The snapshot's `event_timestamp` column (the instant the values hold as of, written by
`podscore simulate`) is the views' event time; `feast materialize` selects rows by it.
"""

import os
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64, Int32, String

REPO = Path(__file__).resolve().parent
SNAPSHOT = Path(
    os.environ.get("PODSCORE_SNAPSHOT", REPO.parent.parent / "models" / "demo-features")
).resolve()


def source(name: str, join_key: str) -> FileSource:
    """The snapshot file `name`.parquet, its `id` column read as the entity's join key."""
    return FileSource(
        name=f"{name}_snapshot",
        path=str(SNAPSHOT / f"{name}.parquet"),
        timestamp_field="event_timestamp",
        field_mapping={"id": join_key},
    )


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
show = Entity(name="show", join_keys=["show_id"], value_type=ValueType.STRING)
episode = Entity(name="episode", join_keys=["episode_id"], value_type=ValueType.STRING)

users = FeatureView(
    name="users",
    entities=[user],
    ttl=None,
    schema=[
        Field(name="country", dtype=String),
        Field(name="platform", dtype=String),
        Field(name="age_bucket", dtype=String),
        Field(name="history", dtype=Array(String)),
        Field(name="follows", dtype=Array(String)),
        Field(name="search_topics", dtype=Array(String)),
    ],
    source=source("users", "user_id"),
    online=True,
)

shows = FeatureView(
    name="shows",
    entities=[show],
    ttl=None,
    schema=[
        Field(name="genres", dtype=Array(String)),
        Field(name="topics", dtype=Array(String)),
        Field(name="embedding", dtype=Array(Float32)),
        Field(name="streams_30d", dtype=Float64),
        # The snapshot's UInt8 column, as Feast reads it.
        Field(name="tier", dtype=Int32),
    ],
    source=source("shows", "show_id"),
    online=True,
)

episodes = FeatureView(
    name="episodes",
    entities=[episode],
    ttl=None,
    schema=[
        Field(name="show_id", dtype=String),
        Field(name="topics", dtype=Array(String)),
        Field(name="duration_s", dtype=Float64),
    ],
    source=source("episodes", "episode_id"),
    online=True,
)
