//! The ad-specific part of each user's taste, behind `--ad-affinity-correlation`.
//!
//! With a correlation `rho` below 1, ad outcomes follow `rho * a + sqrt(1 - rho^2) * b`
//! instead of the promotion affinity `a`, where `b` is this module's ad-specific
//! affinity: independent of `a` and on the same scale (the standard deviation of `a` over
//! random user-show pairs), so that the mix keeps the affinity's spread and correlates
//! with `a` by `rho`. `b` is the mean of three standardized parts, each only partly
//! visible to a model:
//!
//! - a per-user ad receptivity: offsets of the user's country, platform and age bucket
//!   plus individual noise (the profile features see the offsets, never the noise);
//! - an ad taste: a second taste vector drawn around country and age centroids of its
//!   own, against the show latent (visible through profile and content features);
//! - the hour: ads land best on the morning commute, promotions in the evening (visible
//!   through the context hour).
//!
//! Everything is drawn from streams of its own (`Stream::AdLatents`, `Stream::AdUsers`),
//! so that a world with the default knobs draws exactly the numbers it always did.
//! This module knows the catalog's users and shows; it knows nothing of impressions.

use rand::Rng;
use rayon::prelude::*;

use super::catalog::{
    AGE_BUCKETS, COUNTRIES, PLATFORMS, Show, User, Vector, affinity, random_vector, standard_normal,
};
use super::{Stream, stream_rng};

/// Spread of the receptivity offset of one profile value (a country, a platform, an age
/// bucket): three of them give the profile about 60% of the receptivity's variance.
const RECEPTIVITY_PROFILE_SD: f64 = 0.5;
/// Individual receptivity no feature sees: the other 40% or so.
const RECEPTIVITY_NOISE_SD: f64 = 0.6;
/// Country and age centroids of the ad taste: as strong as the promotion taste's, so
/// that the profile says as much about ad taste as about show taste.
const AD_CENTROID_SCALE: f64 = 0.5;
const AD_TASTE_NOISE_SD: f64 = 0.8;
/// The hour at which ads land best (UTC): the morning commute, against the promotions'
/// evening peak in the outcome model.
const AD_PEAK_HOUR: f64 = 8.0;
/// Random user-show pairs over which the taste part and the promotion affinity are
/// standardized: enough for their spreads to within about 1%.
const STANDARDIZATION_PAIRS: usize = 20_000;
/// Users per random stream, as the catalog draws them.
const USERS_PER_CHUNK: usize = 4096;

pub(crate) struct AdTaste {
    /// Per user, standardized over users.
    receptivity: Vec<f64>,
    tastes: Vec<Vector>,
    taste_mean: f64,
    taste_sd: f64,
    /// Mean and standard deviation of the hour part over the traffic's hours.
    hour_mean: f64,
    hour_sd: f64,
    /// Standard deviation of the promotion affinity over random user-show pairs: the scale
    /// of the ad-specific affinity.
    affinity_sd: f64,
}

fn standardizer(values: impl Iterator<Item = (f64, f64)>) -> (f64, f64) {
    // (value, weight) pairs, summed in a fixed order so that the result is the same on
    // every run.
    let (mut total, mut sum, mut squares) = (0.0, 0.0, 0.0);
    for (value, weight) in values {
        total += weight;
        sum += weight * value;
        squares += weight * value * value;
    }
    let mean = sum / total.max(f64::MIN_POSITIVE);
    let variance = (squares / total.max(f64::MIN_POSITIVE) - mean * mean).max(0.0);
    (mean, variance.sqrt().max(1e-9))
}

fn hour_part(hour: u32) -> f64 {
    (std::f64::consts::TAU * (f64::from(hour) - AD_PEAK_HOUR) / 24.0).cos()
}

impl AdTaste {
    /// Draws the ad-specific taste of every user. `hour_weights` is the traffic's
    /// distribution of hours, over which the hour part is standardized.
    pub fn build(seed: u64, users: &[User], shows: &[Show], hour_weights: &[f64; 24]) -> AdTaste {
        let mut rng = stream_rng(seed, Stream::AdLatents, 0);
        let mut offsets = |count: usize| -> Vec<f64> {
            (0..count)
                .map(|_| RECEPTIVITY_PROFILE_SD * standard_normal(&mut rng))
                .collect()
        };
        let country_offsets = offsets(COUNTRIES.len());
        let platform_offsets = offsets(PLATFORMS.len());
        let age_offsets = offsets(AGE_BUCKETS.len());
        let country_centroids: Vec<Vector> = (0..COUNTRIES.len())
            .map(|_| random_vector(&mut rng, AD_CENTROID_SCALE))
            .collect();
        let age_centroids: Vec<Vector> = (0..AGE_BUCKETS.len())
            .map(|_| random_vector(&mut rng, AD_CENTROID_SCALE))
            .collect();

        let chunks: Vec<Vec<(f64, Vector)>> = users
            .par_chunks(USERS_PER_CHUNK)
            .enumerate()
            .map(|(chunk, members)| {
                let mut rng = stream_rng(seed, Stream::AdUsers, chunk as u64);
                members
                    .iter()
                    .map(|user| {
                        let (country, platform, age) = (
                            usize::from(user.profile.0),
                            usize::from(user.profile.1),
                            usize::from(user.profile.2),
                        );
                        let receptivity = country_offsets[country]
                            + platform_offsets[platform]
                            + age_offsets[age]
                            + RECEPTIVITY_NOISE_SD * standard_normal(&mut rng);
                        let noise = random_vector(&mut rng, AD_TASTE_NOISE_SD);
                        let taste: Vector = std::array::from_fn(|axis| {
                            country_centroids[country][axis]
                                + age_centroids[age][axis]
                                + noise[axis]
                        });
                        (receptivity, taste)
                    })
                    .collect()
            })
            .collect();
        let (raw_receptivity, tastes): (Vec<f64>, Vec<Vector>) =
            chunks.into_iter().flatten().unzip();
        let (mean, sd) = standardizer(raw_receptivity.iter().map(|value| (*value, 1.0)));
        let receptivity = raw_receptivity
            .iter()
            .map(|value| (value - mean) / sd)
            .collect();

        // Random pairs for the spreads of the taste part and of the promotion affinity.
        let pairs: Vec<(usize, usize)> = if users.is_empty() || shows.is_empty() {
            Vec::new()
        } else {
            (0..STANDARDIZATION_PAIRS)
                .map(|_| {
                    (
                        rng.random_range(0..users.len()),
                        rng.random_range(0..shows.len()),
                    )
                })
                .collect()
        };
        let (taste_mean, taste_sd) = standardizer(
            pairs
                .iter()
                .map(|&(user, show)| (affinity(&tastes[user], &shows[show].latent), 1.0)),
        );
        let (_, affinity_sd) = standardizer(
            pairs
                .iter()
                .map(|&(user, show)| (affinity(&users[user].taste, &shows[show].latent), 1.0)),
        );
        let (hour_mean, hour_sd) = standardizer(
            hour_weights
                .iter()
                .enumerate()
                .map(|(hour, weight)| (hour_part(hour as u32), *weight)),
        );
        AdTaste {
            receptivity,
            tastes,
            taste_mean,
            taste_sd,
            hour_mean,
            hour_sd,
            affinity_sd,
        }
    }

    /// The ad-specific affinity of `user` for a show with latent `latent` at `hour`:
    /// centered, independent of the promotion affinity, with its spread.
    pub fn own_affinity(&self, user: u32, latent: &Vector, hour: u32) -> f64 {
        let user = user as usize;
        let taste = (affinity(&self.tastes[user], latent) - self.taste_mean) / self.taste_sd;
        let hour = (hour_part(hour) - self.hour_mean) / self.hour_sd;
        self.affinity_sd * (self.receptivity[user] + taste + hour) / 3f64.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weighted standardization gives the textbook mean and spread.
    #[test]
    fn standardizer_matches_hand_computation() {
        let (mean, sd) = standardizer([(1.0, 1.0), (3.0, 1.0)].into_iter());
        assert!((mean - 2.0).abs() < 1e-12 && (sd - 1.0).abs() < 1e-12);
        let (mean, _) = standardizer([(1.0, 3.0), (5.0, 1.0)].into_iter());
        assert!((mean - 2.0).abs() < 1e-12);
    }

    /// The hour part peaks at the ad peak hour and bottoms out twelve hours later.
    #[test]
    fn hour_part_peaks_in_the_morning() {
        assert!((hour_part(8) - 1.0).abs() < 1e-12);
        assert!((hour_part(20) + 1.0).abs() < 1e-12);
    }
}
