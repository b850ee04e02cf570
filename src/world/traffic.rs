//! Impression traffic: who sees which promotion or ad, when and where, and what they do.
//! Rows are generated in fixed-size chunks, each from its own random stream, so that the
//! result is the same for a seed however many threads share the work.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use rand_distr::weighted::WeightedAliasIndex;
use rayon::prelude::*;

use super::catalog::{
    self, BRAND_NEW_TIER, Catalog, PLATFORMS, TIER_CUMULATIVE_SHARE, affinity, alias_table,
    standard_normal,
};
use super::outcomes::{
    self, Exposure, Format, Knobs, Labels, Layout, Probabilities, Slot, Surface,
};
use super::{Stream, WorldConfig, WorldError, keyed_rng, stream_rng};
use crate::entities::{CandidateKind, ContextRecord, CreativeRecord};
use crate::logs::{ChannelSummary, Impression, LabelRates, TierSummary};

/// Impressions per random stream. Fixed (not derived from the thread count) because the
/// chunking decides which random numbers each impression gets.
pub(crate) const IMPRESSIONS_PER_CHUNK: usize = 32_768;
pub(super) const SECONDS_PER_DAY: i64 = 86_400;
/// Marks an absent episode or creative in the compact row.
pub(crate) const NONE: u32 = u32::MAX;
/// Platforms with a big screen (index into `PLATFORMS`), where video ads can be watched.
const BIG_SCREEN_PLATFORMS: [&str; 2] = ["web", "desktop"];

/// Relative traffic by hour of day (UTC): a night trough, a morning commute, an evening
/// peak.
pub(crate) const HOUR_WEIGHTS: [f64; 24] = [
    0.30, 0.20, 0.15, 0.12, 0.12, 0.20, 0.45, 0.80, 1.00, 0.90, 0.80, 0.80, 0.90, 0.85, 0.80, 0.85,
    0.95, 1.05, 1.15, 1.25, 1.30, 1.20, 0.90, 0.55,
];
/// Where promotions are seen. A promotion sits in a shelf, a search result or the
/// now-playing view; the library shows the home shelf too.
const PROMOTION_SURFACES: [(Surface, f64); 4] = [
    (Surface::Home, 0.5),
    (Surface::Search, 0.2),
    (Surface::NowPlaying, 0.2),
    (Surface::Library, 0.1),
];
/// Where the listener started the playback an ad interrupts.
const AD_SURFACES: [(Surface, f64); 4] = [
    (Surface::NowPlaying, 0.5),
    (Surface::Home, 0.2),
    (Surface::Library, 0.2),
    (Surface::Search, 0.1),
];
const AD_SLOTS: [(Slot, f64); 3] = [
    (Slot::Preroll, 0.40),
    (Slot::Midroll, 0.45),
    (Slot::Postroll, 0.15),
];
const LAYOUTS: [(Layout, f64); 3] = [
    (Layout::Card, 0.5),
    (Layout::Banner, 0.3),
    (Layout::Hero, 0.2),
];
/// Share of impressions that name an episode rather than the show alone.
const PROMOTION_EPISODE_SHARE: f64 = 0.5;
pub(crate) const AD_EPISODE_SHARE: f64 = 0.7;
/// How sharply targeting prefers shows the user likes, among the candidates drawn from
/// the campaign: promotions are placed by a recommender, ads by a looser ad server.
const PROMOTION_TARGETING: f64 = 1.2;
const PROMOTION_CANDIDATES: usize = 3;
const AD_TARGETING: f64 = 0.8;
const AD_CANDIDATES: usize = 2;

/// One impression in compact form: indices into the catalog instead of strings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub timestamp: i64,
    pub probabilities: Probabilities,
    pub cost: f64,
    pub user: u32,
    pub show: u32,
    pub episode: u32,
    pub campaign: u32,
    pub creative: u32,
    pub session_length_s: u32,
    pub day: u32,
    pub is_ad: bool,
    pub slot: Slot,
    pub layout: Option<Layout>,
    pub format: Option<Format>,
    pub surface: Surface,
    pub labels: Labels,
    pub tier: u8,
    pub brand_new: bool,
    /// Ads: primary genre of the show the ad plays in (an index into the genres).
    pub host_genre: Option<u8>,
}

pub(crate) fn pick<T: Copy, R: Rng>(table: &[(T, f64)], rng: &mut R) -> T {
    let total: f64 = table.iter().map(|(_, weight)| weight).sum();
    let mut target = rng.random::<f64>() * total;
    for (value, weight) in table {
        if target < *weight {
            return *value;
        }
        target -= weight;
    }
    table[table.len() - 1].0
}

/// Picks one of `candidates` with probability proportional to `exp(sharpness * affinity)`.
pub(crate) fn targeted<R: Rng>(
    catalog: &Catalog,
    user: u32,
    candidates: &[u32],
    sharpness: f64,
    rng: &mut R,
) -> u32 {
    let taste = &catalog.users[user as usize].taste;
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&show| (sharpness * affinity(taste, &catalog.shows[show as usize].latent)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (show, weight) in candidates.iter().zip(&weights) {
        if target < *weight {
            return *show;
        }
        target -= weight;
    }
    candidates[candidates.len() - 1]
}

pub(crate) struct Tables {
    days: WeightedAliasIndex<f64>,
    hours: WeightedAliasIndex<f64>,
    users: WeightedAliasIndex<f64>,
    promotion_campaigns: WeightedAliasIndex<f64>,
    pub ad_campaigns: WeightedAliasIndex<f64>,
    /// Established shows and their listening weights: the host of a cold user's ad.
    established: Vec<u32>,
    listening: WeightedAliasIndex<f64>,
}

impl Tables {
    pub fn new(config: &WorldConfig, catalog: &Catalog) -> Result<Tables, WorldError> {
        let established: Vec<u32> = (0..catalog.shows.len() as u32)
            .filter(|&show| catalog.shows[show as usize].created_day.is_none())
            .collect();
        // A weekly rhythm on slow growth, so that later days are a little busier.
        let days = (0..config.days)
            .map(|day| {
                let weekday = f64::from(day % 7);
                (1.0 + 0.12 * (std::f64::consts::TAU * weekday / 7.0).cos())
                    * (1.0 + 0.005 * f64::from(day))
            })
            .collect();
        Ok(Tables {
            days: alias_table(days, "days")?,
            hours: alias_table(HOUR_WEIGHTS.to_vec(), "hours")?,
            users: alias_table(
                catalog.users.iter().map(|user| user.activity).collect(),
                "users",
            )?,
            promotion_campaigns: alias_table(
                catalog
                    .promotion_campaigns
                    .iter()
                    .map(|campaign| campaign.weight)
                    .collect(),
                "promotion campaigns",
            )?,
            ad_campaigns: alias_table(
                catalog
                    .ad_campaigns
                    .iter()
                    .map(|campaign| campaign.weight)
                    .collect(),
                "ad campaigns",
            )?,
            listening: alias_table(
                established
                    .iter()
                    .map(|&show| catalog.shows[show as usize].streams_30d.powf(0.75))
                    .collect(),
                "listening",
            )?,
            established,
        })
    }
}

/// Everything an impression's outcome depends on, in catalog indices: what was shown to
/// whom, where and when. [`World::exposure`] turns it into the outcome model's input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    pub is_ad: bool,
    pub user: u32,
    pub show: u32,
    /// `NONE` when the impression names no episode.
    pub episode: u32,
    pub campaign: u32,
    /// `NONE` for promotions.
    pub creative: u32,
    pub slot: Slot,
    pub layout: Option<Layout>,
    pub format: Option<Format>,
    pub surface: Surface,
    pub timestamp: i64,
    pub session_length_s: u32,
}

/// The simulated world's static side and the knobs of its outcome model: what the
/// traffic draws from and what the [`super::Oracle`] rebuilds.
pub(crate) struct World<'a> {
    pub config: &'a WorldConfig,
    pub catalog: &'a Catalog,
    pub tables: &'a Tables,
}

impl World<'_> {
    pub fn knobs(&self) -> Knobs {
        Knobs {
            ad_affinity_correlation: self.config.ad_affinity_correlation,
            ad_structure: self.config.ad_structure,
        }
    }

    /// Hour of day (UTC) of a timestamp of this world.
    pub fn hour(&self, timestamp: i64) -> u32 {
        ((timestamp - self.config.start_timestamp).rem_euclid(SECONDS_PER_DAY) / 3600) as u32
    }

    /// The primary genre of the show an ad to `user` at `timestamp` plays in: one of the
    /// user's recent shows (the most recent likeliest), or for a user without history a
    /// show drawn by listening. Drawn from a stream keyed by user and second, so that the
    /// same moment always has the same host, in the logs and in the oracle alike.
    pub fn host_genre(&self, user: u32, timestamp: i64) -> Option<u8> {
        let second = (timestamp - self.config.start_timestamp).max(0) as u64;
        let mut rng = keyed_rng(
            self.config.seed,
            Stream::Hosts,
            (u64::from(user) << 32) | (second & 0xFFFF_FFFF),
        );
        let history = &self.catalog.users[user as usize].history;
        let host = if history.is_empty() {
            *self
                .tables
                .established
                .get(self.tables.listening.sample(&mut rng))?
        } else {
            let weights: Vec<f64> = (0..history.len()).map(|k| 1.0 / (k as f64 + 1.0)).collect();
            let total: f64 = weights.iter().sum();
            let mut target = rng.random::<f64>() * total;
            let mut chosen = history[history.len() - 1];
            for (show, weight) in history.iter().zip(&weights) {
                if target < *weight {
                    chosen = *show;
                    break;
                }
                target -= weight;
            }
            chosen
        };
        self.catalog.shows[host as usize].genres.first().copied()
    }

    /// The outcome model's input for one placement.
    pub fn exposure(&self, placement: &Placement) -> Exposure {
        let catalog = self.catalog;
        let (user, show) = (placement.user, placement.show);
        let show_record = &catalog.shows[show as usize];
        let user_record = &catalog.users[user as usize];
        let hour = self.hour(placement.timestamp);
        let (campaign_quality, creative_quality) = if placement.is_ad {
            (
                catalog.ad_campaigns[placement.campaign as usize].quality,
                catalog
                    .creatives
                    .get(placement.creative as usize)
                    .map_or(0.0, |creative| creative.quality),
            )
        } else {
            (
                catalog.promotion_campaigns[placement.campaign as usize].quality,
                0.0,
            )
        };
        let host_match = placement.is_ad
            && self
                .host_genre(user, placement.timestamp)
                .is_some_and(|genre| show_record.genres.contains(&genre));
        Exposure {
            is_ad: placement.is_ad,
            affinity: affinity(&user_record.taste, &show_record.latent),
            ad_own_affinity: if placement.is_ad {
                catalog
                    .ad_taste
                    .own_affinity(user, &show_record.latent, hour)
            } else {
                0.0
            },
            host_match,
            big_screen: BIG_SCREEN_PLATFORMS
                .contains(&PLATFORMS[usize::from(user_record.profile.1)].0),
            listened_before: user_record.history_sorted.binary_search(&show).is_ok(),
            follows_show: user_record.follows_sorted.binary_search(&show).is_ok(),
            topic_match: user_record
                .search_topics
                .iter()
                .any(|topic| show_record.topics.binary_search(topic).is_ok()),
            show_quality: show_record.quality,
            popularity: show_record.popularity,
            episode_quality: if placement.episode == NONE {
                0.0
            } else {
                catalog.episodes[placement.episode as usize].quality
            },
            campaign_quality,
            creative_quality,
            slot: placement.slot,
            layout: placement.layout,
            format: placement.format,
            surface: placement.surface,
            hour,
            session_length_s: f64::from(placement.session_length_s),
        }
    }

    /// The true probabilities of one placement.
    pub fn probabilities(&self, placement: &Placement) -> Probabilities {
        outcomes::probabilities(&self.exposure(placement), self.knobs())
    }
}

/// The ad `campaign` places for `user` on `day`: two of its live shows drawn, one kept
/// by targeting, and one of its creatives. Returns (show, creative).
pub(crate) fn place_ad<R: Rng>(
    catalog: &Catalog,
    campaign: &catalog::AdCampaign,
    user: u32,
    day: u32,
    rng: &mut R,
) -> (u32, u32) {
    let candidates: Vec<u32> = (0..AD_CANDIDATES)
        .map(|_| live_ad_show(catalog, campaign, day, rng))
        .collect();
    let show = targeted(catalog, user, &candidates, AD_TARGETING, rng);
    let creative = *campaign.creatives.choose(rng).unwrap_or(&0);
    (show, creative)
}

/// With probability `share`, one of the three newest episodes of `show` released by
/// `day` (promotions and ads push what is fresh); otherwise `NONE`.
pub(crate) fn pick_episode<R: Rng>(
    catalog: &Catalog,
    show: u32,
    day: u32,
    share: f64,
    rng: &mut R,
) -> u32 {
    let released = catalog.released_episodes(show, day);
    if rng.random::<f64>() < share && !released.is_empty() {
        let newest = released.end - 1;
        let back = rng.random_range(0..3u32.min(released.len() as u32));
        newest - back
    } else {
        NONE
    }
}

/// Generates every impression, sorted by time (ties keep generation order).
pub(crate) fn generate(
    config: &WorldConfig,
    catalog: &Catalog,
    on_chunk: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Row>, WorldError> {
    let tables = Tables::new(config, catalog)?;
    let world = World {
        config,
        catalog,
        tables: &tables,
    };
    let total = config.impressions;
    let ad_count = config.ad_count();
    let chunk_count = total.div_ceil(IMPRESSIONS_PER_CHUNK);
    let chunks: Vec<Vec<Row>> = (0..chunk_count)
        .into_par_iter()
        .map(|chunk| {
            let mut rng = stream_rng(config.seed, Stream::Impressions, chunk as u64);
            let start = chunk * IMPRESSIONS_PER_CHUNK;
            let end = (start + IMPRESSIONS_PER_CHUNK).min(total);
            let rows: Vec<Row> = (start..end)
                .map(|index| impression(&world, index < ad_count, &mut rng))
                .collect();
            on_chunk((end - start) as u64);
            rows
        })
        .collect();
    let mut rows: Vec<Row> = chunks.into_iter().flatten().collect();
    rows.par_sort_by_key(|row| row.timestamp);
    Ok(rows)
}

fn impression(world: &World<'_>, is_ad: bool, rng: &mut ChaCha8Rng) -> Row {
    let day = world.tables.days.sample(rng) as u32;
    impression_on_day(world, is_ad, day, rng)
}

/// One impression on `day`, which may lie after the window (new objectives are measured
/// there): everything but the day is drawn as for the logs.
pub(crate) fn impression_on_day(
    world: &World<'_>,
    is_ad: bool,
    day: u32,
    rng: &mut ChaCha8Rng,
) -> Row {
    let (config, catalog, tables) = (world.config, world.catalog, world.tables);
    let hour = tables.hours.sample(rng) as u32;
    let timestamp = config.start_timestamp
        + i64::from(day) * SECONDS_PER_DAY
        + i64::from(hour) * 3600
        + rng.random_range(0..3600i64);
    let user = tables.users.sample(rng) as u32;
    let session_length_s = (900.0 * (0.8 * standard_normal(rng)).exp())
        .round()
        .clamp(10.0, 14_400.0) as u32;

    let (surface, slot, layout, format, show, campaign, creative, cost);
    if is_ad {
        let campaign_index = tables.ad_campaigns.sample(rng);
        let ad_campaign = &catalog.ad_campaigns[campaign_index];
        surface = pick(&AD_SURFACES, rng);
        slot = pick(&AD_SLOTS, rng);
        layout = None;
        let (chosen_show, creative_index) = place_ad(catalog, ad_campaign, user, day, rng);
        show = chosen_show;
        format = Some(if catalog.creatives[creative_index as usize].video {
            Format::Video
        } else {
            Format::Audio
        });
        campaign = campaign_index as u32;
        creative = creative_index;
        cost = ad_campaign.base_cost * slot.cost_multiplier();
    } else {
        let campaign_index = tables.promotion_campaigns.sample(rng);
        let promotion_campaign = &catalog.promotion_campaigns[campaign_index];
        surface = pick(&PROMOTION_SURFACES, rng);
        slot = match surface {
            Surface::Home | Surface::Library => Slot::HomeShelf,
            Surface::Search => Slot::Search,
            Surface::NowPlaying => Slot::NowPlaying,
        };
        layout = Some(pick(&LAYOUTS, rng));
        format = None;
        let candidates: Vec<u32> = (0..PROMOTION_CANDIDATES)
            .filter_map(|_| promotion_campaign.shows.choose(rng).copied())
            .collect();
        show = if candidates.is_empty() {
            0
        } else {
            targeted(catalog, user, &candidates, PROMOTION_TARGETING, rng)
        };
        campaign = campaign_index as u32;
        creative = NONE;
        cost = 0.0;
    }

    let episode_share = if is_ad {
        AD_EPISODE_SHARE
    } else {
        PROMOTION_EPISODE_SHARE
    };
    let episode = pick_episode(catalog, show, day, episode_share, rng);
    let placement = Placement {
        is_ad,
        user,
        show,
        episode,
        campaign,
        creative,
        slot,
        layout,
        format,
        surface,
        timestamp,
        session_length_s,
    };
    let probabilities = world.probabilities(&placement);
    let labels = outcomes::draw(&probabilities, rng);
    let show_record = &catalog.shows[show as usize];
    Row {
        timestamp,
        probabilities,
        cost,
        user,
        show,
        episode,
        campaign,
        creative,
        session_length_s,
        day,
        is_ad,
        slot,
        layout,
        format,
        surface,
        labels,
        tier: show_record.tier,
        brand_new: show_record.created_day.is_some(),
        host_genre: if is_ad {
            world.host_genre(user, timestamp)
        } else {
            None
        },
    }
}

/// A show of the campaign that is live on `day`, favouring brand-new ones by the
/// campaign's weights. The first member is established, so there always is one.
fn live_ad_show<R: Rng>(
    catalog: &Catalog,
    campaign: &catalog::AdCampaign,
    day: u32,
    rng: &mut R,
) -> u32 {
    let live = |show: &u32| catalog.shows[*show as usize].is_live(day);
    let total: f64 = campaign
        .shows
        .iter()
        .zip(&campaign.show_weights)
        .filter(|(show, _)| live(show))
        .map(|(_, weight)| weight)
        .sum();
    let mut target = rng.random::<f64>() * total;
    for (show, weight) in campaign.shows.iter().zip(&campaign.show_weights) {
        if !live(show) {
            continue;
        }
        if target < *weight {
            return *show;
        }
        target -= weight;
    }
    campaign.shows[0]
}

impl Row {
    pub fn kind(self) -> CandidateKind {
        if self.is_ad {
            CandidateKind::Ad
        } else {
            CandidateKind::Promotion
        }
    }

    /// The row as a log record; `impression_id` is its 1-based position in time order.
    pub fn to_impression(self, impression_id: u64) -> Impression {
        let creative = if self.is_ad {
            CreativeRecord {
                creative_id: (self.creative != NONE).then(|| catalog::creative_id(self.creative)),
                campaign_id: Some(catalog::ad_campaign_id(self.campaign)),
                format: self.format.map(|format| format.as_str().to_string()),
                slot: Some(self.slot.as_str().to_string()),
                layout: None,
            }
        } else {
            CreativeRecord {
                creative_id: None,
                campaign_id: Some(catalog::promotion_campaign_id(self.campaign)),
                format: None,
                slot: Some(self.slot.as_str().to_string()),
                layout: self.layout.map(|layout| layout.as_str().to_string()),
            }
        };
        Impression {
            impression_id,
            timestamp: self.timestamp,
            day: self.day,
            user_id: catalog::user_id(self.user),
            kind: self.kind(),
            show_id: catalog::show_id(self.show),
            episode_id: (self.episode != NONE).then(|| catalog::episode_id(self.episode)),
            show_tier: self.tier,
            creative,
            context: ContextRecord {
                timestamp: Some(self.timestamp),
                surface: Some(self.surface.as_str().to_string()),
                session_length_s: Some(f64::from(self.session_length_s)),
                host_genre: self
                    .host_genre
                    .map(|genre| catalog::GENRES[usize::from(genre)].to_string()),
            },
            cost: self.cost,
            stream: self.labels.stream,
            click: self.labels.click,
            like: self.labels.like,
            follow: self.labels.follow,
            p_stream: self.probabilities.stream,
            p_click: self.probabilities.click,
            p_like: self.probabilities.like,
            p_follow: self.probabilities.follow,
        }
    }
}

/// Summary figures are rounded to 8 decimals: plenty for a rate, and short decimals
/// parse back to exactly the same `f64`, so `world.json` round-trips exactly.
fn rounded(value: f64) -> f64 {
    (value * 1e8).round() / 1e8
}

#[derive(Default)]
struct ChannelTotals {
    impressions: u64,
    observed: [u64; 4],
    expected: [f64; 4],
    cost: f64,
    brand_new: u64,
}

/// Per-channel rates and per-tier counts. Summed sequentially in time order, so that the
/// floating-point sums (and so `world.json`) are the same on every run.
pub(crate) fn summarize(
    catalog: &Catalog,
    rows: &[Row],
) -> (BTreeMap<String, ChannelSummary>, Vec<TierSummary>) {
    let mut totals: [ChannelTotals; 2] = Default::default();
    let mut tier_impressions = [[0u64; 2]; 8];
    for row in rows {
        let channel = usize::from(row.is_ad);
        let entry = &mut totals[channel];
        entry.impressions += 1;
        let labels = [
            row.labels.stream,
            row.labels.click,
            row.labels.like,
            row.labels.follow,
        ];
        let probabilities = [
            row.probabilities.stream,
            row.probabilities.click,
            row.probabilities.like,
            row.probabilities.follow,
        ];
        for label in 0..4 {
            entry.observed[label] += u64::from(labels[label]);
            entry.expected[label] += probabilities[label];
        }
        entry.cost += row.cost;
        entry.brand_new += u64::from(row.brand_new);
        tier_impressions[usize::from(row.tier.min(7))][channel] += 1;
    }
    let all = rows.len().max(1) as f64;
    let mut channels = BTreeMap::new();
    for (channel, kind, campaigns) in [
        (
            0,
            CandidateKind::Promotion,
            catalog.promotion_campaigns.len(),
        ),
        (1, CandidateKind::Ad, catalog.ad_campaigns.len()),
    ] {
        let entry = &totals[channel];
        let count = entry.impressions.max(1) as f64;
        let rates = |values: [f64; 4]| LabelRates {
            stream: rounded(values[0] / count),
            click: rounded(values[1] / count),
            like: rounded(values[2] / count),
            follow: rounded(values[3] / count),
        };
        channels.insert(
            kind.as_str().to_string(),
            ChannelSummary {
                impressions: entry.impressions,
                share: rounded(entry.impressions as f64 / all),
                observed: rates(entry.observed.map(|value| value as f64)),
                expected: rates(entry.expected),
                campaigns: campaigns as u64,
                mean_cost: rounded(entry.cost / count),
                brand_new_impressions: entry.brand_new,
            },
        );
    }

    let established_streams: f64 = catalog
        .shows
        .iter()
        .filter(|show| show.created_day.is_none())
        .map(|show| show.streams_30d)
        .sum();
    let tiers = (0..TIER_CUMULATIVE_SHARE.len() as u8)
        .map(|tier| {
            let streams: Vec<f64> = catalog
                .shows
                .iter()
                .filter(|show| show.created_day.is_none() && show.tier == tier)
                .map(|show| show.streams_30d)
                .collect();
            let min = streams.iter().copied().fold(f64::INFINITY, f64::min);
            let max = streams.iter().copied().fold(0.0, f64::max);
            TierSummary {
                tier,
                shows: streams.len() as u64,
                min_streams_30d: if streams.is_empty() { 0.0 } else { min },
                max_streams_30d: max,
                streams_share: rounded(streams.iter().sum::<f64>() / established_streams.max(1.0)),
                promotion_impressions: tier_impressions[usize::from(tier)][0],
                ad_impressions: tier_impressions[usize::from(tier)][1],
            }
        })
        .collect();
    debug_assert_eq!(BRAND_NEW_TIER, 7);
    (channels, tiers)
}
