//! The outcome model: how likely a user is to stream, click, like and follow after one
//! impression, and the draw of those outcomes.
//!
//! One latent user-show affinity drives every label of both channels; that shared
//! structure is what lets promotion data help predict ad streams (the paper's premise).
//! Each channel, slot, layout, format and context then adds its own offsets, so that ad
//! streams are not just rescaled promotion streams. All coefficients are named here so
//! that the README's description and the code can be checked against each other.
//!
//! Two knobs ([`Knobs`]) give ads more of their own signal; at their defaults every
//! probability is, bit for bit, what it was before they existed. The ad affinity
//! correlation mixes an ad-specific affinity into every ad label; the ad structure
//! scales ad-only effects that features can see: whether the show the ad plays in (the
//! host) has the advertised show's genre, the slot against the session length, the
//! format against the screen, and larger creative and campaign effects.

use rand::Rng;

/// Where the user is in the app when the impression happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    Home,
    Search,
    Library,
    NowPlaying,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Home => "home",
            Surface::Search => "search",
            Surface::Library => "library",
            Surface::NowPlaying => "now_playing",
        }
    }

    /// Users who went looking (search) convert best; a shelf seen while browsing the
    /// library sits a little above home; now-playing interrupts listening.
    fn stream_effect(self) -> f64 {
        match self {
            Surface::Home => 0.0,
            Surface::Search => 0.3,
            Surface::Library => 0.1,
            Surface::NowPlaying => -0.15,
        }
    }
}

/// Where the candidate is placed. The first three are promotion slots, the rest ad slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    HomeShelf,
    Search,
    NowPlaying,
    Preroll,
    Midroll,
    Postroll,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::HomeShelf => "home_shelf",
            Slot::Search => "search",
            Slot::NowPlaying => "now_playing",
            Slot::Preroll => "preroll",
            Slot::Midroll => "midroll",
            Slot::Postroll => "postroll",
        }
    }

    /// Ads: a preroll catches attention before the episode, a postroll after the listener
    /// has mostly left. Promotions: a search result answers a query.
    fn stream_effect(self) -> f64 {
        match self {
            Slot::HomeShelf => 0.0,
            Slot::Search => 0.35,
            Slot::NowPlaying => -0.1,
            Slot::Preroll => 0.1,
            Slot::Midroll => 0.0,
            Slot::Postroll => -0.35,
        }
    }

    /// Clicks need something to tap: in-episode audio slots get fewer.
    fn click_effect(self) -> f64 {
        match self {
            Slot::HomeShelf => 0.0,
            Slot::Search => 0.3,
            Slot::NowPlaying => 0.15,
            Slot::Preroll => -0.1,
            Slot::Midroll => -0.2,
            Slot::Postroll => -0.3,
        }
    }

    /// What an ad in this slot costs relative to the campaign's base price: midrolls are
    /// heard by engaged listeners and sell at a premium, postrolls at a discount.
    pub fn cost_multiplier(self) -> f64 {
        match self {
            Slot::Preroll => 1.0,
            Slot::Midroll => 1.2,
            Slot::Postroll => 0.75,
            Slot::HomeShelf | Slot::Search | Slot::NowPlaying => 0.0,
        }
    }
}

/// How a promotion is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Card,
    Banner,
    Hero,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Card => "card",
            Layout::Banner => "banner",
            Layout::Hero => "hero",
        }
    }

    /// A hero takes the screen; a banner is easy to scroll past.
    fn effect(self) -> f64 {
        match self {
            Layout::Card => 0.0,
            Layout::Banner => -0.25,
            Layout::Hero => 0.3,
        }
    }
}

/// The medium of an ad creative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Audio,
    Video,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Audio => "audio",
            Format::Video => "video",
        }
    }
}

/// The world's knobs the outcome model reads (`WorldConfig`'s of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Knobs {
    pub ad_affinity_correlation: f64,
    pub ad_structure: f64,
}

/// What the outcome of one impression depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exposure {
    pub is_ad: bool,
    /// Dot product of user taste and show latent, scaled to unit variance over random
    /// pairs.
    pub affinity: f64,
    /// Ads: the ad-specific affinity (`ad_taste`), independent of `affinity` and on its
    /// scale; read only when the ad affinity correlation is below 1.
    pub ad_own_affinity: f64,
    /// Ads: the show the ad plays in has the advertised show's genre.
    pub host_match: bool,
    /// The user is on web or desktop rather than a phone.
    pub big_screen: bool,
    pub listened_before: bool,
    pub follows_show: bool,
    /// One of the user's search topics is one of the show's topics.
    pub topic_match: bool,
    pub show_quality: f64,
    /// Standardized log popularity; brand-new shows sit below average.
    pub popularity: f64,
    /// Zero when the impression names no episode.
    pub episode_quality: f64,
    pub campaign_quality: f64,
    /// Zero for promotions, which have no creative.
    pub creative_quality: f64,
    pub slot: Slot,
    pub layout: Option<Layout>,
    pub format: Option<Format>,
    pub surface: Surface,
    /// Hour of day, UTC, 0..24.
    pub hour: u32,
    pub session_length_s: f64,
}

/// True probabilities of the four labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Probabilities {
    pub stream: f64,
    pub click: f64,
    pub like: f64,
    pub follow: f64,
}

/// Sampled outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Labels {
    pub stream: bool,
    pub click: bool,
    pub like: bool,
    pub follow: bool,
}

/// Base logits: with the effects below they set the natural base rates (see the
/// README's ranges). Promotions reach users a recommender picked for the show and are
/// skewed to popular shows, so their rates end higher than ads' although their bases
/// differ less.
const PROMOTION_STREAM_BASE: f64 = -4.4;
const AD_STREAM_BASE: f64 = -4.6;
const PROMOTION_CLICK_BASE: f64 = -4.55;
const AD_CLICK_BASE: f64 = -4.0;
const PROMOTION_LIKE_BASE: f64 = -6.1;
const AD_LIKE_BASE: f64 = -5.3;
const PROMOTION_FOLLOW_BASE: f64 = -5.95;
const AD_FOLLOW_BASE: f64 = -5.1;

/// Ads reach users who did not ask for them, so taste matters a little less.
const PROMOTION_AFFINITY_WEIGHT: f64 = 1.0;
pub(crate) const AD_AFFINITY_WEIGHT: f64 = 0.85;

/// How often a secondary label reuses the stream draw's uniform number. Reusing it makes
/// the labels co-occur (a click mostly comes with a stream) without changing any
/// label's marginal probability.
const CLICK_COUPLING: f64 = 0.6;

// Ad-only structure, each effect multiplied by the `ad_structure` knob. At 1, with the
// grown creative and campaign effects, the ad stream logit has about as much variance of
// its own as the shared affinity term gives it (`world::tests` measures it).
/// The ad plays inside a show of the advertised show's genre: its listeners are the
/// audience; elsewhere it interrupts something unrelated.
const HOST_MATCH_EFFECT: f64 = 1.0;
const HOST_MISMATCH_EFFECT: f64 = -0.15;
/// Per unit of standardized log session length: a midroll reaches listeners deep in a
/// long session, a preroll those who just started, a postroll those about to leave.
const PREROLL_SESSION_EFFECT: f64 = -0.45;
const MIDROLL_SESSION_EFFECT: f64 = 0.45;
const POSTROLL_SESSION_EFFECT: f64 = -0.3;
/// Spread of log session lengths in the traffic (`traffic`'s log-normal around 15 min).
const SESSION_LOG_SD: f64 = 0.8;
/// A video needs a screen to be watched; audio suits the phone in a pocket.
const VIDEO_BIG_SCREEN_EFFECT: f64 = 0.8;
const VIDEO_PHONE_EFFECT: f64 = -0.35;
const AUDIO_BIG_SCREEN_EFFECT: f64 = -0.3;
const AUDIO_PHONE_EFFECT: f64 = 0.12;
/// Creative and campaign quality grow by this factor per unit of structure: a spread of
/// 0.6 and 0.5 at 1 (from 0.25 and 0.2), large enough to estimate from the ten to twenty
/// streams a creative gets in the default world.
pub(crate) const CREATIVE_QUALITY_GROWTH: f64 = 1.4;
pub(crate) const CAMPAIGN_QUALITY_GROWTH: f64 = 1.5;
/// How much of the structure reaches each secondary label (as context does).
const STRUCTURE_CLICK_SHARE: f64 = 0.7;
const STRUCTURE_LIKE_SHARE: f64 = 0.5;
const STRUCTURE_FOLLOW_SHARE: f64 = 0.5;
const LIKE_COUPLING: f64 = 0.5;
const FOLLOW_COUPLING: f64 = 0.5;

pub(crate) fn sigmoid(logit: f64) -> f64 {
    1.0 / (1.0 + (-logit).exp())
}

/// The ad-only structure of one exposure, before the knob scales it: host, slot against
/// session length, format against screen. Zero for promotions.
pub(crate) fn ad_structure(exposure: &Exposure) -> f64 {
    if !exposure.is_ad {
        return 0.0;
    }
    let host = if exposure.host_match {
        HOST_MATCH_EFFECT
    } else {
        HOST_MISMATCH_EFFECT
    };
    let session = (exposure.session_length_s.max(1.0) / 900.0).ln() / SESSION_LOG_SD;
    let slot = session
        * match exposure.slot {
            Slot::Preroll => PREROLL_SESSION_EFFECT,
            Slot::Midroll => MIDROLL_SESSION_EFFECT,
            Slot::Postroll => POSTROLL_SESSION_EFFECT,
            Slot::HomeShelf | Slot::Search | Slot::NowPlaying => 0.0,
        };
    let screen = match (exposure.format, exposure.big_screen) {
        (Some(Format::Video), true) => VIDEO_BIG_SCREEN_EFFECT,
        (Some(Format::Video), false) => VIDEO_PHONE_EFFECT,
        (Some(Format::Audio), true) => AUDIO_BIG_SCREEN_EFFECT,
        (Some(Format::Audio), false) => AUDIO_PHONE_EFFECT,
        (None, _) => 0.0,
    };
    host + slot + screen
}

/// The affinity ad outcomes follow: `rho * a + sqrt(1 - rho^2) * b`, which correlates
/// with the promotion affinity `a` by `rho` because `b` is independent of it and on its
/// scale. At the default `rho` of 1 the mix is `1 * a + 0 * b`: exactly `a`.
pub(crate) fn ad_affinity(exposure: &Exposure, knobs: Knobs) -> f64 {
    let rho = knobs.ad_affinity_correlation;
    rho * exposure.affinity + (1.0 - rho * rho).max(0.0).sqrt() * exposure.ad_own_affinity
}

/// The four true probabilities for one exposure.
pub(crate) fn probabilities(exposure: &Exposure, knobs: Knobs) -> Probabilities {
    let flag = |value: bool| if value { 1.0 } else { 0.0 };
    let (affinity_weight, affinity) = if exposure.is_ad {
        (AD_AFFINITY_WEIGHT, ad_affinity(exposure, knobs))
    } else {
        (PROMOTION_AFFINITY_WEIGHT, exposure.affinity)
    };
    let taste = affinity_weight * affinity;
    // At the default structure of 0 these are `x * 1` and `+ 0`: exact, so the default
    // world is what it was.
    let structure_scale = if exposure.is_ad {
        knobs.ad_structure
    } else {
        0.0
    };
    let structure = structure_scale * ad_structure(exposure);
    let campaign_quality =
        exposure.campaign_quality * (1.0 + CAMPAIGN_QUALITY_GROWTH * structure_scale);
    let creative_quality =
        exposure.creative_quality * (1.0 + CREATIVE_QUALITY_GROWTH * structure_scale);
    // Users are most receptive in the evening (peak at 21:00 UTC) and in long sessions.
    let hour_angle = std::f64::consts::TAU * (f64::from(exposure.hour) - 21.0) / 24.0;
    let time_effect = 0.15 * hour_angle.cos();
    let session_effect = 0.12 * (exposure.session_length_s.max(1.0) / 900.0).ln();
    let context = exposure.surface.stream_effect() + time_effect + session_effect;
    let content = exposure.show_quality
        + 0.2 * exposure.popularity
        + exposure.episode_quality
        + campaign_quality
        + creative_quality;
    let familiarity = 0.55 * flag(exposure.listened_before) + 0.25 * flag(exposure.follows_show);
    let topic = 0.3 * flag(exposure.topic_match);
    let layout = exposure.layout.map_or(0.0, Layout::effect);
    let format_stream = match exposure.format {
        Some(Format::Video) => 0.25,
        Some(Format::Audio) | None => 0.0,
    };
    let format_click = match exposure.format {
        Some(Format::Video) => 0.5,
        Some(Format::Audio) => -0.2,
        None => 0.0,
    };

    let stream_base = if exposure.is_ad {
        AD_STREAM_BASE
    } else {
        PROMOTION_STREAM_BASE
    };
    let stream = stream_base
        + taste
        + familiarity
        + topic
        + content
        + context
        + exposure.slot.stream_effect()
        + layout
        + format_stream
        + structure;

    let click_base = if exposure.is_ad {
        AD_CLICK_BASE
    } else {
        PROMOTION_CLICK_BASE
    };
    let click = click_base
        + 0.8 * taste
        + 0.2 * flag(exposure.listened_before)
        + topic
        + 0.7 * content
        + 0.7 * context
        + exposure.slot.click_effect()
        + 0.7 * layout
        + format_click
        + STRUCTURE_CLICK_SHARE * structure;

    // Likes and follows come from people who know and love the show.
    let (like_base, follow_base) = if exposure.is_ad {
        (AD_LIKE_BASE, AD_FOLLOW_BASE)
    } else {
        (PROMOTION_LIKE_BASE, PROMOTION_FOLLOW_BASE)
    };
    let like = like_base
        + 0.9 * taste
        + 0.6 * flag(exposure.listened_before)
        + 1.3 * topic
        + 0.8 * content
        + 0.5 * context
        + STRUCTURE_LIKE_SHARE * structure;
    // Someone who already follows the show cannot follow it again (almost never does).
    let follow = follow_base + 1.0 * taste + 0.5 * flag(exposure.listened_before)
        - 2.5 * flag(exposure.follows_show)
        + topic
        + 0.8 * content
        + 0.5 * context
        + STRUCTURE_FOLLOW_SHARE * structure;

    Probabilities {
        stream: sigmoid(stream),
        click: sigmoid(click),
        like: sigmoid(like),
        follow: sigmoid(follow),
    }
}

/// Draws the four labels. Each label's marginal probability is exactly its `p`; the
/// secondary labels share the stream's uniform number part of the time, so that clicks,
/// likes and follows mostly come with streams.
pub(crate) fn draw<R: Rng>(probabilities: &Probabilities, rng: &mut R) -> Labels {
    let stream_uniform: f64 = rng.random();
    let mut secondary = |coupling: f64| -> f64 {
        if rng.random::<f64>() < coupling {
            stream_uniform
        } else {
            rng.random()
        }
    };
    let click_uniform = secondary(CLICK_COUPLING);
    let like_uniform = secondary(LIKE_COUPLING);
    let follow_uniform = secondary(FOLLOW_COUPLING);
    Labels {
        stream: stream_uniform < probabilities.stream,
        click: click_uniform < probabilities.click,
        like: like_uniform < probabilities.like,
        follow: follow_uniform < probabilities.follow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const DEFAULT_KNOBS: Knobs = Knobs {
        ad_affinity_correlation: 1.0,
        ad_structure: 0.0,
    };

    fn exposure(is_ad: bool) -> Exposure {
        Exposure {
            is_ad,
            affinity: 0.0,
            ad_own_affinity: 0.0,
            host_match: false,
            big_screen: false,
            listened_before: false,
            follows_show: false,
            topic_match: false,
            show_quality: 0.0,
            popularity: 0.0,
            episode_quality: 0.0,
            campaign_quality: 0.0,
            creative_quality: 0.0,
            slot: if is_ad {
                Slot::Midroll
            } else {
                Slot::HomeShelf
            },
            layout: (!is_ad).then_some(Layout::Card),
            format: is_ad.then_some(Format::Audio),
            surface: Surface::Home,
            hour: 15,
            session_length_s: 900.0,
        }
    }

    /// Higher affinity raises every label's probability, for ads and promotions alike:
    /// the shared signal that makes promotion data useful for ads.
    #[test]
    fn affinity_raises_every_label_in_both_channels() {
        for is_ad in [false, true] {
            let low = probabilities(
                &Exposure {
                    affinity: -1.0,
                    ..exposure(is_ad)
                },
                DEFAULT_KNOBS,
            );
            let high = probabilities(
                &Exposure {
                    affinity: 1.0,
                    ..exposure(is_ad)
                },
                DEFAULT_KNOBS,
            );
            assert!(
                high.stream > 1.5 * low.stream,
                "{is_ad}: {high:?} vs {low:?}"
            );
            assert!(high.click > 1.5 * low.click);
            assert!(high.like > 1.5 * low.like);
            assert!(high.follow > 1.5 * low.follow);
        }
    }

    /// The same user and show stream less after an ad than after a promotion, and ad
    /// slots move ad streams in their own way.
    #[test]
    fn ads_have_their_own_stream_offsets() {
        let promotion = probabilities(&exposure(false), DEFAULT_KNOBS);
        let ad = probabilities(&exposure(true), DEFAULT_KNOBS);
        assert!(
            ad.stream < 0.9 * promotion.stream,
            "{ad:?} vs {promotion:?}"
        );
        let postroll = probabilities(
            &Exposure {
                slot: Slot::Postroll,
                ..exposure(true)
            },
            DEFAULT_KNOBS,
        );
        let video = probabilities(
            &Exposure {
                format: Some(Format::Video),
                ..exposure(true)
            },
            DEFAULT_KNOBS,
        );
        assert!(postroll.stream < 0.8 * ad.stream);
        assert!(video.stream > 1.2 * ad.stream);
    }

    /// At the default knobs the ad-only inputs change nothing, bit for bit: the default
    /// world is the world from before the knobs.
    #[test]
    fn default_knobs_ignore_the_ad_only_inputs() {
        let plain = probabilities(&exposure(true), DEFAULT_KNOBS);
        let loaded = probabilities(
            &Exposure {
                ad_own_affinity: 2.5,
                host_match: true,
                big_screen: true,
                format: Some(Format::Video),
                ..exposure(true)
            },
            DEFAULT_KNOBS,
        );
        let video = probabilities(
            &Exposure {
                format: Some(Format::Video),
                ..exposure(true)
            },
            DEFAULT_KNOBS,
        );
        assert_eq!(loaded, video);
        assert_ne!(plain, video);
    }

    /// Ad structure moves ad outcomes the documented way and leaves promotions alone.
    #[test]
    fn ad_structure_acts_on_ads_only() {
        let knobs = Knobs {
            ad_structure: 1.0,
            ..DEFAULT_KNOBS
        };
        let host = |host_match| {
            probabilities(
                &Exposure {
                    host_match,
                    ..exposure(true)
                },
                knobs,
            )
        };
        assert!(host(true).stream > 1.5 * host(false).stream);
        let screen = |big_screen| {
            probabilities(
                &Exposure {
                    big_screen,
                    format: Some(Format::Video),
                    ..exposure(true)
                },
                knobs,
            )
        };
        assert!(screen(true).stream > 1.5 * screen(false).stream);
        let session = |slot, session_length_s| {
            probabilities(
                &Exposure {
                    slot,
                    session_length_s,
                    ..exposure(true)
                },
                knobs,
            )
            .stream
        };
        assert!(session(Slot::Midroll, 3600.0) > session(Slot::Midroll, 200.0));
        assert!(session(Slot::Preroll, 3600.0) < session(Slot::Preroll, 200.0));
        let promotion = Exposure {
            host_match: true,
            big_screen: true,
            ..exposure(false)
        };
        assert_eq!(
            probabilities(&promotion, knobs),
            probabilities(&promotion, DEFAULT_KNOBS)
        );
    }

    /// Below correlation 1 the ad-specific affinity moves ad outcomes; the promotion
    /// affinity still moves them, less.
    #[test]
    fn ad_affinity_correlation_mixes_in_the_ad_taste() {
        let knobs = Knobs {
            ad_affinity_correlation: 0.5,
            ..DEFAULT_KNOBS
        };
        let ad = |affinity, ad_own_affinity| {
            probabilities(
                &Exposure {
                    affinity,
                    ad_own_affinity,
                    ..exposure(true)
                },
                knobs,
            )
            .stream
        };
        assert!(ad(0.0, 1.0) > 1.5 * ad(0.0, -1.0));
        assert!(ad(1.0, 0.0) > ad(-1.0, 0.0));
        assert!(ad(1.0, 0.0) / ad(-1.0, 0.0) < ad(0.0, 1.0) / ad(0.0, -1.0));
    }

    /// Following a show already all but rules out following it again.
    #[test]
    fn followers_rarely_follow_again() {
        let fresh = probabilities(&exposure(false), DEFAULT_KNOBS);
        let follower = probabilities(
            &Exposure {
                follows_show: true,
                ..exposure(false)
            },
            DEFAULT_KNOBS,
        );
        assert!(follower.follow < 0.15 * fresh.follow);
    }

    /// Coupled draws keep each label's marginal rate and make clicks co-occur with streams.
    #[test]
    fn draws_keep_marginals_and_couple_click_to_stream() {
        let probabilities = Probabilities {
            stream: 0.06,
            click: 0.04,
            like: 0.01,
            follow: 0.01,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 400_000;
        let (mut streams, mut clicks, mut likes, mut both) = (0u32, 0u32, 0u32, 0u32);
        for _ in 0..draws {
            let labels = draw(&probabilities, &mut rng);
            streams += u32::from(labels.stream);
            clicks += u32::from(labels.click);
            likes += u32::from(labels.like);
            both += u32::from(labels.stream && labels.click);
        }
        let rate = |count: u32| f64::from(count) / f64::from(draws);
        assert!(
            (rate(streams) - 0.06).abs() < 0.002,
            "stream {}",
            rate(streams)
        );
        assert!(
            (rate(clicks) - 0.04).abs() < 0.002,
            "click {}",
            rate(clicks)
        );
        assert!((rate(likes) - 0.01).abs() < 0.001, "like {}", rate(likes));
        // Independent draws would give P(click | stream) = 0.04; coupling gives far more.
        let click_given_stream = f64::from(both) / f64::from(streams);
        assert!(
            click_given_stream > 0.3,
            "P(click | stream) = {click_given_stream}"
        );
    }
}
