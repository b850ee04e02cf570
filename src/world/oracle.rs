//! The world's own answer to "what if": true probabilities for impressions that were
//! never shown, for the evaluation's A/B replay.
//!
//! A logged impression says what happened to the ad that was shown; an A/B test needs
//! what would have happened with another. The [`Oracle`] rebuilds the world from the
//! settings in its `world.json` (the same seed gives the same users, shows, campaigns
//! and latent tastes) and draws, for a logged ad opportunity, other campaigns' ads for
//! the same user at the same moment and slot, priced and scored by the very outcome
//! model that drew the logs: no second copy of it exists.
//!
//! Like the rest of `world`, this knows nothing of features or models; it answers with
//! [`Impression`] records, as the logs would have held them.

use std::path::Path;

use rand_distr::Distribution;

use super::catalog::{Catalog, Show};
use super::outcomes::{Format, Labels, Layout, Slot, Surface};
use super::traffic::{self, AD_EPISODE_SHARE, NONE, Placement, Row, Tables, World};
use super::{Stream, WorldConfig, WorldError, keyed_rng};
use crate::entities::CandidateKind;
use crate::logs::{self, Impression, LogError};

/// Tries to find a campaign not yet among an opportunity's candidates before accepting a
/// repeat (a world may have fewer campaigns than an auction wants).
const DISTINCT_CAMPAIGN_TRIES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    #[error(transparent)]
    World(#[from] WorldError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The rebuilt world is not the one in the folder (another build, edited files).
    #[error(
        "{dir}: rebuilding the world from world.json gives {what}; was it simulated by another version?"
    )]
    Mismatch { dir: String, what: String },
    #[error("impression {impression_id}: {message}")]
    Impression { impression_id: u64, message: String },
}

/// A rebuilt world that answers with true probabilities.
pub struct Oracle {
    config: WorldConfig,
    catalog: Catalog,
    tables: Tables,
}

fn index_of(id: &str, prefix: &str, len: usize) -> Option<u32> {
    let digits = id.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    ((index as usize) < len).then_some(index)
}

fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

fn parse_named<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, text: &str) -> Option<T> {
    all.iter().copied().find(|value| name(*value) == text)
}

const SURFACES: [Surface; 4] = [
    Surface::Home,
    Surface::Search,
    Surface::Library,
    Surface::NowPlaying,
];
const SLOTS: [Slot; 6] = [
    Slot::HomeShelf,
    Slot::Search,
    Slot::NowPlaying,
    Slot::Preroll,
    Slot::Midroll,
    Slot::Postroll,
];
const LAYOUTS: [Layout; 3] = [Layout::Card, Layout::Banner, Layout::Hero];
const FORMATS: [Format; 2] = [Format::Audio, Format::Video];

impl Oracle {
    /// Rebuilds the world in `dir` from its `world.json`, and checks that the rebuilt
    /// catalog is the one that was simulated.
    pub fn load(dir: &Path) -> Result<Oracle, OracleError> {
        let info = logs::read_world_info(dir)?;
        let config = WorldConfig::from_settings(&info.settings)?;
        let oracle = Oracle::build(&config)?;
        let brand_new = oracle
            .catalog
            .shows
            .iter()
            .filter(|show| show.created_day.is_some())
            .count() as u64;
        let campaigns = info
            .summary
            .channels
            .get(CandidateKind::Ad.as_str())
            .map(|channel| channel.campaigns);
        if brand_new != info.summary.brand_new_shows
            || campaigns != Some(oracle.catalog.ad_campaigns.len() as u64)
        {
            return Err(OracleError::Mismatch {
                dir: dir.display().to_string(),
                what: format!(
                    "{brand_new} brand-new shows and {} ad campaigns (world.json: {} and {campaigns:?})",
                    oracle.catalog.ad_campaigns.len(),
                    info.summary.brand_new_shows
                ),
            });
        }
        Ok(oracle)
    }

    /// Builds the world of `config` (its catalog only: no impressions are drawn).
    pub fn build(config: &WorldConfig) -> Result<Oracle, WorldError> {
        let catalog = Catalog::build(config, &|_| {})?;
        let tables = Tables::new(config, &catalog)?;
        Ok(Oracle {
            config: config.clone(),
            catalog,
            tables,
        })
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    fn world(&self) -> World<'_> {
        World {
            config: &self.config,
            catalog: &self.catalog,
            tables: &self.tables,
        }
    }

    /// The placement a logged impression describes, in catalog indices.
    fn placement(&self, impression: &Impression) -> Result<Placement, OracleError> {
        let bad = |message: String| OracleError::Impression {
            impression_id: impression.impression_id,
            message,
        };
        let catalog = &self.catalog;
        let is_ad = impression.kind == CandidateKind::Ad;
        let user = index_of(&impression.user_id, "u", catalog.users.len())
            .ok_or_else(|| bad(format!("unknown user {:?}", impression.user_id)))?;
        let show = index_of(&impression.show_id, "s", catalog.shows.len())
            .ok_or_else(|| bad(format!("unknown show {:?}", impression.show_id)))?;
        let episode = match &impression.episode_id {
            None => NONE,
            Some(id) => index_of(id, "e", catalog.episodes.len())
                .filter(|episode| catalog.episodes[*episode as usize].show == show)
                .ok_or_else(|| bad(format!("unknown episode {id:?} of {}", impression.show_id)))?,
        };
        let creative_record = &impression.creative;
        let campaign_id = creative_record
            .campaign_id
            .as_deref()
            .ok_or_else(|| bad("no campaign".into()))?;
        let (campaign, creative) = if is_ad {
            let campaign = index_of(campaign_id, "cp", catalog.ad_campaigns.len())
                .ok_or_else(|| bad(format!("unknown ad campaign {campaign_id:?}")))?;
            let creative_id = creative_record.creative_id.as_deref().unwrap_or("");
            let creative = index_of(creative_id, "cr", catalog.creatives.len())
                .ok_or_else(|| bad(format!("unknown creative {creative_id:?}")))?;
            (campaign, creative)
        } else {
            let campaign = index_of(campaign_id, "p", catalog.promotion_campaigns.len())
                .ok_or_else(|| bad(format!("unknown promotion campaign {campaign_id:?}")))?;
            (campaign, NONE)
        };
        let slot = parse_named(&SLOTS, Slot::as_str, text(&creative_record.slot))
            .ok_or_else(|| bad(format!("unknown slot {:?}", creative_record.slot)))?;
        let surface = parse_named(
            &SURFACES,
            Surface::as_str,
            text(&impression.context.surface),
        )
        .ok_or_else(|| bad(format!("unknown surface {:?}", impression.context.surface)))?;
        let layout = match &creative_record.layout {
            None => None,
            Some(layout) => Some(
                parse_named(&LAYOUTS, Layout::as_str, layout)
                    .ok_or_else(|| bad(format!("unknown layout {layout:?}")))?,
            ),
        };
        let format = match &creative_record.format {
            None => None,
            Some(format) => Some(
                parse_named(&FORMATS, Format::as_str, format)
                    .ok_or_else(|| bad(format!("unknown format {format:?}")))?,
            ),
        };
        let session = impression
            .context
            .session_length_s
            .ok_or_else(|| bad("no session length".into()))?;
        Ok(Placement {
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
            timestamp: impression.timestamp,
            session_length_s: session.round().clamp(0.0, f64::from(u32::MAX)) as u32,
        })
    }

    /// The true stream, click, like and follow probabilities of a logged impression,
    /// recomputed: the `p_*` columns the logs hold for it.
    pub fn probabilities(&self, impression: &Impression) -> Result<[f64; 4], OracleError> {
        let probabilities = self.world().probabilities(&self.placement(impression)?);
        Ok([
            probabilities.stream,
            probabilities.click,
            probabilities.like,
            probabilities.follow,
        ])
    }

    /// `count` ads that could fill a logged ad opportunity: the logged ad first, then
    /// ads of other campaigns (drawn by budget, as the traffic draws them) for the same
    /// user, moment, surface, session and slot, each with its show, creative, episode
    /// and cost drawn as the traffic would, and its true probabilities in `p_*` (labels
    /// are left false: the caller draws outcomes). `draw` picks an independent set.
    pub fn ad_candidates(
        &self,
        opportunity: &Impression,
        count: usize,
        draw: u64,
    ) -> Result<Vec<Impression>, OracleError> {
        let logged = self.placement(opportunity)?;
        if !logged.is_ad {
            return Err(OracleError::Impression {
                impression_id: opportunity.impression_id,
                message: "not an ad: only ad opportunities have competing ads".into(),
            });
        }
        let world = self.world();
        let catalog = &self.catalog;
        let day =
            u32::try_from((opportunity.timestamp - self.config.start_timestamp).div_euclid(86_400))
                .unwrap_or(0);
        let mut rng = keyed_rng(
            self.config.seed,
            Stream::Counterfactuals,
            (draw << 32) ^ opportunity.impression_id,
        );
        let mut candidates = vec![opportunity.clone()];
        let mut campaigns = vec![logged.campaign];
        while candidates.len() < count {
            let mut campaign = self.tables.ad_campaigns.sample(&mut rng) as u32;
            for _ in 0..DISTINCT_CAMPAIGN_TRIES {
                if !campaigns.contains(&campaign) {
                    break;
                }
                campaign = self.tables.ad_campaigns.sample(&mut rng) as u32;
            }
            campaigns.push(campaign);
            let ad_campaign = &catalog.ad_campaigns[campaign as usize];
            let (show, creative) =
                traffic::place_ad(catalog, ad_campaign, logged.user, day, &mut rng);
            let episode = traffic::pick_episode(catalog, show, day, AD_EPISODE_SHARE, &mut rng);
            let format = if catalog.creatives[creative as usize].video {
                Format::Video
            } else {
                Format::Audio
            };
            let placement = Placement {
                show,
                episode,
                campaign,
                creative,
                format: Some(format),
                ..logged
            };
            let show_record: &Show = &catalog.shows[show as usize];
            let row = Row {
                timestamp: logged.timestamp,
                probabilities: world.probabilities(&placement),
                cost: ad_campaign.base_cost * logged.slot.cost_multiplier(),
                user: logged.user,
                show,
                episode,
                campaign,
                creative,
                session_length_s: logged.session_length_s,
                day,
                is_ad: true,
                slot: logged.slot,
                layout: None,
                format: Some(format),
                surface: logged.surface,
                labels: Labels {
                    stream: false,
                    click: false,
                    like: false,
                    follow: false,
                },
                tier: show_record.tier,
                brand_new: show_record.created_day.is_some(),
                host_genre: world.host_genre(logged.user, logged.timestamp),
            };
            let mut candidate = row.to_impression(opportunity.impression_id);
            // The moment is the logged one, context included, whatever the row keeps.
            candidate.context = opportunity.context.clone();
            candidates.push(candidate);
        }
        Ok(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids parse only with their own prefix and within the catalog.
    #[test]
    fn ids_parse_with_prefix_and_range() {
        assert_eq!(index_of("u12", "u", 20), Some(12));
        assert_eq!(index_of("u12", "u", 12), None);
        assert_eq!(index_of("cp3", "p", 20), None);
        assert_eq!(index_of("u", "u", 20), None);
        assert_eq!(index_of("u-1", "u", 20), None);
    }
}
