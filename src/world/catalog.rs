//! The static side of the world: genres and topics, shows with their latent vectors,
//! popularity and episodes, users with their tastes and histories, and the promotion
//! and ad campaigns that will carry impressions.
//!
//! Everything here is drawn from per-purpose random streams derived from the seed, so
//! the catalog is the same for a seed however the work is split across threads.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::ad_taste::AdTaste;
use super::traffic::HOUR_WEIGHTS;
use super::{Stream, WorldConfig, WorldError, stream_rng};
use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};
use crate::logs::CONTENT_EMBEDDING_DIM;

/// Dimension of user tastes and show latents. Eight is enough for genre structure plus
/// individual variation, and small enough that affinities cost nothing to compute.
pub const TASTE_DIM: usize = 8;
pub(crate) const GENRES: [&str; 20] = [
    "comedy",
    "news",
    "true_crime",
    "sports",
    "business",
    "technology",
    "health",
    "education",
    "society",
    "history",
    "science",
    "arts",
    "music",
    "fiction",
    "kids_family",
    "religion",
    "tv_film",
    "leisure",
    "politics",
    "self_improvement",
];
/// Topics per genre; topic `t{j}` belongs to genre `j % GENRES.len()`.
const TOPICS_PER_GENRE: usize = 10;
pub(crate) const TOPIC_COUNT: usize = GENRES.len() * TOPICS_PER_GENRE;
/// Markets and their share of users (the US largest, as for most streaming services).
pub(crate) const COUNTRIES: [(&str, f64); 12] = [
    ("US", 0.30),
    ("BR", 0.10),
    ("GB", 0.08),
    ("DE", 0.08),
    ("IN", 0.08),
    ("MX", 0.07),
    ("FR", 0.06),
    ("SE", 0.05),
    ("ES", 0.05),
    ("CA", 0.05),
    ("AU", 0.04),
    ("JP", 0.04),
];
pub(crate) const PLATFORMS: [(&str, f64); 4] = [
    ("android", 0.45),
    ("ios", 0.40),
    ("web", 0.08),
    ("desktop", 0.07),
];
pub(crate) const AGE_BUCKETS: [(&str, f64); 5] = [
    ("18-24", 0.22),
    ("25-34", 0.32),
    ("35-44", 0.22),
    ("45-54", 0.14),
    ("55+", 0.10),
];
/// Longest listening history kept per user, as a feature store would truncate it.
pub const HISTORY_MAX: usize = 20;
/// Share of users with no listening history at all: the cold-start users.
const COLD_USER_SHARE: f64 = 0.12;
/// Chance that a profile attribute is unknown, so that consumers meet missing values.
const MISSING_ATTRIBUTE_SHARE: f64 = 0.03;
/// Cumulative share of established shows in tiers 0..=k, by descending `streams_30d`.
/// Tiers are popularity percentiles of the catalog, so that a world of any size has all
/// eight; the shares make tier 0 the smallest and put most shows in tiers 3-7, as in the
/// paper's long tail of creators.
pub const TIER_CUMULATIVE_SHARE: [f64; 8] = [0.005, 0.02, 0.05, 0.12, 0.25, 0.45, 0.70, 1.0];
/// Streams of the most popular show over 30 days; the others fall off as a Zipf law
/// with this exponent (rank r gets `TOP_SHOW_STREAMS * r^-ZIPF_EXPONENT`, with noise).
/// Chosen so that in the default world tiers 3-7 are the shows under about 5,000
/// streams, the paper's "less-streamed creators".
const TOP_SHOW_STREAMS: f64 = 3_200_000.0;
const ZIPF_EXPONENT: f64 = 1.05;
/// Tier that brand-new shows count in: they have almost no streams yet.
pub(crate) const BRAND_NEW_TIER: u8 = 7;

pub(crate) fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    StandardNormal.sample(rng)
}

fn gumbel<R: Rng>(rng: &mut R) -> f64 {
    let uniform: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    -(-uniform.ln()).ln()
}

pub(crate) fn alias_table(
    weights: Vec<f64>,
    what: &str,
) -> Result<WeightedAliasIndex<f64>, WorldError> {
    WeightedAliasIndex::new(weights)
        .map_err(|error| WorldError::Internal(format!("weights of {what}: {error}")))
}

fn pick_weighted<R: Rng>(table: &[(&'static str, f64)], rng: &mut R) -> usize {
    let total: f64 = table.iter().map(|(_, weight)| weight).sum();
    let mut target = rng.random::<f64>() * total;
    for (index, (_, weight)) in table.iter().enumerate() {
        if target < *weight {
            return index;
        }
        target -= weight;
    }
    table.len() - 1
}

pub(crate) type Vector = [f64; TASTE_DIM];

pub(crate) fn random_vector<R: Rng>(rng: &mut R, scale: f64) -> Vector {
    std::array::from_fn(|_| scale * standard_normal(rng))
}

/// Affinity of a taste and a latent, scaled so that two standard-normal vectors give
/// unit variance.
pub(crate) fn affinity(taste: &Vector, latent: &Vector) -> f64 {
    let dot: f64 = taste
        .iter()
        .zip(latent)
        .map(|(left, right)| left * right)
        .sum();
    dot / (TASTE_DIM as f64).sqrt()
}

pub(crate) struct Show {
    pub latent: Vector,
    pub genres: Vec<u8>,
    /// Sorted, for overlap tests.
    pub topics: Vec<u16>,
    pub embedding: [f32; CONTENT_EMBEDDING_DIM],
    pub streams_30d: f64,
    pub tier: u8,
    /// Day the show went live, for shows created during the window.
    pub created_day: Option<u32>,
    pub quality: f64,
    /// Standardized log popularity (fixed below average for brand-new shows).
    pub popularity: f64,
    /// Indices into `Catalog::episodes`, oldest release first.
    pub first_episode: u32,
    pub episode_count: u32,
}

impl Show {
    pub fn is_live(&self, day: u32) -> bool {
        self.created_day.is_none_or(|created| created <= day)
    }
}

pub(crate) struct Episode {
    pub show: u32,
    pub topics: Vec<u16>,
    pub duration_s: f64,
    /// Day of release relative to the world's start; negative before the window.
    pub release_day: i64,
    pub quality: f64,
}

pub(crate) struct User {
    pub taste: Vector,
    /// The profile the taste was drawn from, before attributes went missing:
    /// (country, platform, age bucket) indices.
    pub profile: (u8, u8, u8),
    pub country: Option<u8>,
    pub platform: Option<u8>,
    pub age_bucket: Option<u8>,
    /// Most recent first.
    pub history: Vec<u32>,
    /// Sorted copies for membership tests.
    pub history_sorted: Vec<u32>,
    pub follows_sorted: Vec<u32>,
    pub search_topics: Vec<u16>,
    /// Relative impression volume: some users are on the app all day.
    pub activity: f64,
}

pub(crate) struct PromotionCampaign {
    pub shows: Vec<u32>,
    pub weight: f64,
    pub quality: f64,
}

pub(crate) struct AdCampaign {
    /// The first show is always an established one, so a campaign always has a live show.
    pub shows: Vec<u32>,
    /// Brand-new shows get more of the campaign's weight: launches are what ads are for.
    pub show_weights: Vec<f64>,
    pub creatives: Vec<u32>,
    pub weight: f64,
    pub quality: f64,
    /// Cost of one impression in a preroll; other slots scale it.
    pub base_cost: f64,
}

pub(crate) struct Creative {
    pub video: bool,
    pub quality: f64,
}

pub(crate) struct Catalog {
    pub shows: Vec<Show>,
    pub episodes: Vec<Episode>,
    pub users: Vec<User>,
    pub promotion_campaigns: Vec<PromotionCampaign>,
    pub ad_campaigns: Vec<AdCampaign>,
    pub creatives: Vec<Creative>,
    pub brand_new_from_day: u32,
    /// The ad-specific taste of every user (read when ads do not share the promotion
    /// affinity exactly).
    pub ad_taste: AdTaste,
}

/// The latent structure everything else is drawn around.
struct Latents {
    genre_centroids: Vec<Vector>,
    topic_vectors: Vec<Vector>,
    country_centroids: Vec<Vector>,
    age_centroids: Vec<Vector>,
    /// The "pretrained content encoder": a fixed linear map from latent to embedding.
    encoder: [[f64; TASTE_DIM]; CONTENT_EMBEDDING_DIM],
}

fn latents(seed: u64) -> Latents {
    let mut rng = stream_rng(seed, Stream::Latents, 0);
    let genre_centroids: Vec<Vector> = (0..GENRES.len())
        .map(|_| random_vector(&mut rng, 1.0))
        .collect();
    let topic_vectors = (0..TOPIC_COUNT)
        .map(|topic| {
            let centroid = genre_centroids[topic % GENRES.len()];
            let noise = random_vector(&mut rng, 0.5);
            std::array::from_fn(|axis| centroid[axis] + noise[axis])
        })
        .collect();
    let country_centroids = (0..COUNTRIES.len())
        .map(|_| random_vector(&mut rng, 0.5))
        .collect();
    let age_centroids = (0..AGE_BUCKETS.len())
        .map(|_| random_vector(&mut rng, 0.5))
        .collect();
    let scale = 1.0 / (TASTE_DIM as f64).sqrt();
    let encoder =
        std::array::from_fn(|_| std::array::from_fn(|_| scale * standard_normal(&mut rng)));
    Latents {
        genre_centroids,
        topic_vectors,
        country_centroids,
        age_centroids,
        encoder,
    }
}

/// Top `count` items by score, highest first.
fn top_by_score<T: Copy>(mut scored: Vec<(f64, T)>, count: usize) -> Vec<T> {
    scored.sort_by(|left, right| right.0.total_cmp(&left.0));
    scored
        .into_iter()
        .take(count)
        .map(|(_, item)| item)
        .collect()
}

fn build_shows(
    config: &WorldConfig,
    latents: &Latents,
    brand_new_from_day: u32,
) -> Result<(Vec<Show>, Vec<Episode>), WorldError> {
    let mut rng = stream_rng(config.seed, Stream::Shows, 0);
    let show_count = config.shows;
    // Genre sizes differ: comedy and news are crowded, religion is a niche.
    let genre_weights: Vec<f64> = (0..GENRES.len())
        .map(|genre| 1.0 / (genre as f64 + 3.0))
        .collect();
    let genre_table = alias_table(genre_weights, "genres")?;

    // Which shows are brand-new: a random subset, so ids do not reveal it.
    let brand_new_count = ((show_count as f64) * config.new_show_share).round() as usize;
    let mut order: Vec<usize> = (0..show_count).collect();
    order.shuffle(&mut rng);
    let mut created_day = vec![None; show_count];
    for &show in &order[..brand_new_count] {
        created_day[show] =
            Some(rng.random_range(brand_new_from_day..config.days.max(brand_new_from_day + 1)));
    }
    // Popularity ranks of the established shows: again a random order.
    let established: Vec<usize> = order[brand_new_count..].to_vec();

    let mut shows = Vec::with_capacity(show_count);
    let mut episodes = Vec::new();
    for (show_index, &created) in created_day.iter().enumerate() {
        let genre_count = match rng.random::<f64>() {
            draw if draw < 0.55 => 1,
            draw if draw < 0.90 => 2,
            _ => 3,
        };
        let mut genres: Vec<u8> = Vec::with_capacity(genre_count);
        while genres.len() < genre_count {
            let genre = genre_table.sample(&mut rng) as u8;
            if !genres.contains(&genre) {
                genres.push(genre);
            }
        }
        let noise = random_vector(&mut rng, 0.55);
        let latent: Vector = std::array::from_fn(|axis| {
            let centroid: f64 = genres
                .iter()
                .map(|&genre| latents.genre_centroids[usize::from(genre)][axis])
                .sum::<f64>()
                / genres.len() as f64;
            0.9 * centroid + noise[axis]
        });
        // Topics: mostly from the show's genres, the ones closest to its latent.
        let topic_count = rng.random_range(2..=6);
        let candidates: Vec<(f64, u16)> = genres
            .iter()
            .flat_map(|&genre| {
                (0..TOPICS_PER_GENRE)
                    .map(move |slot| (slot * GENRES.len() + usize::from(genre)) as u16)
            })
            .map(|topic| {
                let score = affinity(&latent, &latents.topic_vectors[usize::from(topic)])
                    + gumbel(&mut rng);
                (score, topic)
            })
            .collect();
        let mut topics = top_by_score(candidates, topic_count);
        if rng.random::<f64>() < 0.15 {
            let stray = rng.random_range(0..TOPIC_COUNT) as u16;
            if !topics.contains(&stray) {
                topics.push(stray);
            }
        }
        topics.sort_unstable();
        let embedding = std::array::from_fn(|row| {
            let projected: f64 = latents.encoder[row]
                .iter()
                .zip(&latent)
                .map(|(weight, value)| weight * value)
                .sum();
            (projected + config.content_embedding_noise * standard_normal(&mut rng)) as f32
        });

        // Episodes: a release cadence, newest near the end of the window for established
        // shows, from the creation day on for brand-new ones.
        let cadence = *[3i64, 7, 7, 7, 14].choose(&mut rng).unwrap_or(&7);
        let release_days: Vec<i64> = match created {
            Some(created) => (i64::from(created)..i64::from(config.days))
                .step_by(cadence as usize)
                .collect(),
            None => {
                let count = (1.0 + rng.random::<f64>().powi(2) * 40.0).round() as i64 + 3;
                let newest = i64::from(config.days) - 1 - rng.random_range(0..cadence);
                let mut days: Vec<i64> = (0..count).map(|back| newest - back * cadence).collect();
                days.reverse();
                days
            }
        };
        let first_episode = episodes.len() as u32;
        for release_day in &release_days {
            let episode_topic_count = rng.random_range(1..=3).min(topics.len());
            let mut episode_topics: Vec<u16> = topics
                .choose_multiple(&mut rng, episode_topic_count)
                .copied()
                .collect();
            if rng.random::<f64>() < 0.1 {
                episode_topics.push(rng.random_range(0..TOPIC_COUNT) as u16);
            }
            episode_topics.sort_unstable();
            episode_topics.dedup();
            let duration_s = (2400.0 * (0.5 * standard_normal(&mut rng)).exp())
                .round()
                .clamp(120.0, 14_400.0);
            episodes.push(Episode {
                show: show_index as u32,
                topics: episode_topics,
                duration_s,
                release_day: *release_day,
                quality: 0.15 * standard_normal(&mut rng),
            });
        }
        shows.push(Show {
            latent,
            genres,
            topics,
            embedding,
            streams_30d: 0.0,
            tier: BRAND_NEW_TIER,
            created_day: created,
            quality: 0.3 * standard_normal(&mut rng),
            popularity: -1.0,
            first_episode,
            episode_count: release_days.len() as u32,
        });
    }

    // Popularity: Zipf by rank with log-normal noise, then tiers by percentile.
    for (rank, &show) in established.iter().enumerate() {
        let noise = (0.25 * standard_normal(&mut rng)).exp();
        shows[show].streams_30d =
            (TOP_SHOW_STREAMS * ((rank + 1) as f64).powf(-ZIPF_EXPONENT) * noise)
                .round()
                .max(1.0);
    }
    // Brand-new shows have a handful of streams from the days they have been live.
    for show in shows.iter_mut().filter(|show| show.created_day.is_some()) {
        show.streams_30d = f64::from(rng.random_range(0..50u32));
    }
    let mut by_streams = established.clone();
    by_streams.sort_by(|&left, &right| {
        shows[right]
            .streams_30d
            .total_cmp(&shows[left].streams_30d)
            .then(left.cmp(&right))
    });
    let tier_ends: Vec<usize> = TIER_CUMULATIVE_SHARE
        .iter()
        .map(|share| (share * by_streams.len() as f64).ceil() as usize)
        .collect();
    for (position, &show) in by_streams.iter().enumerate() {
        let tier = tier_ends
            .iter()
            .position(|&end| position < end)
            .unwrap_or(7);
        shows[show].tier = tier as u8;
    }
    let log_streams: Vec<f64> = established
        .iter()
        .map(|&show| shows[show].streams_30d.ln())
        .collect();
    let mean = log_streams.iter().sum::<f64>() / log_streams.len().max(1) as f64;
    let variance = log_streams
        .iter()
        .map(|value| (value - mean).powi(2))
        .sum::<f64>()
        / log_streams.len().max(1) as f64;
    let deviation = variance.sqrt().max(1e-9);
    for &show in &established {
        shows[show].popularity = (shows[show].streams_30d.ln() - mean) / deviation;
    }
    Ok((shows, episodes))
}

/// Users are drawn in chunks, each from its own random stream, in parallel.
const USERS_PER_CHUNK: usize = 4096;

fn build_users(
    config: &WorldConfig,
    latents: &Latents,
    shows: &[Show],
    on_chunk: &(dyn Fn(u64) + Sync),
) -> Result<Vec<User>, WorldError> {
    // Listening follows popularity (sub-linearly: heavy listeners dig deeper).
    let established: Vec<u32> = (0..shows.len() as u32)
        .filter(|&show| shows[show as usize].created_day.is_none())
        .collect();
    let listening = alias_table(
        established
            .iter()
            .map(|&show| shows[show as usize].streams_30d.powf(0.75))
            .collect(),
        "listening",
    )?;
    let chunk_count = config.users.div_ceil(USERS_PER_CHUNK);
    let chunks: Vec<Vec<User>> = (0..chunk_count)
        .into_par_iter()
        .map(|chunk| {
            let mut rng = stream_rng(config.seed, Stream::Users, chunk as u64);
            let start = chunk * USERS_PER_CHUNK;
            let end = (start + USERS_PER_CHUNK).min(config.users);
            let users = (start..end)
                .map(|_| build_user(&mut rng, latents, shows, &established, &listening))
                .collect();
            on_chunk((end - start) as u64);
            users
        })
        .collect();
    Ok(chunks.into_iter().flatten().collect())
}

fn build_user(
    rng: &mut ChaCha8Rng,
    latents: &Latents,
    shows: &[Show],
    established: &[u32],
    listening: &WeightedAliasIndex<f64>,
) -> User {
    let country = pick_weighted(&COUNTRIES, rng);
    let platform = pick_weighted(&PLATFORMS, rng);
    let age_bucket = pick_weighted(&AGE_BUCKETS, rng);
    let noise = random_vector(rng, 0.8);
    let taste: Vector = std::array::from_fn(|axis| {
        latents.country_centroids[country][axis]
            + latents.age_centroids[age_bucket][axis]
            + noise[axis]
    });
    let profile = (country as u8, platform as u8, age_bucket as u8);
    let mut known =
        |value: usize| (rng.random::<f64>() >= MISSING_ATTRIBUTE_SHARE).then_some(value as u8);
    let (country, platform, age_bucket) = (known(country), known(platform), known(age_bucket));
    let activity = (0.9 * standard_normal(rng)).exp();
    let cold = rng.random::<f64>() < COLD_USER_SHARE;

    let mut history: Vec<u32> = Vec::new();
    if !cold {
        let wanted = ((8.0f64.ln() + 0.7 * standard_normal(rng)).exp().round() as usize)
            .clamp(1, HISTORY_MAX);
        let mut scored: Vec<(f64, u32)> = (0..3 * wanted)
            .map(|_| {
                let show = established[listening.sample(rng)];
                let score = 1.6 * affinity(&taste, &shows[show as usize].latent) + gumbel(rng);
                (score, show)
            })
            .collect();
        scored.sort_by(|left, right| right.0.total_cmp(&left.0).then(left.1.cmp(&right.1)));
        for (_, show) in scored {
            if history.len() == wanted {
                break;
            }
            if !history.contains(&show) {
                history.push(show);
            }
        }
        // Recency has nothing to do with how much they like a show.
        history.shuffle(rng);
    }
    let mut follows_sorted: Vec<u32> = history
        .iter()
        .copied()
        .filter(|_| rng.random::<f64>() < 0.25)
        .collect();
    follows_sorted.sort_unstable();
    let mut history_sorted = history.clone();
    history_sorted.sort_unstable();

    let topic_count = if cold {
        rng.random_range(0..=2)
    } else {
        rng.random_range(0..=8)
    };
    let candidates: Vec<(f64, u16)> = (0..25)
        .map(|_| {
            let topic = rng.random_range(0..TOPIC_COUNT);
            (
                1.5 * affinity(&taste, &latents.topic_vectors[topic]) + gumbel(rng),
                topic as u16,
            )
        })
        .collect();
    let mut search_topics: Vec<u16> = Vec::with_capacity(topic_count);
    for topic in top_by_score(candidates, 25) {
        if search_topics.len() == topic_count {
            break;
        }
        if !search_topics.contains(&topic) {
            search_topics.push(topic);
        }
    }
    User {
        taste,
        profile,
        country,
        platform,
        age_bucket,
        history,
        history_sorted,
        follows_sorted,
        search_topics,
        activity,
    }
}

/// The campaigns of a world and the ad creatives they run.
struct Campaigns {
    promotion: Vec<PromotionCampaign>,
    ad: Vec<AdCampaign>,
    creatives: Vec<Creative>,
}

fn build_campaigns(config: &WorldConfig, shows: &[Show]) -> Result<Campaigns, WorldError> {
    let mut rng = stream_rng(config.seed, Stream::Campaigns, 0);
    let established: Vec<u32> = (0..shows.len() as u32)
        .filter(|&show| shows[show as usize].created_day.is_none())
        .collect();
    let brand_new: Vec<u32> = (0..shows.len() as u32)
        .filter(|&show| shows[show as usize].created_day.is_some())
        .collect();

    // Promotions go to what is already popular (nearly proportional to streams).
    let promoted = alias_table(
        established
            .iter()
            .map(|&show| shows[show as usize].streams_30d.powf(0.9))
            .collect(),
        "promoted shows",
    )?;
    let promotion_campaign_count = (config.shows / 20).max(8);
    let promotion_campaigns = (0..promotion_campaign_count)
        .map(|_| {
            let size = rng.random_range(3..=25usize).min(established.len());
            let mut members: Vec<u32> = Vec::with_capacity(size);
            for _ in 0..size * 4 {
                if members.len() == size {
                    break;
                }
                let show = established[promoted.sample(&mut rng)];
                if !members.contains(&show) {
                    members.push(show);
                }
            }
            PromotionCampaign {
                shows: members,
                weight: (0.8 * standard_normal(&mut rng)).exp(),
                quality: 0.2 * standard_normal(&mut rng),
            }
        })
        .collect();

    // Ads are bought by creators of every size: members are drawn nearly uniformly, so
    // most are low-tier, and every brand-new show joins at least one launch campaign.
    let ad_campaign_count = (config.shows / 25).max(8);
    let mut ad_campaigns: Vec<AdCampaign> = Vec::with_capacity(ad_campaign_count);
    let mut creatives: Vec<Creative> = Vec::new();
    for _ in 0..ad_campaign_count {
        let size = rng.random_range(1..=8usize);
        let mut members: Vec<u32> = vec![
            *established
                .choose(&mut rng)
                .ok_or_else(|| WorldError::Internal("no established shows".into()))?,
        ];
        for _ in 1..size {
            let pool = if !brand_new.is_empty() && rng.random::<f64>() < 0.15 {
                &brand_new
            } else {
                &established
            };
            if let Some(&show) = pool.choose(&mut rng)
                && !members.contains(&show)
            {
                members.push(show);
            }
        }
        let creative_count = rng.random_range(1..=3u32);
        let first_creative = creatives.len() as u32;
        for _ in 0..creative_count {
            creatives.push(Creative {
                video: rng.random::<f64>() < 0.3,
                quality: 0.25 * standard_normal(&mut rng),
            });
        }
        ad_campaigns.push(AdCampaign {
            shows: members,
            show_weights: Vec::new(),
            creatives: (first_creative..first_creative + creative_count).collect(),
            weight: (0.7 * standard_normal(&mut rng)).exp(),
            quality: 0.2 * standard_normal(&mut rng),
            base_cost: rng.random_range(0.0135..0.04),
        });
    }
    for &show in &brand_new {
        let campaign = rng.random_range(0..ad_campaigns.len());
        if !ad_campaigns[campaign].shows.contains(&show) {
            ad_campaigns[campaign].shows.push(show);
        }
    }
    for campaign in &mut ad_campaigns {
        campaign.show_weights = campaign
            .shows
            .iter()
            .map(|&show| {
                if shows[show as usize].created_day.is_some() {
                    3.0
                } else {
                    1.0
                }
            })
            .collect();
    }
    Ok(Campaigns {
        promotion: promotion_campaigns,
        ad: ad_campaigns,
        creatives,
    })
}

impl Catalog {
    pub fn build(
        config: &WorldConfig,
        on_users: &(dyn Fn(u64) + Sync),
    ) -> Result<Catalog, WorldError> {
        let latents = latents(config.seed);
        let brand_new_from_day = config.brand_new_from_day();
        let (shows, episodes) = build_shows(config, &latents, brand_new_from_day)?;
        let users = build_users(config, &latents, &shows, on_users)?;
        let campaigns = build_campaigns(config, &shows)?;
        let ad_taste = AdTaste::build(config.seed, &users, &shows, &HOUR_WEIGHTS);
        Ok(Catalog {
            shows,
            episodes,
            users,
            promotion_campaigns: campaigns.promotion,
            ad_campaigns: campaigns.ad,
            creatives: campaigns.creatives,
            brand_new_from_day,
            ad_taste,
        })
    }

    /// Episodes of `show` released on or before `day`, oldest first.
    pub fn released_episodes(&self, show: u32, day: u32) -> std::ops::Range<u32> {
        let show = &self.shows[show as usize];
        let start = show.first_episode as usize;
        let end = start + show.episode_count as usize;
        let released = self.episodes[start..end]
            .partition_point(|episode| episode.release_day <= i64::from(day));
        show.first_episode..show.first_episode + released as u32
    }

    pub fn user_records(&self) -> Vec<UserRecord> {
        self.users
            .iter()
            .enumerate()
            .map(|(index, user)| UserRecord {
                id: Some(user_id(index as u32)),
                country: user
                    .country
                    .map(|country| COUNTRIES[usize::from(country)].0.to_string()),
                platform: user
                    .platform
                    .map(|platform| PLATFORMS[usize::from(platform)].0.to_string()),
                age_bucket: user
                    .age_bucket
                    .map(|age| AGE_BUCKETS[usize::from(age)].0.to_string()),
                history: Some(user.history.iter().map(|&show| show_id(show)).collect()),
                follows: Some(
                    user.follows_sorted
                        .iter()
                        .map(|&show| show_id(show))
                        .collect(),
                ),
                search_topics: Some(
                    user.search_topics
                        .iter()
                        .map(|&topic| topic_name(topic))
                        .collect(),
                ),
            })
            .collect()
    }

    /// Brand-new shows carry no `streams_30d` and no tier: the feature pipeline has not
    /// seen a full window of them yet. Their content features are known from day one.
    pub fn show_records(&self) -> Vec<ShowRecord> {
        self.shows
            .iter()
            .enumerate()
            .map(|(index, show)| {
                let established = show.created_day.is_none();
                ShowRecord {
                    id: Some(show_id(index as u32)),
                    genres: Some(
                        show.genres
                            .iter()
                            .map(|&genre| GENRES[usize::from(genre)].to_string())
                            .collect(),
                    ),
                    topics: Some(show.topics.iter().map(|&topic| topic_name(topic)).collect()),
                    embedding: Some(show.embedding.to_vec()),
                    streams_30d: established.then_some(show.streams_30d),
                    tier: established.then_some(show.tier),
                }
            })
            .collect()
    }

    pub fn episode_records(&self) -> Vec<EpisodeRecord> {
        self.episodes
            .iter()
            .enumerate()
            .map(|(index, episode)| EpisodeRecord {
                id: Some(episode_id(index as u32)),
                show_id: Some(show_id(episode.show)),
                topics: Some(
                    episode
                        .topics
                        .iter()
                        .map(|&topic| topic_name(topic))
                        .collect(),
                ),
                duration_s: Some(episode.duration_s),
            })
            .collect()
    }
}

pub(crate) fn user_id(index: u32) -> String {
    format!("u{index}")
}
pub(crate) fn show_id(index: u32) -> String {
    format!("s{index}")
}
pub(crate) fn episode_id(index: u32) -> String {
    format!("e{index}")
}
pub(crate) fn topic_name(topic: u16) -> String {
    format!("t{topic}")
}
pub(crate) fn promotion_campaign_id(index: u32) -> String {
    format!("p{index}")
}
pub(crate) fn ad_campaign_id(index: u32) -> String {
    format!("cp{index}")
}
pub(crate) fn creative_id(index: u32) -> String {
    format!("cr{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Affinity is scaled to unit variance for random standard-normal pairs.
    #[test]
    fn affinity_has_unit_variance_for_random_vectors() {
        let mut rng = stream_rng(1, Stream::Latents, 0);
        let samples: Vec<f64> = (0..20_000)
            .map(|_| affinity(&random_vector(&mut rng, 1.0), &random_vector(&mut rng, 1.0)))
            .collect();
        let variance =
            samples.iter().map(|value| value * value).sum::<f64>() / samples.len() as f64;
        assert!((variance - 1.0).abs() < 0.05, "variance {variance}");
    }

    /// Top-by-score returns the highest scores first and at most `count` items.
    #[test]
    fn top_by_score_keeps_the_best() {
        assert_eq!(
            top_by_score(vec![(0.1, 'a'), (0.9, 'b'), (0.5, 'c')], 2),
            vec!['b', 'c']
        );
    }
}
